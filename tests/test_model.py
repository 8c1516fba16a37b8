"""Behaviour of every scheme: causality, batch independence, caching, gradients, update rules."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import SCHEME_CASES, randomize_scheme, tiny_config
from meshlm import MeshLMForCausalLM, parse_layout


def build(scheme: str, layout: str, **overrides) -> MeshLMForCausalLM:
    model = MeshLMForCausalLM(tiny_config(scheme=scheme, layout=layout, **overrides)).eval()
    randomize_scheme(model)
    return model


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_causal_prefix_logits_unchanged_by_later_tokens(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(1, 97, (2, 5))
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_batch_rows_independent(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (3, 10))
    batched = model(ids).logits
    for row in range(3):
        torch.testing.assert_close(batched[row], model(ids[row : row + 1]).logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_cached_greedy_generation_equals_uncached(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(1, 97, (2, 6))
    cached = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    seq = ids
    for _ in range(8):
        nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_cache_has_one_slot_per_unrolled_layer(scheme, layout):
    model = build(scheme, layout)
    out = model(torch.randint(1, 97, (1, 5)), use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    assert len(cache.layers) == parse_layout(layout).unrolled_layers
    assert all(layer.keys.shape[-2] == 5 for layer in cache.layers)


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_gradients_reach_every_parameter(scheme, layout):
    model = build(scheme, layout).train()
    ids = torch.randint(1, 97, (2, 10))
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("scheme", "layout"), [c for c in SCHEME_CASES if c[0] != "base"])
def test_left_padded_batched_generation_matches_unbatched(scheme, layout):
    model = build(scheme, layout)
    prompts = [torch.randint(1, 97, (n,)) for n in (3, 7, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    for row, p in enumerate(prompts):
        single = model.generate(
            p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=6, do_sample=False
        )
        assert torch.equal(batched[row, width:], single[0, len(p) :])


def test_loss_is_mean_next_token_cross_entropy_ignoring_minus_100():
    model = build("mesh", "1+2R2+1")
    ids = torch.randint(1, 97, (2, 9))
    labels = ids.clone()
    labels[0, 4] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_sequence_longer_than_max_positions_is_refused():
    model = build("base", "2")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.randint(1, 97, (1, 65)))


def _reference_states(model, ids, slots=None, num_loops=None):
    """Re-state the recursion by hand: prelude, loop and the scheme equations of the spec.

    ``slots`` is the MeSH buffer size, given by the test (not read from the config); ``num_loops``
    runs the core that many times, steps past the layout's K using step K's parameters.
    """
    cfg = model.config
    inner = model.model
    lay = cfg.parsed_layout
    pre, loops, coda = lay.schedule()
    if num_loops is not None:
        loops = (loops[0],) * num_loops
    pos = torch.arange(ids.shape[1])[None]
    rope = inner.rotary(pos)

    def run(h, idx):
        for i in idx:
            h = inner.layers[i](h, rope, None)
        return h

    h_emb = inner.embed(ids) * math.sqrt(cfg.hidden_size)
    h_pre = run(h_emb, pre)
    kind = cfg.scheme_kind
    scheme = inner.scheme
    states = {"emb": h_emb}
    if kind == "mesh":
        buffer = [h_emb] + [torch.zeros_like(h_emb) for _ in range(slots - 1)]

        def cycle(step, router_in, x):
            step = min(step, lay.loops)
            w = torch.softmax(router_in @ scheme.write[step].weight.T + scheme.write[step].bias, dim=-1)
            r = torch.softmax(router_in @ scheme.read[step].weight.T + scheme.read[step].bias, dim=-1)
            assert w.shape[-1] == slots
            for b in range(slots):
                buffer[b] = buffer[b] + x * w[..., b : b + 1]
            return sum(buffer[b] * r[..., b : b + 1] for b in range(slots))

        # transitional write-read of the prelude output; its routers see the prelude output or h_emb
        h = cycle(0, h_emb if cfg.mesh_transition_input == "embedding" else h_pre, h_pre)
    else:
        h = h_pre
    h0 = h
    states["h0"] = h0
    for t, core in enumerate(loops):
        last = min(t, lay.loops - 1)  # per-step parameters past K: the last step's
        if kind == "linear":
            x = torch.cat((h, h0), dim=-1) @ scheme.adapter.weight.T
        elif kind == "diagonal":
            x = torch.exp(-F.softplus(scheme.theta)) * h + scheme.b * h0
        else:
            x = h
        hm = run(x, core)
        if kind == "mesh":
            new = cycle(t + 1, h, hm)
        elif kind in ("base", "linear", "diagonal"):
            new = hm
        elif kind == "additive":
            terms = {"residual": h, "anchor": h0, "anchor*": h_emb}
            new = hm + sum(terms[name] for name in cfg.scheme.split("+"))
        elif kind == "static":
            a = scheme.coeffs[last]
            new = a[0] * hm + a[1] * h + a[2] * h0 + a[3] * h_emb
        else:  # dynamic: per-token coefficients from h(t)
            a = h @ scheme.gates[last].weight.T + scheme.gates[last].bias
            new = a[..., :1] * hm + a[..., 1:2] * h + a[..., 2:3] * h0 + a[..., 3:4] * h_emb
        h = new
        states[f"h{t + 1}"] = h
    states["out"] = run(h, coda)
    return states


# MeSH buffer sizes hard-coded per case: (layout, buffer_size option, B the model must use)
MESH_BUFFERS = [
    ("1+2R1+1", None, 4),
    ("1+2R2+1", None, 5),
    ("1+1R3+1", None, 6),
    ("1+2R2+1", 2, 2),
    ("1+2R2+1", 7, 7),
    ("1+1R3+0", 8, 8),
    ("1+1+1+1", None, 5),
]


def _assert_matches_reference(model, ids, slots=None, num_loops=None):
    record = {}
    with torch.no_grad():
        logits = model.model(ids, record=record, num_loops=num_loops)
        expected = _reference_states(model, ids, slots, num_loops)
    for key, value in expected.items():
        torch.testing.assert_close(record[key], value, atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(logits, model.model.final_norm(expected["out"]))


@pytest.mark.parametrize(("scheme", "layout"), [c for c in SCHEME_CASES if c[1] != "5" and c[0] != "mesh"])
def test_update_rule_matches_direct_restatement(scheme, layout):
    _assert_matches_reference(build(scheme, layout), torch.randint(1, 97, (2, 8)))


@pytest.mark.parametrize(("layout", "buffer_size", "slots"), MESH_BUFFERS)
@pytest.mark.parametrize("transition", ["prelude", "embedding"])
def test_mesh_update_rule_matches_direct_restatement(layout, buffer_size, slots, transition):
    model = build("mesh", layout, buffer_size=buffer_size, mesh_transition_input=transition)
    _assert_matches_reference(model, torch.randint(1, 97, (2, 8)), slots)


def test_mesh_transition_input_changes_the_forward():
    ids = torch.randint(1, 97, (2, 8))
    prelude = build("mesh", "1+2R2+1")
    embedding = build("mesh", "1+2R2+1", mesh_transition_input="embedding")
    embedding.load_state_dict(prelude.state_dict())
    assert not torch.allclose(prelude(ids).logits, embedding(ids).logits)


@pytest.mark.parametrize(("layout", "slots"), [("1+2R1+1", 3), ("1+1R3+1", 6)])
def test_fresh_slot_init_in_a_forward_pass(layout, slots):
    """Untouched fresh_slot routers: step s writes to and reads from slot s + 1 with softmax weight e^3/(e^3+B-1)."""
    model = MeshLMForCausalLM(
        tiny_config(scheme="mesh", layout=layout, router_init="fresh_slot", router_init_bias=3.0, buffer_size=slots)
    ).eval()
    ids = torch.randint(1, 97, (2, 6))
    _assert_matches_reference(model, ids, slots)
    record = {}
    model.model(ids, record=record)
    own = math.exp(3.0) / (math.exp(3.0) + slots - 1)
    for key in ("write", "read"):
        for step, weights in enumerate(record[key]):
            expected = torch.full((2, 6, slots), (1 - own) / (slots - 1))
            expected[..., step + 1] = own
            torch.testing.assert_close(weights, expected, msg=f"{key} step {step}")


@pytest.mark.parametrize(("scheme", "layout"), [("mesh", "1+2R2+1"), ("static", "1+2R2+1"), ("dynamic", "1+1R3+1")])
@pytest.mark.parametrize("num_loops", [1, 4, 6])
def test_run_time_loop_count_matches_direct_restatement(scheme, layout, num_loops):
    model = build(scheme, layout)
    slots = 5 if layout == "1+2R2+1" else 6
    _assert_matches_reference(model, torch.randint(1, 97, (2, 8)), slots, num_loops)


@pytest.mark.parametrize("layout", ["1+2R2+1", "1+1+1+1"])
def test_mesh_gradients_match_the_materialised_buffer(layout):
    """The model never builds the buffer; its loss and every gradient equal those of the spec's buffer."""
    model = build("mesh", layout).train()
    ids = torch.randint(1, 97, (2, 8))
    targets = torch.randint(1, 97, (2, 8))
    loss = model(ids, targets=targets, use_cache=False).loss
    got = torch.autograd.grad(loss, list(model.parameters()))
    h = model.model.final_norm(_reference_states(model, ids, slots=5)["out"])
    expected_loss = F.cross_entropy(model.lm_head(h).flatten(0, 1), targets.flatten())
    expected = torch.autograd.grad(expected_loss, list(model.parameters()))
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=1e-6)
    for name, g, e in zip([n for n, _ in model.named_parameters()], got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5, msg=name)


