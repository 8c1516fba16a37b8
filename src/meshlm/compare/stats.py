"""Small-sample statistics of a sweep: Student t quantiles and paired confidence intervals, without scipy.

A sweep has few seeds (2-3), so intervals use the t distribution with ``n - 1`` degrees of
freedom. The t quantile is the exact inverse of the t CDF, written through the regularized
incomplete beta function (continued fraction, as in Numerical Recipes) and inverted by bisection.
With one value there is no spread and no interval: both are ``None`` (shown as "n/a").
"""

from __future__ import annotations

import math
import statistics

LEVEL = 0.95


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converges for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. t(0.975, 1) = 12.706)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def sample_std(values: list[float]) -> float | None:
    """Sample standard deviation (n - 1 in the denominator); ``None`` for a single value."""
    return statistics.stdev(values) if len(values) > 1 else None


def interval(values: list[float], level: float = LEVEL) -> dict:
    """Mean of ``values`` with its two-sided t confidence interval (``None`` bounds for one value).

    For paired differences (same seed, so same data order, in both arms) this is the paired t interval.
    """
    n = len(values)
    mean = statistics.fmean(values)
    std = sample_std(values)
    half = None if std is None else t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {
        "values": list(values),
        "n": n,
        "mean": mean,
        "std": std,
        "half_width": half,
        "low": None if half is None else mean - half,
        "high": None if half is None else mean + half,
        "level": level,
    }


def fmt_pm(mean: float, spread: float | None, signed: bool = False, digits: int = 4) -> str:
    """``"3.8460 ± 0.0120"``; a missing spread (one seed) reads ``"3.8460 ± n/a"``, never ``± 0.0000``."""
    head = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{head} ± " + ("n/a" if spread is None else f"{spread:.{digits}f}")
