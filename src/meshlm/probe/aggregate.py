"""Accumulate the section-5 diagnostics over held-out samples: :class:`ProbeAccumulator`.

Feed :meth:`ProbeAccumulator.update` the dict of
``meshlm.probe.states.collect_states`` batch by batch:

- ``emb``, ``h0`` .. ``hK``, ``out``: (batch, seq, dim) states, required;
- ``core_out1`` .. ``core_outK``: (batch, seq, dim) raw core outputs h_m(t)
  before the buffer write/read, optional (mesh models);
- ``read`` and ``write``: (K+1, batch, seq, B) router weights, optional, together.

Each sample is reduced on the tensors' device right away (CKA on (seq, seq)
Gram matrices, singular values, update magnitudes, router statistics) and only
scalars and small arrays are kept. :meth:`ProbeAccumulator.result` returns a
JSON-serialisable dict; every ``std`` is the population standard deviation
(ddof = 0) over samples, so a single sample gives 0::

    {
      "format": "meshlm.probe/1",
      "num_samples": N, "seq_len": L, "hidden_size": D,
      "states": ["emb", "h0", ..., "hK", "out"],         # the paper's states, in order
      "core_outputs": ["core_out1", ..., "core_outK"],   # [] unless passed
      "update_magnitude": {                               # state-to-state update of each block
        "blocks": ["prelude", "core1", ..., "coreK", "coda"],  # emb->h0, h(t-1)->h(t), hK->out
        "mean": [...], "std": [...]},
      "core_update_magnitude": None | {                   # the core's own update h(t-1) -> h_m(t)
        "blocks": ["core1", ..., "coreK"], "mean": [...], "std": [...]},
      "cka": {"kernel": "rbf", "sigma_frac": 0.8,
              "names": states + core_outputs, "mean": [[...]], "std": [[...]]},
      "cka_linear": None | {"kernel": "linear", "sigma_frac": None, "names", "mean", "std"},
      "spectrum": {"k": 50, "names": [...], "mean": [[k values] per name], "std": [[...]]},
      "effective_rank": {"names": [...], "mean": [...], "std": [...]},
      "router": None | {
        "steps": K + 1, "slots": B, "max_entropy": ln(B),
        "read":  {"slot_weight_mean": [[B] * steps], "slot_weight_std": [[B] * steps],
                  "entropy_mean": [steps], "entropy_std": [steps]},
        "write": {... same keys ...}},
    }

Router step t produces h(t): step 0 is the transitional write/read after the
prelude, step t >= 1 follows core iteration t. Entropies are in nats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meshlm.errors import MeshLMError
from meshlm.probe.metrics import (
    DEFAULT_SIGMA_FRAC,
    DEFAULT_SPECTRUM_K,
    check_kernel,
    cka_matrix,
    entropy_effective_rank,
    normalised_spectrum,
    router_stats,
    singular_values,
    update_magnitudes,
)

FORMAT = "meshlm.probe/1"
ROUTERS = ("read", "write")
_NUMBERED_KEY = re.compile(r"(h|core_out)(0|[1-9][0-9]*)")


@dataclass(frozen=True)
class _Layout:
    """Which states a collect_states dict holds, for K loop iterations."""

    loops: int
    has_core_outputs: bool
    has_routers: bool

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> _Layout:
        keys = set(keys)
        states: set[int] = set()
        cores: set[int] = set()
        unknown = []
        for key in sorted(keys - {"emb", "out", *ROUTERS}):
            match = _NUMBERED_KEY.fullmatch(key)
            if match is None:
                unknown.append(key)
            else:
                (states if match[1] == "h" else cores).add(int(match[2]))
        if unknown:
            raise MeshLMError(f"unexpected probe state keys {unknown}; see meshlm.probe.aggregate for the schema.")
        loops = max(states, default=-1)
        if not {"emb", "out"} <= keys or states != set(range(loops + 1)):
            raise MeshLMError(f"probe states need emb, h0..hK without gaps and out, got {sorted(keys)}.")
        if cores and cores != set(range(1, loops + 1)):
            raise MeshLMError(f"core outputs must be core_out1..core_out{loops}, got {sorted(cores)}.")
        if len(keys & set(ROUTERS)) == 1:
            raise MeshLMError("router weights need both 'read' and 'write', got only one of them.")
        return cls(loops=loops, has_core_outputs=bool(cores), has_routers="read" in keys)

    @property
    def states(self) -> list[str]:
        return ["emb", *(f"h{t}" for t in range(self.loops + 1)), "out"]

    @property
    def core_outputs(self) -> list[str]:
        return [f"core_out{t}" for t in range(1, self.loops + 1)] if self.has_core_outputs else []

    @property
    def blocks(self) -> list[tuple[str, str, str]]:
        """(name, input state, output state) of each computational block."""
        cores = [(f"core{t}", f"h{t - 1}", f"h{t}") for t in range(1, self.loops + 1)]
        return [("prelude", "emb", "h0"), *cores, ("coda", f"h{self.loops}", "out")]

    @property
    def core_blocks(self) -> list[tuple[str, str, str]]:
        return [(f"core{t}", f"h{t - 1}", f"core_out{t}") for t in range(1, self.loops + 1)]


def _magnitudes(states: Mapping[str, torch.Tensor], blocks: list[tuple[str, str, str]]) -> torch.Tensor:
    """(batch, blocks) relative update magnitudes of the given (name, input, output) blocks."""
    return torch.stack([update_magnitudes(states[a], states[b]) for _, a, b in blocks], dim=1)


def _summary(samples: list[np.ndarray]) -> dict[str, Any]:
    """Mean and population std over the sample axis (axis 0) of the concatenated arrays."""
    values = np.concatenate(samples, axis=0)
    return {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist()}


class ProbeAccumulator:
    """Per-sample diagnostics (update magnitude, CKA, spectra, effective rank, routers), summarised.

    ``kernel`` and ``sigma_frac`` choose the main CKA (RBF with sigma =
    sigma_frac * median distance by default); ``linear_cka`` adds linear CKA;
    ``spectrum_k`` is the number of normalised singular values kept per state.
    """

    def __init__(
        self,
        *,
        kernel: str = "rbf",
        sigma_frac: float = DEFAULT_SIGMA_FRAC,
        linear_cka: bool = False,
        spectrum_k: int = DEFAULT_SPECTRUM_K,
    ) -> None:
        check_kernel(kernel, sigma_frac)
        if spectrum_k < 1:
            raise MeshLMError(f"spectrum_k must be at least 1, got {spectrum_k}.")
        self.kernel = kernel
        self.sigma_frac = sigma_frac
        self.linear_cka = linear_cka
        self.spectrum_k = spectrum_k
        self._layout: _Layout | None = None
        self._shape: tuple[int, int] | None = None
        self._slots: int | None = None
        self._values: dict[str, list[np.ndarray]] = {}
        self.num_samples = 0

    def _keep(self, key: str, value: torch.Tensor | np.ndarray) -> None:
        """Append a per-sample array (leading axis = samples) to the named series."""
        array = value.cpu().numpy() if isinstance(value, torch.Tensor) else value
        self._values.setdefault(key, []).append(array)

    def _check(self, states: Mapping[str, torch.Tensor]) -> tuple[_Layout, int]:
        """Validate one batch against the layout and shapes seen so far; return the layout and batch size."""
        layout = _Layout.from_keys(states)
        if self._layout not in (None, layout):
            raise MeshLMError(f"probe batch has layout {layout}, earlier batches had {self._layout}.")
        batch, seq, dim = states["emb"].shape
        for name in layout.states + layout.core_outputs:
            if states[name].shape != (batch, seq, dim):
                raise MeshLMError(
                    f"probe state {name!r} has shape {tuple(states[name].shape)}, "
                    f"expected {(batch, seq, dim)} like 'emb'."
                )
        if self._shape not in (None, (seq, dim)):
            raise MeshLMError(f"probe samples must share (seq, dim) = {self._shape}, got {(seq, dim)}.")
        if layout.has_routers:
            read, write = states["read"], states["write"]
            slots = read.shape[-1]
            expected = (layout.loops + 1, batch, seq, slots)
            if read.shape != expected or write.shape != expected or self._slots not in (None, slots):
                raise MeshLMError(
                    f"router weights must both have shape {expected} (steps = K + 1, same B in every batch), "
                    f"got read {tuple(read.shape)} and write {tuple(write.shape)}."
                )
            self._slots = slots
        self._layout, self._shape = layout, (seq, dim)
        return layout, batch

    def update(self, states: Mapping[str, torch.Tensor]) -> None:
        """Add one batch of states (see the module docstring for the keys)."""
        layout, batch = self._check(states)
        self._keep("update", _magnitudes(states, layout.blocks))
        if layout.has_core_outputs:
            self._keep("core_update", _magnitudes(states, layout.core_blocks))
        names = layout.states + layout.core_outputs
        for i in range(batch):
            mats = [states[name][i] for name in names]
            self._keep("cka", cka_matrix(mats, self.kernel, self.sigma_frac)[None])
            if self.linear_cka:
                self._keep("cka_linear", cka_matrix(mats, "linear")[None])
            svals = [singular_values(m) for m in mats]
            self._keep("spectrum", torch.stack([normalised_spectrum(s, self.spectrum_k) for s in svals])[None])
            self._keep("effective_rank", np.array([[entropy_effective_rank(s) for s in svals]]))
        if layout.has_routers:
            for role in ROUTERS:
                stats = router_stats(states[role])
                self._keep(f"{role}_slot_weight", stats.slot_weight)
                self._keep(f"{role}_entropy", stats.entropy)
        self.num_samples += batch

    def _router_result(self) -> dict[str, Any]:
        assert self._layout is not None and self._slots is not None
        result: dict[str, Any] = {
            "steps": self._layout.loops + 1,
            "slots": self._slots,
            "max_entropy": math.log(self._slots),
        }
        for role in ROUTERS:
            weight = _summary(self._values[f"{role}_slot_weight"])
            entropy = _summary(self._values[f"{role}_entropy"])
            result[role] = {
                "slot_weight_mean": weight["mean"],
                "slot_weight_std": weight["std"],
                "entropy_mean": entropy["mean"],
                "entropy_std": entropy["std"],
            }
        return result

    def result(self) -> dict[str, Any]:
        """The JSON-serialisable summary over all samples fed so far (schema in the module docstring)."""
        if self._layout is None or self._shape is None:
            raise MeshLMError("no probe samples were accumulated; call update() with at least one batch first.")
        layout = self._layout
        names = layout.states + layout.core_outputs
        values = self._values
        core_update = None
        if layout.has_core_outputs:
            core_update = {"blocks": [b for b, _, _ in layout.core_blocks], **_summary(values["core_update"])}
        cka_linear = None
        if self.linear_cka:
            cka_linear = {
                "kernel": "linear",
                "sigma_frac": None,
                "names": names,
                **_summary(values["cka_linear"]),
            }
        return {
            "format": FORMAT,
            "num_samples": self.num_samples,
            "seq_len": self._shape[0],
            "hidden_size": self._shape[1],
            "states": layout.states,
            "core_outputs": layout.core_outputs,
            "update_magnitude": {"blocks": [b for b, _, _ in layout.blocks], **_summary(values["update"])},
            "core_update_magnitude": core_update,
            "cka": {
                "kernel": self.kernel,
                "sigma_frac": self.sigma_frac if self.kernel == "rbf" else None,
                "names": names,
                **_summary(values["cka"]),
            },
            "cka_linear": cka_linear,
            "spectrum": {"k": self.spectrum_k, "names": names, **_summary(values["spectrum"])},
            "effective_rank": {"names": names, **_summary(values["effective_rank"])},
            "router": self._router_result() if layout.has_routers else None,
        }