def test_mesh_buffer_slots_and_softmax_over_slots():
    model = build("mesh", "1+2R3+1", buffer_size=5)
    record = {}
    model.model(torch.randint(1, 97, (2, 7)), record=record)
    assert len(record["write"]) == len(record["read"]) == 4  # K + 1 steps incl. the transitional one
    for w in record["write"] + record["read"]:
        assert w.shape == (2, 7, 5)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 7))
        assert (w > 0).all()


def test_mesh_default_buffer_is_k_plus_3_and_router_count():
    cfg = tiny_config(scheme="mesh", layout="1+2R3+1")
    assert cfg.num_buffer_slots == 6
    model = MeshLMForCausalLM(cfg)
    routers = sum(p.numel() for n, p in model.named_parameters() if ".scheme." in n)
    k, d, b = 3, 32, 6
    assert routers == (k + 1) * 2 * (d * b + b)


def test_router_init_uniform_and_fresh_slot():
    uniform = MeshLMForCausalLM(tiny_config(scheme="mesh", layout="1+2R2+1", router_init="uniform"))
    record = {}
    uniform.model(torch.randint(1, 97, (1, 4)), record=record)
    torch.testing.assert_close(record["read"][1], torch.full((1, 4, 5), 0.2))
    fresh = MeshLMForCausalLM(
        tiny_config(scheme="mesh", layout="1+2R2+1", router_init="fresh_slot", router_init_bias=3)
    )
    for step, router in enumerate(fresh.model.scheme.write):
        assert router.bias.argmax().item() == step + 1
        assert router.bias.max().item() == 3.0
        assert router.weight.abs().sum() == 0


