"""AdamW with decay on matrices only, and the paper's cosine schedule (spec section 6)."""

from __future__ import annotations

import math

import torch
from torch import nn

from meshlm.model.schemes import StateScheme


def _matrices(modules) -> set[int]:
    return {id(m.weight) for m in modules if isinstance(m, (nn.Linear, nn.Embedding))}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    scheme_weight_decay: float | None = None,
    scheme_lr_scale: float | None = None,
) -> list[dict]:
    """Weight decay on the weight matrices of Linear and Embedding layers, none on biases, norms, coefficients.

    With ``scheme_weight_decay`` or ``scheme_lr_scale``, the state-passing scheme's matrices (MeSH's
    routers, linear's adapter) form a third group with that decay (default: ``weight_decay``) and
    that multiple of the learning rate (``lr_scale``, default 1): ablations of how the optimizer
    shapes the scheme. Without either there are two groups, as in checkpoints written before them.
    """
    decay_ids = _matrices(model.modules())
    scheme_ids = set()
    own_group = scheme_weight_decay is not None or scheme_lr_scale is not None
    if own_group:
        scheme_ids = _matrices(m for s in model.modules() if isinstance(s, StateScheme) for m in s.modules())
    decay, scheme, no_decay = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            (scheme if id(p) in scheme_ids else decay if id(p) in decay_ids else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if own_group:
        own_decay = weight_decay if scheme_weight_decay is None else scheme_weight_decay
        lr_scale = 1.0 if scheme_lr_scale is None else scheme_lr_scale
        groups.append({"params": scheme, "weight_decay": own_decay, "lr_scale": lr_scale})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.95),
    scheme_weight_decay: float | None = None,
    scheme_lr_scale: float | None = None,
) -> torch.optim.AdamW:
    """AdamW (beta 0.9/0.95); the fused CUDA kernel when the parameters live on a GPU.

    A group's ``lr_scale`` (see :func:`param_groups`) multiplies the learning rate the loop sets."""
    fused = next(model.parameters()).is_cuda
    groups = param_groups(model, weight_decay, scheme_weight_decay, scheme_lr_scale)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


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
