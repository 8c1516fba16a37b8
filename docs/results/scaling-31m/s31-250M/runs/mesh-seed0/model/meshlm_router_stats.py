# Copied from meshlm.model.router_stats (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""MeSH router statistics a training run logs at each evaluation (:class:`RouterStatistics`).

Per router step s (0 = the transitional write/read after the prelude, s >= 1 the cycle after
core iteration s) and role (``write``, ``read``), over every token of the evaluated batches:

    router/{role}/step{s}/slot{b}   mean slot weight of slot b (the B of a step sum to 1)
    router/{role}/step{s}/entropy   mean per-token entropy of the softmax over slots, nats (<= ln B)

Flat names, so a ``log.jsonl`` line reads straight into a table column and TensorBoard groups
them under ``router/``. Sums are kept in float64 on the model's device and reduced over ranks
once per evaluation; the weights are the ones the forward used (bf16 under CUDA autocast).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .meshlm_schemes import SchemeStatistics

ROLES = ("write", "read")


class RouterStatistics(SchemeStatistics):
    """Token sums of the write/read slot weights and their entropy, per step, over evaluation forwards."""

    def __init__(self, steps: int, slots: int, device: torch.device) -> None:
        self.steps, self.slots = steps, slots
        # per role and step: slots weight sums, then the entropy sum, then the token count
        self.totals = torch.zeros(len(ROLES), steps, slots + 2, dtype=torch.float64, device=device)

    def new_record(self) -> dict:
        return {}

    def update(self, record: dict | None) -> None:
        for i, role in enumerate(ROLES):
            w = torch.stack(record[role]).to(self.totals.device, torch.float64)  # (steps, batch, seq, B)
            self.totals[i, :, : self.slots] += w.sum((1, 2))
            self.totals[i, :, self.slots] += -torch.special.xlogy(w, w).sum(-1).sum((1, 2))
            self.totals[i, :, self.slots + 1] += w.shape[1] * w.shape[2]

    def all_reduce(self, reduce: Callable[[torch.Tensor], None]) -> None:
        reduce(self.totals)

    def result(self) -> dict[str, float]:
        tokens = self.totals[..., -1:]
        if not bool((tokens > 0).all()):
            return {}
        means = (self.totals[..., :-1] / tokens).tolist()
        out = {}
        for role, per_step in zip(ROLES, means, strict=True):
            for s, values in enumerate(per_step):
                out.update({f"router/{role}/step{s}/slot{b}": v for b, v in enumerate(values[:-1])})
                out[f"router/{role}/step{s}/entropy"] = values[-1]
        return out
