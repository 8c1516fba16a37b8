"""The comparison report's judgement calls on synthetic numbers: n/a spreads, gap closure only above the
noise, and the figures' ranges fitted to the data."""

import numpy as np
import pytest

from meshlm.compare import Sweep, Variant, report_markdown, summarize
from meshlm.compare.report import loss_range
from meshlm.probe.figures import cka_colour_range
from meshlm.train.loop import TrainConfig

VARIANTS = ["vanilla", "base", "anchor", "mesh"]
PLANNED = {
    "variants": {
        v: {
            "layout": "4" if v == "vanilla" else "1+1R2+1",
            "scheme": "base" if v == "vanilla" else v,
            "non_embedding": 1000,
            "total": 2000,
            "flops_per_token": 1e5,
            "total_flops": 1e9,
            "unrolled_layers": 4,
            "train_loops": "fixed",
            "backprop_loops": None,
        }
        for v in VARIANTS
    },
    "steps": 10,
    "epochs": 0.5,
    "train_tokens": 20_000,
    "tokenizer": "bpe:300",
    "data_order": "0123456789abcdef",
}


def report_of(losses: dict[str, list[float]], tmp_path, **sweep_options) -> tuple[dict, str]:
    """summarize + report_markdown of a sweep whose runs ended at ``losses`` (variant -> one per seed)."""
    seeds = list(range(len(next(iter(losses.values())))))
    variants = [Variant.parse(v) for v in losses]
    sweep = Sweep(TrainConfig(data="d", out=str(tmp_path)), variants, seeds, tmp_path, **sweep_options)
    evals = {
        v: {s: {"held-out": {"loss": loss}} for s, loss in zip(seeds, ls, strict=True)} for v, ls in losses.items()
    }
    summary = summarize(sweep, PLANNED, evals)
    return summary, report_markdown(summary, sweep)


def test_gap_closure_when_base_and_vanilla_differ_beyond_noise(tmp_path):
    losses = {"vanilla": [3.0, 3.02], "base": [3.5, 3.51], "anchor": [3.2, 3.23], "mesh": [3.1, 3.11]}
    summary, report = report_of(losses, tmp_path)
    assert summary["gap_noise"] == {"held-out": "significant"}
    gaps = summary["gap_closure"]["held-out"]
    assert gaps["anchor"] == pytest.approx((3.505 - 3.215) / (3.505 - 3.01))
    assert f"- held-out: anchor {gaps['anchor']:+.2f}, mesh {gaps['mesh']:+.2f}" in report.splitlines()


def test_no_gap_closure_when_base_and_vanilla_are_within_noise(tmp_path):
    losses = {"vanilla": [3.0, 3.2], "base": [3.1, 3.05], "anchor": [3.2, 3.1], "mesh": [3.0, 3.3]}
    summary, report = report_of(losses, tmp_path)
    assert summary["gap_noise"] == {"held-out": "within noise"} and summary["gap_closure"] == {}
    assert "- held-out: none, base and vanilla are within noise (base - vanilla [" in report
    assert "anchor +" not in report.split("Gap closure")[1]


def test_one_seed_prints_na_spreads_and_marks_the_gap_closure(tmp_path):
    losses = {"vanilla": [5.32], "base": [5.33], "anchor": [5.30], "mesh": [5.31]}
    summary, report = report_of(losses, tmp_path)
    assert "5.3200 ± n/a" in report and "± 0.0000" not in report
    assert summary["gap_noise"] == {"held-out": "one seed"}
    gap_lines = [x for x in report.split("Gap closure")[1].splitlines() if x.startswith("- held-out:")]
    assert gap_lines == [
        "- held-out: anchor +3.00, mesh +2.00 (one seed: the noise of base - vanilla = +0.0100 is unknown)"
    ]


def test_a_sweep_of_base_and_vanilla_alone_prints_no_empty_gap_closure(tmp_path):
    summary, report = report_of({"vanilla": [3.0], "base": [3.5]}, tmp_path)
    assert summary["base_minus_vanilla"]["held-out"]["mean"] == pytest.approx(0.5)
    assert "Gap closure" not in report and "- held-out:  (" not in report


def test_chosen_references_replace_anchor_and_vanilla_in_pairs_and_columns(tmp_path):
    losses = {"vanilla": [3.0, 3.02], "base": [3.5, 3.51], "anchor": [3.2, 3.23], "mesh": [3.1, 3.11]}
    summary, report = report_of(losses, tmp_path, references=("base",))
    assert summary["references"] == ["base"]
    assert {v: set(r["held-out"]["paired"]) for v, r in summary["variants"].items()} == {
        "vanilla": {"base"},
        "base": set(),
        "anchor": {"base"},
        "mesh": {"base"},
    }
    assert summary["variants"]["mesh"]["held-out"]["paired"]["base"]["values"] == pytest.approx([-0.4, -0.4])
    assert "held-out Δ vs base" in report and "Δ vs anchor" not in report
    assert "- held-out: mesh - base = -0.4000, CI [-0.4000, -0.4000]" in report
    assert summary["gap_noise"] == {"held-out": "significant"}  # base - vanilla still judged, unpaired in the table


def test_a_sweep_without_its_references_says_so_and_lists_only_files_it_wrote(tmp_path):
    losses = {"base": [3.5, 3.51], "mesh": [3.6, 3.58]}
    summary, report = report_of(losses, tmp_path)
    assert summary["references"] == [] and summary["variants"]["mesh"]["held-out"]["paired"] == {}
    assert "- none: no reference (anchor, vanilla) is a variant of this sweep (--references)" in report
    files = report.splitlines()[-1]
    assert files.startswith("Files: `report.json`") and "loss_curves.png" not in files and "probe/" not in files
    summary["figures"] = ["probe/cka.png", "loss_curves.png"]
    files = report_markdown(summary, Sweep(TrainConfig(data="d", out=str(tmp_path)), [], [0], tmp_path))
    assert "`loss_curves.png`, `probe/` (diagnostics side by side)" in files.splitlines()[-1]


def test_loss_range_leaves_out_the_initial_fall_and_keeps_every_later_point():
    points = [(10, 7.0), (20, 6.0), (50, 5.5), (100, 5.2), (100, 5.25)]
    low, high = loss_range(points)
    assert (low, high) == pytest.approx((5.2 - 0.04, 6.0 + 0.04))
    assert all(low < loss < high for t, loss in points if t > 10)
    assert loss_range([(10, 4.0)]) == pytest.approx((3.95, 4.05))  # one point: a fixed margin


def test_cka_colour_range_fits_the_values_shown():
    high_cka = np.array([[1.0, 0.93], [0.93, 1.0]])
    assert cka_colour_range([high_cka, np.array([[1.0, 0.96]])]) == (0.9, 1.0)
    assert cka_colour_range([np.array([[1.0, 0.999]])]) == (0.95, 1.0)  # never an empty scale
    assert cka_colour_range([np.array([[1.0, 0.31]])]) == (0.3, 1.0)