def _router_rows_after_training(router_init: str) -> torch.Tensor:
    """Write-router weight rows of the empty slots 1..B-1 after a few AdamW steps."""
    model = MeshLMForCausalLM(tiny_config(scheme="mesh", layout="1+2R2+1", router_init=router_init)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        ids = torch.randint(1, 97, (4, 12))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.model.scheme.write[1].weight.detach()[1:]


def test_uniform_router_init_never_tells_the_empty_slots_apart_and_normal_does():
    uniform = _router_rows_after_training("uniform")
    assert uniform.abs().sum() > 0  # the routers did learn ...
    torch.testing.assert_close(uniform, uniform[:1].expand_as(uniform))  # ... but slots 1..B-1 stay identical
    normal = _router_rows_after_training("normal")
    assert (normal[0] - normal[1]).abs().max() > 1e-3


def test_normal_router_init_is_default_and_small():
    model = MeshLMForCausalLM(tiny_config(hidden_size=256, scheme="mesh", layout="1+2R2+1"))
    router = model.model.scheme.read[0]
    assert model.config.router_init == "normal"
    assert router.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert router.bias.abs().sum() == 0


def test_static_and_dynamic_start_as_base_recursion():
    ids = torch.randint(1, 97, (2, 6))
    torch.manual_seed(3)
    base = MeshLMForCausalLM(tiny_config(scheme="base", layout="1+2R2+1")).eval()
    for scheme in ("static", "dynamic"):
        other = MeshLMForCausalLM(tiny_config(scheme=scheme, layout="1+2R2+1")).eval()
        other.load_state_dict(base.state_dict(), strict=False)
        torch.testing.assert_close(other(ids).logits, base(ids).logits)


def test_depth_scaled_init_of_output_projections():
    cfg = tiny_config(hidden_size=256, num_attention_heads=4, layout="2+4R3+2")
    model = MeshLMForCausalLM(cfg)
    n_compute = 2 + 12 + 2
    expected = 0.02 / math.sqrt(2 * n_compute)
    layer = model.model.layers[0]
    assert layer.attn.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert layer.mlp.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert layer.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert layer.attn.qkv.bias.abs().sum() == 0


def test_embeddings_scaled_by_sqrt_d():
    scaled = MeshLMForCausalLM(tiny_config(layout="2"))
    record = {}
    ids = torch.randint(1, 97, (1, 4))
    scaled.model(ids, record=record)
    torch.testing.assert_close(record["emb"], scaled.model.embed(ids) * math.sqrt(32))


def test_vanilla_split_view_keeps_logits_and_exposes_blocks():
    model = build("base", "6")
    ids = torch.randint(1, 97, (2, 8))
    record = {}
    plain = model.model(ids)
    split = model.model(ids, record=record, split=parse_layout("1+2+2+1"))
    torch.testing.assert_close(plain, split)
    assert [k for k in record if k.startswith("h")] == ["h0", "h1", "h2"]
    with pytest.raises(ValueError, match="same unrolled depth"):
        model.model(ids, split=parse_layout("1+2+2+2"))


def test_split_equal_to_own_layout_keeps_the_scheme():
    model = build("mesh", "1+2R2+1")
    ids = torch.randint(1, 97, (2, 8))
    torch.testing.assert_close(model.model(ids, split=parse_layout("1+2R2+1")), model.model(ids))
    with pytest.raises(ValueError, match="only a vanilla model can be split"):
        model.model(ids, split=parse_layout("1+2+2+1"))


@pytest.mark.parametrize(("scheme", "layout"), [("mesh", "1+2R2+1"), ("dynamic", "1+2R2+1"), ("base", "3")])
def test_save_and_load_through_auto_classes(tmp_path, scheme, layout):
    model = build(scheme, layout)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MeshLMForCausalLM)
    assert (loaded.config.layout, loaded.config.scheme) == (model.config.layout, model.config.scheme)
    ids = torch.randint(1, 97, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
