"""Random-depth training: the loop count of each optimizer step (``--train-loops``).

- ``fixed``: every step runs the layout's own K;
- ``uniform:MIN-MAX``: k uniform over the integers MIN..MAX (both included);
- ``poisson:MEAN``: k = 1 + Poisson(MEAN - 1), so k >= 1 and E[k] = MEAN (Huginn samples from a
  log-normal Poisson with mean 32; a plain shifted Poisson keeps the mean exact and the tail light).

Step s draws from a NumPy generator seeded by ``(seed, s)``: a pure function of the run's seed and
the step number, so every rank draws the same k without communicating and a resumed run draws
exactly what an uninterrupted one would. All micro-batches of a step share its k.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from meshlm.config import Layout
from meshlm.errors import MeshLMError

TRAIN_LOOPS_FORMS = "--train-loops takes fixed, uniform:MIN-MAX (e.g. uniform:1-4) or poisson:MEAN (e.g. poisson:4)"
_UNIFORM = re.compile(r"uniform:(\d+)-(\d+)")
_POISSON = re.compile(r"poisson:(\d+(?:\.\d*)?)")


@dataclass(frozen=True)
class LoopSchedule:
    """The loop-count distribution of a run: ``kind`` fixed/uniform/poisson, ``mean`` E[k].

    ``low``..``high`` are the loop counts drawn (for poisson: where its probability table stops).
    """

    kind: str
    low: int
    high: int
    mean: float

    @classmethod
    def parse(cls, text: str | None, layout: Layout) -> LoopSchedule:
        """The schedule ``text`` names for a model of ``layout``; MeshLMError for a bad spec or layout."""
        spec = (text or "fixed").strip().lower()
        if spec == "fixed":
            return cls("fixed", layout.loops, layout.loops, float(layout.loops))
        if m := _UNIFORM.fullmatch(spec):
            low, high = int(m.group(1)), int(m.group(2))
            if not 1 <= low <= high:
                raise MeshLMError(f"--train-loops {text!r}: need 1 <= MIN <= MAX; {TRAIN_LOOPS_FORMS}")
            schedule = cls("uniform", low, high, (low + high) / 2)
        elif m := _POISSON.fullmatch(spec):
            mean = float(m.group(1))
            if mean < 1:
                raise MeshLMError(f"--train-loops {text!r}: the mean must be >= 1; {TRAIN_LOOPS_FORMS}")
            schedule = cls("poisson", 1, _poisson_support_end(mean), mean)
        else:
            raise MeshLMError(f"cannot parse --train-loops {text!r}; {TRAIN_LOOPS_FORMS}")
        if not layout.shared:
            raise MeshLMError(
                f"--train-loops {text}: the layout {layout} has no shared core to run a random number of times; "
                "use a P+CRK+D layout or --train-loops fixed"
            )
        return schedule

    @property
    def is_random(self) -> bool:
        return self.kind != "fixed"

    def loops_at(self, seed: int, step: int) -> int:
        """The loop count of optimizer step ``step`` (0-based) of a run seeded ``seed``."""
        if not self.is_random:
            return self.low
        rng = np.random.default_rng([seed, step])
        if self.kind == "uniform":
            return int(rng.integers(self.low, self.high + 1))
        return 1 + int(rng.poisson(self.mean - 1))

    def distribution(self) -> dict[int, float]:
        """``{k: P(k)}``; a Poisson's table stops where its terms fall below 1e-18."""
        if self.kind == "fixed":
            return {self.low: 1.0}
        if self.kind == "uniform":
            n = self.high - self.low + 1
            return {k: 1.0 / n for k in range(self.low, self.high + 1)}
        lam = self.mean - 1
        return {1 + j: _poisson_pmf(lam, j) for j in range(self.high)}

    def quantile(self, q: float) -> int:
        """The smallest loop count k with P(loops <= k) >= q (e.g. the deep steps that set peak memory)."""
        mass = 0.0
        for k, p in self.distribution().items():
            mass += p
            if mass >= q:
                return k
        return self.high

    def __str__(self) -> str:
        if self.kind == "uniform":
            return f"uniform:{self.low}-{self.high}"
        return f"poisson:{self.mean:g}" if self.kind == "poisson" else "fixed"


def _poisson_pmf(lam: float, j: int) -> float:
    if lam == 0:
        return 1.0 if j == 0 else 0.0
    return math.exp(j * math.log(lam) - lam - math.lgamma(j + 1))


def _poisson_support_end(mean: float) -> int:
    """Terms j = 0..n-1 of Poisson(mean - 1) to tabulate: past the mode, until a term drops below 1e-18."""
    lam, j = mean - 1, 0
    while j <= lam or _poisson_pmf(lam, j) > 1e-18:
        j += 1
    return j
