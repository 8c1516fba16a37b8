# Copied from meshlm.model.mesh (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""MeSH: Memory-as-State-Highways (spec section 4).

A buffer of B slots, each the shape of the hidden state, replaces the single state passed
between loop iterations. Step s has a write router and a read router, ``Linear(D -> B)`` +
softmax over slots, applied per token to the state entering the step:

    m_0 = h_emb, m_b = 0 (b > 0)
    m_b <- m_b + w_write_b(s) * x(s)       (x = what the step produced)
    h    = sum_b m_b * w_read_b(s)

Step 0 is the transitional cycle: it writes the prelude output and reads h(0). Step t+1 runs
after core iteration t: it writes h_m(t) = f_core(h(t)) and reads h(t+1); its routers see h(t).
So K loops use K + 1 write and K + 1 read routers. Run with more loops than K (``num_loops``), the
steps past K reuse step K's routers and the buffer keeps its B slots (every step adds to them).

The buffer is never materialised. Every slot is a weighted sum of h_emb and the states written
so far, m_b = [b = 0] h_emb + sum_{j <= s} w_write_b(j) x(j), so the read is

    h = w_read_0(s) h_emb + sum_{j <= s} <w_read(s), w_write(j)> x(j)

with per-token scalar coefficients. The values are the same; what changes is the cost: a
materialised buffer makes autograd keep every step's (batch, seq, B, D) buffer for the read's
backward (K + 1 buffers, fp32 under autocast), while this form keeps only the x(j), each 1/B of
a buffer, and moves fewer bytes per step (bench/saved_memory.py measures it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_meshlm import MeshLMConfig
from .meshlm_router_stats import RouterStatistics
from .meshlm_schemes import StateScheme, at_step


class Router(nn.Linear):
    """``Linear(D -> B)`` of one step whose softmax over slots gives per-token slot weights.

    Initialised (``config.router_init``) with N(0, initializer_range) weights and zero bias
    (``normal``), all zeros (``uniform``: exactly 1/B per slot), or zero weights and
    ``router_init_bias`` on slot ``step + 1`` (``fresh_slot``).
    """

    def __init__(self, hidden: int, slots: int, step: int) -> None:
        super().__init__(hidden, slots)
        self.step = step

    def initial_values(self, config: MeshLMConfig) -> dict[str, torch.Tensor]:
        """Values the model's weight init gives this router's parameters."""
        weight = torch.zeros(self.out_features, self.in_features)
        bias = torch.zeros(self.out_features)
        if config.router_init == "normal":
            weight.normal_(0.0, config.initializer_range)
        elif config.router_init == "fresh_slot":
            bias[self.step + 1] = config.router_init_bias
        return {"weight": weight, "bias": bias}


class MeshScheme(StateScheme):
    """The MeSH buffer with per-step read/write routers; works for shared and unshared cores."""

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__()
        loops, d, slots = config.parsed_layout.loops, config.hidden_size, config.num_buffer_slots
        self.slots = slots
        self.transition_from_prelude = config.mesh_transition_input == "prelude"
        self.write = nn.ModuleList(Router(d, slots, s) for s in range(loops + 1))
        self.read = nn.ModuleList(Router(d, slots, s) for s in range(loops + 1))

    def statistics(self) -> RouterStatistics:
        """Per-step slot weights and router entropy over evaluation forwards (:mod:`meshlm.model.router_stats`)."""
        return RouterStatistics(len(self.write), self.slots, self.write[0].weight.device)

    def _route(self, step: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write and read slot weights (batch, seq, B) of one step, softmax over slots, in ``h``'s dtype.

        Both routers run as one ``Linear(D -> 2B)`` so ``h`` is read once per step.
        """
        write, read = at_step(self.write, step), at_step(self.read, step)
        logits = F.linear(h, torch.cat((write.weight, read.weight)), torch.cat((write.bias, read.bias)))
        weights = torch.softmax(logits.float().unflatten(-1, (2, self.slots)), dim=-1).to(h.dtype)
        return weights[..., 0, :], weights[..., 1, :]

    def _cycle(self, step, carry, router_input, x, record):
        """One write-read cycle; returns (new state, new carry).

        ``carry`` is (h_emb, ((w_write(j), x(j)) for the steps j so far)): what the buffer holds.
        """
        h_emb, writes = carry
        w, r = self._route(step, router_input)
        writes = (*writes, (w, x))
        h = r[..., :1] * h_emb
        for w_j, x_j in writes:
            h = h + (r * w_j).sum(-1, keepdim=True) * x_j
        if record is not None:
            record.setdefault("write", []).append(w.detach())
            record.setdefault("read", []).append(r.detach())
        return h, (h_emb, writes)

    def begin(self, h_emb, h_pre, record=None):
        router_input = h_pre if self.transition_from_prelude else h_emb
        return self._cycle(0, (h_emb, ()), router_input, h_pre, record)

    def step(self, t, h, h_core, carry, record=None):
        return self._cycle(t + 1, carry, h, h_core, record)
