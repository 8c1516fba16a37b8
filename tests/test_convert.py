"""Parity with transformers' GPTNeoXForCausalLM and the recursive-layout initialisation."""

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from meshlm import MeshLMError
from meshlm.convert import from_gpt_neox, to_gpt_neox


def random_neox(layers: int = 4, parallel: bool = True, vocab_size: int = 120) -> GPTNeoXForCausalLM:
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=256,
        use_parallel_residual=parallel,
        max_position_embeddings=64,
        rotary_pct=0.25,
    )
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():  # biases and norms away from their init so the test sees them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("parallel", [True, False])
def test_vanilla_logits_equal_gpt_neox(parallel):
    hf = random_neox(parallel=parallel)
    ours = from_gpt_neox(hf).eval()
    assert ours.config.layout == "4" and not ours.config.scale_embeddings
    ids = torch.randint(0, 120, (3, 33))
    torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    back = to_gpt_neox(ours).eval()
    torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache", [None, "static"])
def test_cached_generation_matches_gpt_neox(cache):
    hf = random_neox()
    ours = from_gpt_neox(hf).eval()
    ids = torch.randint(1, 120, (2, 5))
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=10,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        cache_implementation=cache,
    )
    assert torch.equal(ours.generate(ids, **kwargs), hf.generate(ids, **kwargs))


def test_recursive_layout_mapping_first_and_average():
    hf = random_neox(layers=6)
    sd = hf.state_dict()
    first = from_gpt_neox(hf, layout="1+2R2+1", scheme="mesh")
    key = "attention.query_key_value.weight"
    assert torch.equal(first.model.layers[0].attn.qkv.weight, sd[f"gpt_neox.layers.0.{key}"])
    assert torch.equal(first.model.layers[1].attn.qkv.weight, sd[f"gpt_neox.layers.1.{key}"])
    assert torch.equal(first.model.layers[3].attn.qkv.weight, sd[f"gpt_neox.layers.5.{key}"])
    avg = from_gpt_neox(hf, layout="1+2R2+1", core_init="average")
    expected = (sd[f"gpt_neox.layers.1.{key}"] + sd[f"gpt_neox.layers.3.{key}"]) / 2
    torch.testing.assert_close(avg.model.layers[1].attn.qkv.weight, expected)
    unshared = from_gpt_neox(hf, layout="1+2+2+1").eval()
    ids = torch.randint(0, 120, (1, 10))
    torch.testing.assert_close(unshared(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_linear_scheme_converts_as_base_recursion():
    hf = random_neox(layers=6)
    ids = torch.randint(0, 120, (1, 10))
    base = from_gpt_neox(hf, layout="1+2R2+1").eval()
    linear = from_gpt_neox(hf, layout="1+2R2+1", scheme="linear").eval()
    diagonal = from_gpt_neox(hf, layout="1+2R2+1", scheme="diagonal").eval()
    torch.testing.assert_close(linear(ids).logits, base(ids).logits)
    assert torch.equal(linear.model.layers[1].attn.qkv.weight, diagonal.model.layers[1].attn.qkv.weight)
    assert diagonal.model.scheme.decay().allclose(torch.tensor(0.5))


def test_bad_conversions_are_refused():
    hf = random_neox(layers=4)
    with pytest.raises(MeshLMError, match="unrolled layers"):
        from_gpt_neox(hf, layout="6")
    with pytest.raises(MeshLMError, match="average"):
        from_gpt_neox(hf, layout="1+1R3+1", core_init="average")
    with pytest.raises(MeshLMError, match="core_init"):
        from_gpt_neox(hf, layout="1+1R2+1", core_init="last")
    with pytest.raises(MeshLMError, match="vanilla"):
        to_gpt_neox(from_gpt_neox(hf, layout="1+1R2+1"))
