"""The fused head + cross-entropy equals the plain computation in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from meshlm import MeshLMForCausalLM
from meshlm.model.loss import linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_value_and_gradients_match_plain_cross_entropy(chunk):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 11, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (3, 11), generator=gen)
    t[0, 3] = t[2, 10] = -100
    scale = 0.37  # like a gradient-accumulation factor: the saved gradients must be scaled
    (scale * linear_cross_entropy(h, w, t, chunk=chunk)).backward()
    fused = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    plain = F.cross_entropy((h @ w.T).flatten(0, 1), t.flatten(), ignore_index=-100)
    (scale * plain).backward()
    torch.testing.assert_close(linear_cross_entropy(h, w, t, chunk=chunk), plain)
    torch.testing.assert_close(fused[0], h.grad)
    torch.testing.assert_close(fused[1], w.grad)


def test_model_targets_path_equals_logits_path_and_keeps_no_logits():
    model = MeshLMForCausalLM(tiny_config(scheme="mesh", layout="1+2R2+1"))
    ids = torch.randint(1, 97, (2, 10))
    targets = torch.roll(ids, -1, dims=1)
    fused = model(ids, targets=targets)
    assert fused.logits is None
    fused.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = F.cross_entropy(model(ids).logits.flatten(0, 1), targets.flatten())
    plain.backward()
    torch.testing.assert_close(fused.loss, plain)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=1e-5, msg=name)
