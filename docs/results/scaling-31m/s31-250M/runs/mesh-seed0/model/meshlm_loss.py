# Copied from meshlm.model.loss (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""Fused output-head + cross-entropy that never keeps the (tokens x vocab) logits for backward.

The training loss of a language model is ``CE(h @ W^T, targets)``. Done naively, the logits
(tokens x vocab, 6.6 GB in fp32 for 32k tokens x 50k vocab) are kept for the backward pass.
Here the forward walks over chunks of tokens and, for each, computes the logits, the loss and
at once the gradients ``dL/dh`` (chunk x d) and ``dL/dW`` (accumulated, vocab x d); only those
are kept, and the backward pass just scales them by the incoming gradient. The matmul work is
the same three products as the naive version (logits, dh, dW), so nothing is recomputed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, ignore_index: int):
        h = hidden.reshape(-1, hidden.shape[-1])
        t = targets.reshape(-1)
        w = weight.to(h.dtype)
        acc = torch.promote_types(h.dtype, torch.float32)  # at least fp32 for logits, loss and dW
        count = (t != ignore_index).sum().clamp_min(1)
        loss = torch.zeros((), device=h.device, dtype=acc)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc)
        for start in range(0, h.shape[0], chunk):
            h_c, t_c = h[start : start + chunk], t[start : start + chunk]
            logits = (h_c @ w.T).to(acc)
            loss = loss + F.cross_entropy(logits, t_c, ignore_index=ignore_index, reduction="sum")
            valid = (t_c != ignore_index).unsqueeze(-1)
            grad = torch.softmax(logits, dim=-1)
            grad.scatter_add_(1, t_c.clamp_min(0).unsqueeze(-1), -valid.to(acc))  # softmax - one_hot(target)
            grad = grad * valid / count
            grad_h[start : start + chunk] = (grad.to(h.dtype) @ w).to(h.dtype)
            grad_w += grad.T @ h_c.to(acc)
        ctx.save_for_backward(grad_h.view_as(hidden), grad_w.to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 8192, ignore_index: int = -100
) -> torch.Tensor:
    """Mean ``cross_entropy(hidden @ weight.T, targets)`` over non-ignored targets, memory-lean (see module doc).

    Gradients flow to ``hidden`` and ``weight``; ``chunk`` tokens are turned into logits at a time.
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, ignore_index)
