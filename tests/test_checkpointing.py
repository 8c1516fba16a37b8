"""Activation checkpointing per unrolled layer: same loss and gradients, the chosen layers recomputed."""

import warnings

import pytest
import torch

from conftest import randomize_scheme, tiny_config
from meshlm import MeshLMForCausalLM
from meshlm.errors import MeshLMError

CASES = [("base", "1+2R2+1"), ("mesh", "1+2R2+1"), ("mesh", "0+1R3+1"), ("base", "4")]


def build(scheme: str, layout: str) -> MeshLMForCausalLM:
    torch.manual_seed(0)
    model = MeshLMForCausalLM(tiny_config(scheme=scheme, layout=layout))
    randomize_scheme(model)
    return model.train()


def loss_and_grads(model: MeshLMForCausalLM, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(x, targets=x.roll(-1, 1)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def layer_calls(model: MeshLMForCausalLM, x: torch.Tensor) -> list[int]:
    """Unrolled positions (cache slots) of every layer forward in one training step, recomputes included."""
    calls: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: calls.append(args[4])) for layer in model.model.layers]
    loss_and_grads(model, x)
    for hook in hooks:
        hook.remove()
    return sorted(calls)


@pytest.mark.parametrize(("scheme", "layout"), CASES)
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_keeps_loss_and_gradients_and_recomputes_the_chosen_layers(scheme, layout, mode):
    model = build(scheme, layout)
    x = torch.randint(0, 97, (2, 12))
    depth = model.config.parsed_layout.unrolled_layers
    assert layer_calls(model, x) == list(range(depth))
    loss, grads = loss_and_grads(model, x)
    model.set_activation_checkpointing(mode)
    recomputed = range(0, depth, 1 if mode == "full" else 2)
    assert layer_calls(model, x) == sorted([*range(depth), *recomputed])  # a shared core: one region per loop
    ck_loss, ck_grads = loss_and_grads(model, x)
    torch.testing.assert_close(ck_loss, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(ck_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    model.set_activation_checkpointing("none")
    assert layer_calls(model, x) == list(range(depth))


def test_no_recompute_in_eval_or_with_a_cache():
    model = build("mesh", "1+2R2+1")
    model.set_activation_checkpointing("full")
    x = torch.randint(0, 97, (1, 6))
    ref = model.eval()(x, use_cache=False).logits
    out = model.eval().generate(x, max_new_tokens=3, do_sample=False)
    model.set_activation_checkpointing("none")
    assert torch.equal(model(x, use_cache=False).logits, ref)
    assert torch.equal(model.generate(x, max_new_tokens=3, do_sample=False), out)


def test_hf_gradient_checkpointing_api():
    model = build("mesh", "1+2R2+1")
    x = torch.randint(0, 97, (2, 8))
    depth = model.config.parsed_layout.unrolled_layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation_checkpointing_*
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert model.is_gradient_checkpointing
        assert layer_calls(model, x) == sorted([*range(depth), *range(depth)])
        model.gradient_checkpointing_disable()
        assert not model.is_gradient_checkpointing
    assert layer_calls(model, x) == list(range(depth))


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(MeshLMError, match="none, full, selective"):
        build("base", "2").set_activation_checkpointing("mlp")


def test_checkpointing_traces_under_torch_compile_with_the_same_gradients():
    """One full graph through dynamo + AOT autograd (no inductor codegen, to stay fast on CPU)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    model = build("mesh", "1+2R2+1")
    x = torch.randint(0, 97, (2, 12))
    loss, grads = loss_and_grads(model, x)
    model.set_activation_checkpointing("full")
    counter = CompileCounterWithBackend("aot_eager")
    model.compile(backend=counter, fullgraph=True)
    ck_loss, ck_grads = loss_and_grads(model, x)
    assert counter.frame_count == 1
    regions = [n for n in counter.graphs[0].graph.nodes if "tag_activation_checkpoint" in str(n.target)]
    assert len(regions) == model.config.parsed_layout.unrolled_layers  # dynamo kept one per unrolled layer
    torch.testing.assert_close(ck_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(ck_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
