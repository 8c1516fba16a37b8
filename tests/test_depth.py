"""Input-injection schemes and the loop count chosen at run time (num_loops, backprop_loops)."""

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, StaticCache

from conftest import SCHEME_CASES, build, tiny_config
from meshlm import MeshLMForCausalLM
from meshlm.errors import MeshLMError

RECURSIVE = [c for c in SCHEME_CASES if "R" in c[1]]
GREEDY = dict(max_new_tokens=6, do_sample=False)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_num_loops_k_is_the_default_forward_bit_for_bit(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (2, 9))
    k = model.config.parsed_layout.loops or None  # a vanilla layout has no loop count to pass
    assert torch.equal(model(ids, num_loops=k).logits, model(ids).logits)


@pytest.mark.parametrize(("scheme", "layout"), RECURSIVE)
def test_fewer_and_more_loops_run_and_change_the_output(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (2, 9))
    k = model.config.parsed_layout.loops
    default = model(ids).logits
    for loops in (1, k + 2):
        if loops == k:
            continue
        out = model(ids, num_loops=loops)
        assert torch.isfinite(out.logits).all()
        assert not torch.allclose(out.logits, default), loops
        assert len(out.cache.layers if hasattr(out, "cache") else out.past_key_values.layers) == (
            model.config.unrolled_layers_at(loops)
        )


@pytest.mark.parametrize("layout", ["5", "1+1+1+1"])
def test_layouts_without_a_shared_core_refuse_another_loop_count(layout):
    model = build("base", layout)
    ids = torch.randint(1, 97, (1, 4))
    with pytest.raises(MeshLMError, match="no shared core"):
        model(ids, num_loops=3)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_loop_counts_are_refused(bad):
    model = build("base", "1+2R2+1")
    with pytest.raises(MeshLMError, match="num_loops must be an integer >= 1"):
        model(torch.randint(1, 97, (1, 4)), num_loops=bad)
    with pytest.raises(MeshLMError, match="backprop_loops must be an integer >= 1"):
        model(torch.randint(1, 97, (1, 4)), backprop_loops=bad)


def test_linear_identity_init_equals_base_at_step_zero():
    ids = torch.randint(1, 97, (2, 8))
    torch.manual_seed(5)
    base = MeshLMForCausalLM(tiny_config(scheme="base", layout="1+2R3+1")).eval()
    linear = MeshLMForCausalLM(tiny_config(scheme="linear", layout="1+2R3+1")).eval()
    missing, unexpected = linear.load_state_dict(base.state_dict(), strict=False)
    assert missing == ["model.scheme.adapter.weight"] and not unexpected
    d = 32
    torch.testing.assert_close(linear.model.scheme.adapter.weight, torch.cat((torch.eye(d), torch.zeros(d, d)), 1))
    torch.testing.assert_close(linear(ids).logits, base(ids).logits)
    torch.testing.assert_close(linear(ids, num_loops=5).logits, base(ids, num_loops=5).logits)


def test_linear_normal_init_is_random_and_small():
    model = MeshLMForCausalLM(tiny_config(hidden_size=128, scheme="linear", layout="1+2R2+1", linear_init="normal"))
    weight = model.model.scheme.adapter.weight
    assert weight.shape == (128, 256)
    assert weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_diagonal_init_and_a_stays_inside_zero_one():
    model = MeshLMForCausalLM(tiny_config(scheme="diagonal", layout="1+2R2+1", diagonal_decay_init=0.3))
    scheme = model.model.scheme
    torch.testing.assert_close(scheme.decay(), torch.full((32,), 0.3))
    torch.testing.assert_close(scheme.b.detach(), torch.full((32,), 0.7))
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)  # steps far larger than any real run's
    start = scheme.theta.detach().clone()
    for _ in range(10):
        ids = torch.randint(1, 97, (4, 12))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        a = scheme.decay()
        assert ((a > 0) & (a < 1)).all()
    assert (scheme.theta.detach() - start).abs().max() > 1
    with torch.no_grad():  # strictly inside over the whole fp32-resolvable range of theta, never outside [0, 1]
        scheme.theta.copy_(torch.linspace(-15, 15, 32))
        assert ((scheme.decay() > 0) & (scheme.decay() < 1)).all()
        scheme.theta.copy_(torch.linspace(-1e4, 1e4, 32))
        assert ((scheme.decay() >= 0) & (scheme.decay() <= 1)).all()


