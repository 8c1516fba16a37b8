"""Probe states and the streaming probe (meshlm.probe.states, meshlm.probe.run.probe_model)."""

import pytest
import torch
from torch import nn

from conftest import SCHEME_CASES, randomize_scheme, tiny_config
from meshlm import MeshLMForCausalLM, parse_layout
from meshlm.config import Layout
from meshlm.errors import MeshLMError
from meshlm.probe import collect_states, default_split, probe_layout, probe_model


def build(scheme: str, layout: str, **overrides) -> MeshLMForCausalLM:
    model = MeshLMForCausalLM(tiny_config(layout=layout, scheme=scheme, **overrides)).eval()
    randomize_scheme(model)
    return model


def head_logits(model: MeshLMForCausalLM, out: torch.Tensor) -> torch.Tensor:
    """Logits recomputed from the recorded coda output: final norm, then the LM head."""
    with torch.no_grad():
        return model.lm_head(model.model.final_norm(out))


@pytest.mark.parametrize(("scheme", "layout"), SCHEME_CASES)
def test_states_leave_logits_alone_and_reproduce_them(scheme, layout):
    model = build(scheme, layout)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        before = model(ids).logits
    states = collect_states(model, ids)
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after)
    torch.testing.assert_close(head_logits(model, states["out"]), before)
    loops = probe_layout(parse_layout(layout)).loops
    names = ["emb", *(f"h{t}" for t in range(loops + 1)), "out"]
    assert [k for k in states if k not in ("read", "write")] == names
    assert len(names) == loops + 3
    for name in names:
        assert states[name].shape == (2, 12, 32) and states[name].dtype == torch.float32
        assert not states[name].requires_grad


def test_state_count_is_k_plus_3_for_recursive_layouts():
    for loops in (1, 2, 4):
        states = collect_states(build("base", f"1+1R{loops}+1"), torch.randint(0, 97, (1, 5)))
        assert len(states) == loops + 3


def test_embedding_state_is_the_scaled_embedding_and_h0_the_prelude_output():
    model = build("base", "2+1R2+1")
    ids = torch.randint(0, 97, (2, 7))
    states = collect_states(model, ids)
    emb = model.model.embed(ids) * model.model.embed_scale
    torch.testing.assert_close(states["emb"], emb.detach())
    record = {}
    with torch.no_grad():
        model.model(ids, record=record)
    torch.testing.assert_close(states["h0"], record["h0"])


@pytest.mark.parametrize(("scheme", "layout"), [("mesh", "1+2R2+1"), ("mesh", "1+1+1+1"), ("mesh", "0+1R3+1")])
def test_mesh_router_weights_have_step_batch_seq_slot_shape_and_sum_to_one(scheme, layout):
    model = build(scheme, layout, buffer_size=6)
    states = collect_states(model, torch.randint(0, 97, (3, 9)))
    loops = parse_layout(layout).loops
    for key in ("read", "write"):
        weights = states[key]
        assert weights.shape == (loops + 1, 3, 9, 6) and weights.dtype == torch.float32
        assert bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(-1), torch.ones(loops + 1, 3, 9))
    # randomized routers depend on the token, so the weights are not one constant distribution
    assert states["read"][1].std(dim=(0, 1)).max() > 1e-3


@pytest.mark.parametrize("transition", ["prelude", "embedding"])
def test_recorded_router_weights_are_each_steps_own_read_and_write(transition):
    """Each recorded step equals softmax(router(input)) of that step's read or write router, computed here."""
    model = build("mesh", "1+2R2+1", mesh_transition_input=transition)
    ids = torch.randint(0, 97, (2, 7))
    states = collect_states(model, ids)
    record = {}
    with torch.no_grad():
        model.model(ids, record=record)
        emb = model.model.embed(ids) * model.model.embed_scale
        rope = model.model.rotary(torch.arange(7)[None])
        prelude = model.model.layers[0](emb, rope, None)
    inputs = [emb if transition == "embedding" else prelude, record["h0"], record["h1"]]
    scheme = model.model.scheme
    for step, router_in in enumerate(inputs):
        for key, routers in (("write", scheme.write), ("read", scheme.read)):
            with torch.no_grad():
                expected = torch.softmax(routers[step](router_in), dim=-1)
            torch.testing.assert_close(states[key][step], expected, msg=f"{key} step {step}")
    assert not torch.allclose(states["read"], states["write"])


@pytest.mark.parametrize(("scheme", "layout"), [("linear", "1+2R2+1"), ("diagonal", "1+1R3+1")])
def test_input_injection_states_are_the_core_outputs(scheme, layout):
    """For linear/diagonal h(t+1) is f_core's output itself, so the probe adds no separate core outputs."""
    model = build(scheme, layout)
    ids = torch.randint(0, 97, (2, 8))
    states = collect_states(model, ids, core_outputs=True)
    for t in range(1, parse_layout(layout).loops + 1):
        assert torch.equal(states[f"h{t}"], states[f"core_out{t}"])
    result = probe_model(model, [ids], progress=False)
    assert result["core_outputs"] == []


def test_core_outputs_are_the_raw_core_results_the_scheme_combines():
    ids = torch.randint(0, 97, (2, 8))
    base = collect_states(build("base", "1+2R3+1"), ids, core_outputs=True)
    residual = collect_states(build("residual", "1+2R3+1"), ids, core_outputs=True)
    for t in range(1, 4):
        torch.testing.assert_close(base[f"core_out{t}"], base[f"h{t}"])
        torch.testing.assert_close(residual[f"h{t}"], residual[f"core_out{t}"] + residual[f"h{t - 1}"])


