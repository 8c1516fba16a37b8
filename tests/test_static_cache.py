"""Static KV cache: same tokens and logits as the dynamic cache, one compiled graph per decode step."""

from collections.abc import Callable

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from transformers import CompileConfig, DynamicCache, StaticCache

from conftest import SCHEME_CASES, randomize_scheme, tiny_config
from meshlm import MeshLMForCausalLM, parse_layout
from meshlm.model.lm import _CACHE_FIELD


def build(scheme: str, layout: str) -> MeshLMForCausalLM:
    model = MeshLMForCausalLM(tiny_config(scheme=scheme, layout=layout)).eval()
    randomize_scheme(model)
    return model


def left_padded(lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, left-padded with 0, and their attention mask."""
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(1, 97, (n,))
        mask[row, width - n :] = 1
    return ids, mask


GREEDY = dict(max_new_tokens=8, do_sample=False)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_static_cache_greedy_generation_equals_dynamic(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (2, 6))
    mask = torch.ones_like(ids)
    dynamic = model.generate(ids, attention_mask=mask, **GREEDY)
    static = model.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY)
    assert torch.equal(static, dynamic)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_left_padded_static_generation_equals_dynamic(scheme, layout):
    model = build(scheme, layout)
    ids, mask = left_padded((3, 7, 5))
    dynamic = model.generate(ids, attention_mask=mask, **GREEDY)
    static = model.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY)
    # a cache handed in, longer than needed: the unwritten tail must stay masked out
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + 8 + 5)
    given = model.generate(ids, attention_mask=mask, **{_CACHE_FIELD: cache}, **GREEDY)
    assert torch.equal(static, dynamic)
    assert torch.equal(given, dynamic)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_static_cache_forward_logits_match_dynamic(scheme, layout):
    model = build(scheme, layout)
    ids, mask = left_padded((4, 6))
    steps = torch.randint(1, 97, (2, 3))
    static, dynamic = StaticCache(config=model.config, max_cache_len=16), DynamicCache(config=model.config)

    def same_logits(chunk: torch.Tensor, mask: torch.Tensor) -> None:
        a = model(chunk, attention_mask=mask, past_key_values=static).logits
        b = model(chunk, attention_mask=mask, past_key_values=dynamic).logits
        real = mask[:, -chunk.shape[1] :].bool()  # padded query rows carry no meaning
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        same_logits(ids, mask)
        for token in steps.split(1, dim=1):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            same_logits(token, mask)
    assert static.get_seq_length() == dynamic.get_seq_length() == ids.shape[1] + steps.shape[1]


@pytest.mark.parametrize(("scheme", "layout"), [("mesh", "1+2R2+1"), ("base", "5")])
def test_generate_builds_static_cache_with_one_slot_per_unrolled_layer(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (1, 5))
    out = model.generate(ids, cache_implementation="static", return_dict_in_generate=True, **GREEDY)
    cache = getattr(out, _CACHE_FIELD)
    assert isinstance(cache, StaticCache)
    assert len(cache.layers) == parse_layout(layout).unrolled_layers == model.config.num_hidden_layers


@pytest.mark.parametrize(("scheme", "layout"), [("mesh", "1+2R2+1"), ("dynamic", "1+1+1+1")])
def test_compiled_decode_step_is_one_full_graph_over_static_cache(scheme, layout):
    """``fullgraph=True`` fails on any graph break; one frame over all steps means no recompiles either."""
    torch._dynamo.reset()
    model = build(scheme, layout)
    ids, mask = left_padded((4, 6))
    max_len = ids.shape[1] + 4
    counter = CompileCounterWithBackend("aot_eager")  # functionalises the in-place cache writes like inductor
    step = torch.compile(model, fullgraph=True, backend=counter)
    static, dynamic = StaticCache(config=model.config, max_cache_len=max_len), DynamicCache(config=model.config)
    # one mask shape for every step; ones over the unwritten tail: the causal part alone must hide it
    fixed_mask = torch.nn.functional.pad(mask, (0, max_len - ids.shape[1]), value=1)
    positions = mask.sum(-1, keepdim=True) - 1
    with torch.no_grad():
        model(ids, attention_mask=fixed_mask, past_key_values=static)
        nxt = model(ids, attention_mask=mask, past_key_values=dynamic).logits[:, -1:].argmax(-1)
        for _ in range(4):
            positions = positions + 1
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            compiled = step(nxt, attention_mask=fixed_mask, position_ids=positions, past_key_values=static).logits
            eager = model(nxt, attention_mask=mask, past_key_values=dynamic).logits
            torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
            nxt = eager[:, -1:].argmax(-1)
    assert counter.frame_count == 1


def test_generate_auto_compiles_static_decode_as_one_full_graph():
    """What ``generate`` does on GPU with a static cache (compile the decode step), forced onto CPU."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    config = CompileConfig(fullgraph=True, backend=backend, mode="default")
    config._compile_all_devices = True  # transformers' switch for compiling off GPU (it compiles on CUDA by itself)
    model = build("mesh", "1+2R2+1")
    ids, mask = left_padded((3, 7, 5))
    dynamic = model.generate(ids, attention_mask=mask, **GREEDY)
    static_compiled = dict(cache_implementation="static", compile_config=config, **GREEDY)
    for _ in range(2):  # a second call reuses the compiled step with a fresh cache
        static = model.generate(ids, attention_mask=mask, **static_compiled)
        assert torch.equal(static, dynamic)
    assert len(graphs) == 1