@pytest.mark.parametrize(("scheme", "layout"), RECURSIVE)
@pytest.mark.parametrize("num_loops", [1, 4])
def test_cached_generation_equals_uncached_at_another_loop_count(scheme, layout, num_loops):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (2, 5))
    mask = torch.ones_like(ids)
    seq = ids
    for _ in range(GREEDY["max_new_tokens"]):
        nxt = model(seq, use_cache=False, num_loops=num_loops).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    dynamic = model.generate(ids, attention_mask=mask, num_loops=num_loops, **GREEDY)
    static = model.generate(ids, attention_mask=mask, num_loops=num_loops, cache_implementation="static", **GREEDY)
    assert torch.equal(dynamic, seq) and torch.equal(static, seq)
    default = model.generate(ids, attention_mask=mask, **GREEDY)  # the model's config is left as it was
    assert model.config.num_hidden_layers == model.config.parsed_layout.unrolled_layers
    assert default.shape == seq.shape


def test_a_cache_built_for_another_depth_is_refused():
    model = build("mesh", "1+2R2+1")
    ids = torch.randint(1, 97, (1, 4))
    cache = StaticCache(config=model.config, max_cache_len=16)
    with pytest.raises(MeshLMError, match="6 layer slots but this forward pass runs 10"):
        model(ids, past_key_values=cache, use_cache=True, num_loops=4)
    grown = DynamicCache()  # a cache that grows a slot per layer takes any depth
    assert len(model(ids, past_key_values=grown, use_cache=True, num_loops=4).past_key_values.layers) == 10


def _hand_truncated_loss(model, ids, targets, num_loops, backprop_loops):
    """The loss with the first num_loops - backprop_loops iterations' states detached, written out by hand."""
    inner, cfg = model.model, model.config
    pre, loops, coda = cfg.parsed_layout.schedule()
    rope = inner.rotary(torch.arange(ids.shape[1])[None])

    def run(h, idx):
        for i in idx:
            h = inner.layers[i](h, rope, None)
        return h

    h = h0 = run(inner.embed(ids) * cfg.hidden_size**0.5, pre)
    scheme = inner.scheme
    for t in range(num_loops):
        if cfg.scheme == "anchor":
            h = run(h, loops[0]) + h0
        elif cfg.scheme == "linear":
            h = run(torch.cat((h, h0), -1) @ scheme.adapter.weight.T, loops[0])
        else:  # diagonal
            h = run(scheme.decay() * h + scheme.b * h0, loops[0])
        if t < num_loops - backprop_loops:
            h = h.detach()
    logits = model.lm_head(inner.final_norm(run(h, coda)))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@pytest.mark.parametrize("scheme", ["anchor", "linear", "diagonal"])
@pytest.mark.parametrize(("num_loops", "backprop_loops"), [(4, 1), (5, 2), (2, 3)])
def test_truncated_backprop_equals_a_hand_truncated_reference(scheme, num_loops, backprop_loops):
    model = build(scheme, "1+2R2+1").train()
    ids, targets = torch.randint(1, 97, (2, 8)), torch.randint(1, 97, (2, 8))
    params = list(model.parameters())
    loss = model(ids, targets=targets, num_loops=num_loops, backprop_loops=backprop_loops).loss
    got = torch.autograd.grad(loss, params, allow_unused=True)
    expected_loss = _hand_truncated_loss(model, ids, targets, num_loops, backprop_loops)
    expected = torch.autograd.grad(expected_loss, params, allow_unused=True)
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=1e-6)
    full = torch.autograd.grad(model(ids, targets=targets, num_loops=num_loops).loss, params)
    differs = False
    for (name, _), g, e, f in zip(model.named_parameters(), got, expected, full, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5, msg=name)
        differs |= not torch.allclose(g, f)
    assert differs == (num_loops > backprop_loops)


@pytest.mark.parametrize("scheme", ["base", "mesh", "static"])
def test_no_grad_iterations_keep_no_graph(scheme):
    model = build(scheme, "1+2R2+1").train()
    record = {}
    ids = torch.randint(1, 97, (2, 8))
    model.model(ids, record=record, num_loops=5, backprop_loops=2)
    for t in range(1, 6):
        assert record[f"h{t}"].requires_grad == (t > 3), t
        assert record[f"core_out{t}"].requires_grad == (t > 3), t
    if scheme == "base":  # base recursion detaches everything before the last 2 loops: the prelude learns nothing
        loss = model(ids, targets=ids, num_loops=5, backprop_loops=2).loss
        loss.backward()
        assert model.model.layers[0].attn.qkv.weight.grad is None
        assert model.model.layers[1].attn.qkv.weight.grad.abs().sum() > 0
