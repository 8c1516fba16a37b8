# Copied from meshlm.model.schemes (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""State passing between loop iterations (spec section 3): one family, one interface.

Every scheme answers three calls and the loop never asks which scheme it runs:

    h(0), carry     = scheme.begin(h_emb, f_pre(h_emb))
    x(t)            = scheme.enter(t, h(t), carry)              the core's input (default: h(t))
    h(t+1), carry   = scheme.step(t, h(t), f_core_t(x(t)), carry)

``carry`` is whatever the scheme needs across steps (the anchors, what the MeSH buffer holds). An optional
``record`` dict receives per-step internals (router weights) for the probes, and ``scheme.statistics()``
gives an accumulator that turns such records into the numbers a training run logs at each evaluation.
Schemes that combine states after the core override ``step``; input-injection schemes (``linear``,
``diagonal``) override ``enter``.

The loop may run more (or fewer) iterations than the K the model was built with (``num_loops``). A scheme
with per-step parameters then uses, at step t, those of step ``min(t, K - 1)``: :func:`at_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

BASE_COEFFS = (1.0, 0.0, 0.0, 0.0)  # (f_core(h), h, h(0), h_emb): start as plain recursion


def at_step(per_step, t: int):
    """The entry of step ``t`` in a per-step sequence; steps past its end reuse the last entry."""
    return per_step[min(t, len(per_step) - 1)]


class SchemeStatistics:
    """Accumulates a scheme's internals over evaluation forwards; this base reports nothing.

    Use: ``record = stats.new_record()``, pass it to the forward, ``stats.update(record)``, per batch;
    then ``stats.all_reduce(reduce)`` (``reduce`` sums a tensor over ranks in place) and ``stats.result()``,
    a flat ``{name: float}`` dict. Every rank must make the same calls, so the reduce is collective-safe.
    """

    def new_record(self) -> dict | None:
        """The ``record`` dict to pass to the forward; None when nothing needs recording."""
        return None

    def update(self, record: dict | None) -> None:
        """Add one forward's record."""

    def all_reduce(self, reduce: Callable[[torch.Tensor], None]) -> None:
        """Sum the accumulated values over ranks."""

    def result(self) -> dict[str, float]:
        """The statistics, named for logging."""
        return {}


class StateScheme(nn.Module):
    """Base recursion ``h(t+1) = f_core(h(t))``; subclasses add a supplementary state."""

    def statistics(self) -> SchemeStatistics:
        """A fresh accumulator of what this scheme logs at evaluation (nothing unless overridden)."""
        return SchemeStatistics()

    def begin(self, h_emb: torch.Tensor, h_pre: torch.Tensor, record: dict | None = None):
        """State entering the loop, h(0), and the carry for the steps."""
        return h_pre, (h_emb, h_pre)

    def enter(self, t: int, h: torch.Tensor, carry) -> torch.Tensor:
        """The core's input at loop iteration t: h(t) itself unless the scheme injects something."""
        return h

    def step(self, t: int, h: torch.Tensor, h_core: torch.Tensor, carry, record: dict | None = None):
        """State after loop iteration t from h(t) and f_core(h(t))."""
        return h_core, carry


class AdditiveScheme(StateScheme):
    """``h(t+1) = f_core(h(t)) + sum of the chosen terms`` among h(t), h(0) (anchor), h_emb (anchor*)."""

    def __init__(self, terms: frozenset[str]) -> None:
        super().__init__()
        self.residual = "residual" in terms
        self.anchor = "anchor" in terms
        self.anchor_emb = "anchor*" in terms

    def step(self, t, h, h_core, carry, record=None):
        h_emb, h0 = carry
        out = h_core
        if self.residual:
            out = out + h
        if self.anchor:
            out = out + h0
        if self.anchor_emb:
            out = out + h_emb
        return out, carry


def _combine(c: torch.Tensor, h_core, h, h0, h_emb) -> torch.Tensor:
    """``c1 f_core(h) + c2 h + c3 h(0) + c4 h_emb``; ``c`` is (4,) or per token (..., 4)."""
    c = c.to(h.dtype)
    return c[..., 0:1] * h_core + c[..., 1:2] * h + c[..., 2:3] * h0 + c[..., 3:4] * h_emb


class StaticScheme(StateScheme):
    """Trainable scalar coefficients per iteration over (f_core(h), h, h(0), h_emb), starting as base."""

    def __init__(self, loops: int) -> None:
        super().__init__()
        self.coeffs = nn.Parameter(torch.tensor([BASE_COEFFS] * loops))

    def initial_values(self, config) -> dict[str, torch.Tensor]:
        """Values the model's weight init gives this module's parameters."""
        return {"coeffs": torch.tensor([BASE_COEFFS] * self.coeffs.shape[0])}

    def step(self, t, h, h_core, carry, record=None):
        h_emb, h0 = carry
        return _combine(at_step(self.coeffs, t), h_core, h, h0, h_emb), carry


class Gate(nn.Linear):
    """Per-token combination coefficients ``Linear(D -> 4)``; zero weights, bias = base coefficients."""

    def initial_values(self, config) -> dict[str, torch.Tensor]:
        """Values the model's weight init gives this module's parameters."""
        return {"weight": torch.zeros(self.out_features, self.in_features), "bias": torch.tensor(BASE_COEFFS)}


class DynamicScheme(StateScheme):
    """Per-token coefficients over (f_core(h), h, h(0), h_emb) from h(t) by a per-iteration linear gate."""

    def __init__(self, loops: int, hidden: int) -> None:
        super().__init__()
        self.gates = nn.ModuleList(Gate(hidden, 4) for _ in range(loops))

    def step(self, t, h, h_core, carry, record=None):
        h_emb, h0 = carry
        return _combine(at_step(self.gates, t)(h), h_core, h, h0, h_emb), carry


class Adapter(nn.Linear):
    """Huginn's recurrent-depth adapter ``A: Linear(2D -> D)`` without bias, over ``[h(t); h(0)]``.

    ``linear_init="identity"`` starts it as ``A = [I | 0]`` (the core sees h(t): base recursion);
    ``"normal"`` draws N(0, initializer_range) like every other matrix (Huginn's random init).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__(2 * hidden, hidden, bias=False)

    def initial_values(self, config) -> dict[str, torch.Tensor]:
        """Values the model's weight init gives this module's parameters."""
        d = self.out_features
        if config.linear_init == "normal":
            return {"weight": torch.empty(d, 2 * d).normal_(0.0, config.initializer_range)}
        return {"weight": torch.cat((torch.eye(d), torch.zeros(d, d)), dim=1)}


class LinearScheme(StateScheme):
    """Input injection of Geiping et al. 2025 (Huginn): ``h(t+1) = f_core(A [h(t); h(0)])``, one A for all steps."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.adapter = Adapter(hidden)

    def enter(self, t, h, carry):
        return self.adapter(torch.cat((h, carry[1]), dim=-1))


class DiagonalScheme(StateScheme):
    """Stable per-channel injection (in the spirit of Parcae): ``h(t+1) = f_core(a * h(t) + b * h(0))``.

    ``a = exp(-softplus(theta)) = sigmoid(-theta)`` lies in (0, 1) for every real theta (in fp32 strictly
    so for |theta| < 15; beyond, it rounds to 0 or 1, never outside), so the injected map never amplifies
    the carried state whatever the optimiser does; ``b`` is free. One (theta, b) pair of D channels for all
    steps. Init: ``a = diagonal_decay_init`` (0.5) and ``b = 1 - a`` on every channel, so the first core
    input is exactly h(0) and every later one a convex mix of the state and the loop input.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(hidden))
        self.b = nn.Parameter(torch.zeros(hidden))

    def initial_values(self, config) -> dict[str, torch.Tensor]:
        """Values the model's weight init gives this module's parameters."""
        a = torch.full((self.theta.numel(),), config.diagonal_decay_init)
        # softplus(theta) = -log(a)  =>  theta = log(expm1(-log(a)))
        return {"theta": torch.log(torch.expm1(-torch.log(a))), "b": 1.0 - a}

    def decay(self) -> torch.Tensor:
        """The per-channel ``a = exp(-softplus(theta))``, in (0, 1)."""
        return torch.exp(-F.softplus(self.theta))

    def enter(self, t, h, carry):
        return self.decay().to(h.dtype) * h + self.b.to(h.dtype) * carry[1]
