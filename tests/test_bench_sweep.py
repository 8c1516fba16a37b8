"""bench/sweep_throughput.py: the aggregate of runs side by side counts only the time they overlap."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "sweep_throughput.py"
spec = importlib.util.spec_from_file_location("sweep_throughput", SCRIPT)
sweep_throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep_throughput)


def log(start: float, rate: float, n: int = 6, every: float = 10.0) -> list[dict]:
    """A run's log: a record every ``every`` seconds from ``start``, ``rate`` tokens/s throughout."""
    return [{"time": start + i * every, "tokens": rate * i * every, "tokens_per_s": rate} for i in range(n)]


def test_overlapping_runs_sum_their_rates_over_the_shared_window():
    rate, window = sweep_throughput.shared_window_rate([log(0, 100.0), log(5, 300.0)])
    # steady from t=20 (run a) and t=25 (run b); a ends at 50, b at 55: shared 25..50
    assert window == pytest.approx(25.0)
    assert rate == pytest.approx(400.0)


def test_staggered_runs_that_never_overlap_give_no_aggregate():
    """Two runs one after the other each log 1M tokens/s; the old sum reported 2M, the GPU never did."""
    rate, window = sweep_throughput.shared_window_rate([log(0, 1e6), log(100, 1e6)])
    assert rate is None and window == 0.0