def test_default_split_has_the_paper_twins_and_fits_every_depth():
    twins = {24: "4+8+8+4", 16: "3+5+5+3", 12: "2+4+4+2", 6: "1+2+2+1", 7: "1+2+2+2"}
    for depth, text in twins.items():
        assert default_split(depth) == parse_layout(text)
    assert default_split(1) == Layout(0, 1, 1, 0, shared=False)
    for depth in range(1, 50):
        split = default_split(depth)
        assert split.unrolled_layers == depth and not split.shared and split.core >= 1
        assert split.coda - split.prelude in (0, 1)


def test_vanilla_split_keeps_logits_and_places_states_at_block_boundaries():
    model = build("base", "6")
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        logits = model(ids).logits
    coarse = collect_states(model, ids)  # default split 1+2+2+1: h0, h1, h2 after 1, 3, 5 layers
    fine = collect_states(model, ids, "1+1+1+1+1+1")  # after 1, 2, 3, 4, 5 layers
    shared_text = collect_states(model, ids, "1+2R2+1")  # same boundaries as 1+2+2+1
    torch.testing.assert_close(head_logits(model, coarse["out"]), logits)
    torch.testing.assert_close(head_logits(model, fine["out"]), logits)
    assert len(coarse) == 2 + 3 and len(fine) == 4 + 3
    for a, b in (("h0", "h0"), ("h1", "h2"), ("h2", "h4"), ("out", "out")):
        torch.testing.assert_close(coarse[a], fine[b])
    for name, value in coarse.items():
        assert torch.equal(value, shared_text[name])
    assert not torch.allclose(coarse["h0"], coarse["h1"])


def test_bad_splits_models_and_ids_are_refused():
    vanilla, recursive = build("base", "6"), build("mesh", "1+2R2+1")
    ids = torch.randint(0, 97, (1, 4))
    with pytest.raises(MeshLMError, match="only applies to vanilla"):
        collect_states(recursive, ids, "1+1+1+1+1+1")
    assert set(collect_states(recursive, ids, "1+2R2+1")) == set(collect_states(recursive, ids))
    with pytest.raises(MeshLMError, match="does not fit the vanilla model of 6 layers"):
        collect_states(vanilla, ids, "1+2+2+2")
    with pytest.raises(MeshLMError, match="does not fit"):
        collect_states(vanilla, ids, "6")
    with pytest.raises(MeshLMError, match="vocabulary"):
        collect_states(vanilla, torch.tensor([[1, 97]]))
    with pytest.raises(MeshLMError, match=r"\(batch, seq\)"):
        collect_states(vanilla, torch.tensor([1, 2]))
    with pytest.raises(MeshLMError, match="meshlm model"):
        collect_states(nn.Linear(2, 2), ids)


def test_recursive_mesh_split_equal_to_own_layout_runs_the_mesh_scheme():
    model = build("mesh", "1+2R2+1")
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        logits = model(ids).logits
    states = collect_states(model, ids, "1+2R2+1")
    torch.testing.assert_close(head_logits(model, states["out"]), logits)


def test_streaming_in_batches_gives_the_one_batch_result():
    model = build("mesh", "1+2R2+1")
    ids = torch.randint(0, 97, (5, 12))
    whole = probe_model(model, [ids], progress=False, linear_cka=True, spectrum_k=8)
    streamed = probe_model(model, ids.split(2), progress=False, linear_cka=True, spectrum_k=8)
    for key in ("update_magnitude", "core_update_magnitude", "cka", "cka_linear", "spectrum", "effective_rank"):
        for stat in ("mean", "std"):
            torch.testing.assert_close(torch.tensor(streamed[key][stat]), torch.tensor(whole[key][stat]))
    assert streamed["num_samples"] == 5 and streamed["seq_len"] == 12
    assert streamed["states"] == ["emb", "h0", "h1", "h2", "out"]
    assert streamed["core_outputs"] == ["core_out1", "core_out2"]
    router = streamed["router"]
    assert (router["steps"], router["slots"]) == (3, 5)
    for role in ("read", "write"):
        assert torch.tensor(router[role]["slot_weight_mean"]).sum(-1).allclose(torch.ones(3), atol=1e-6)
    info = streamed["model"]
    assert (info["layout"], info["scheme"], info["probed_as"], info["buffer_slots"]) == (
        "1+2R2+1",
        "mesh",
        "1+2R2+1",
        5,
    )
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert streamed["probe"]["precision"] == "fp32" and streamed["probe"]["device"] == "cpu"


def test_probe_model_defaults_core_outputs_to_combining_schemes_only():
    ids = torch.randint(0, 97, (2, 8))
    vanilla = probe_model(build("base", "6"), [ids], progress=False, spectrum_k=4)
    assert vanilla["core_outputs"] == [] and vanilla["router"] is None
    assert vanilla["model"]["probed_as"] == "1+2+2+1"
    assert vanilla["update_magnitude"]["blocks"] == ["prelude", "core1", "core2", "coda"]
    assert probe_model(build("base", "1+2R2+1"), [ids], progress=False, spectrum_k=4)["core_outputs"] == []
    residual = probe_model(build("residual", "1+2R2+1"), [ids], progress=False, spectrum_k=4)
    assert residual["core_outputs"] == ["core_out1", "core_out2"]
    with pytest.raises(MeshLMError, match="precision"):
        probe_model(build("base", "6"), [ids], precision="fp16", progress=False)
    with pytest.raises(MeshLMError, match="no probe samples"):
        probe_model(build("base", "6"), [], progress=False)
