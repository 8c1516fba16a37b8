"""AdamW with decay on matrices only, and the paper's cosine schedule (spec section 6)."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the weight matrices of Linear and Embedding layers, none on biases, norms, coefficients."""
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW (beta 0.9/0.95); the fused CUDA kernel when the parameters live on a GPU."""
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)


def lr_at(step: int, max_steps: int, peak: float, warmup_frac: float = 0.01, final_frac: float = 0.1) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up over ``ceil(warmup_frac * max_steps)`` steps (at least one) to ``peak``, then
    cosine decay reaching ``final_frac * peak`` at the last step.
    """
    warmup = max(1, math.ceil(warmup_frac * max_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, max_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
