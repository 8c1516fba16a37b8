"""A sweep's statistics: t quantiles, paired intervals, and report numbers recomputed from every run's eval.json."""

import dataclasses
import json
import math
import shutil
import statistics

import pytest

from conftest import tiny_run
from meshlm.compare import Sweep, Variant, run_sweep
from meshlm.compare.stats import fmt_pm, interval, t_cdf, t_quantile
from meshlm.errors import MeshLMError
from meshlm.train import loop
from meshlm.train.loop import TrainConfig

DOCS = [
    " ".join(f"Doc {d} line {i}: the red fox sat near {(i * d) % 13} trees." for i in range(12)) for d in range(300)
]
VARIANTS = ["vanilla", "base", "anchor", "mesh"]
SEEDS = [0, 1]
BUDGETS = (512, 1024)  # max_tokens of the two tiny sweeps: 2 and 4 steps of 256 tokens


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 3, 3.1824),
        (0.975, 10, 2.2281),
        (0.975, 30, 2.0423),
        (0.995, 1, 63.6567),
        (0.95, 5, 2.0150),
        (0.025, 4, -2.7764),
    ],
)
def test_t_quantile_matches_tables(p, df, expected):
    q = t_quantile(p, df)
    assert q == pytest.approx(expected, abs=1e-4)
    assert t_cdf(q, df) == pytest.approx(p, abs=1e-12)


def test_t_quantile_tends_to_the_normal():
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)


def test_paired_interval_of_a_hand_computed_case():
    # diffs 0.01, 0.03, 0.02: mean 0.02, sample std 0.01, se 0.01/sqrt(3), t(0.975, 2) = 4.302653
    result = interval([0.01, 0.03, 0.02])
    assert result["mean"] == pytest.approx(0.02)
    assert result["std"] == pytest.approx(0.01)
    assert result["half_width"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert result["half_width"] == pytest.approx(0.024841, abs=1e-6)
    assert (result["low"], result["high"]) == pytest.approx((0.02 - 0.024841, 0.02 + 0.024841), abs=1e-6)


def test_one_value_has_no_spread_and_no_interval():
    result = interval([0.5])
    assert (result["std"], result["half_width"], result["low"], result["high"]) == (None, None, None, None)
    assert fmt_pm(3.5, None) == "3.5000 ± n/a"
    assert fmt_pm(-0.01, 0.002, signed=True) == "-0.0100 ± 0.0020"


def _sweep(root, max_tokens: int) -> Sweep:
    train = TrainConfig(
        **tiny_run(
            root / "corpus.jsonl",
            root / f"sweep-{max_tokens}",
            root / "cache",
            scheme=None,
            max_steps=None,
            max_tokens=max_tokens,
            eval_every=0,
        )
    )
    return Sweep(
        train=train,
        variants=[Variant.parse(v) for v in VARIANTS],
        seeds=SEEDS,
        out=root / f"sweep-{max_tokens}",
        eval_tokens=2048,
        probe_samples=0,
    )


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[int, Sweep]:
    """Two finished tiny sweeps (4 variants x 2 seeds) at two token budgets."""
    root = tmp_path_factory.mktemp("sweeps")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS))
    done = {}
    for budget in BUDGETS:
        done[budget] = _sweep(root, budget)
        run_sweep(done[budget])
    return done


def _losses(sweep: Sweep, variant: str) -> list[float]:
    """Held-out loss per seed, read from each run's own eval.json."""
    return [
        json.loads((sweep.run_dir(Variant.parse(variant), s) / "eval.json").read_text())["held-out"]["loss"]
        for s in SEEDS
    ]


def _md_row(report: str, variant: str) -> list[str]:
    """The cells of ``variant``'s row of the report.md table (layout first, then the variant)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in report.splitlines() if line[:1] == "|"]
    (row,) = [r for r in rows if len(r) > 1 and r[1] == variant]
    return row


def test_report_numbers_match_a_recomputation_from_eval_json(sweeps):
    sweep = sweeps[BUDGETS[-1]]
    data = json.loads((sweep.out / "report.json").read_text())
    report = (sweep.out / "report.md").read_text()
    losses = {v: _losses(sweep, v) for v in VARIANTS}
    assert len({round(statistics.fmean(x), 9) for x in losses.values()}) == len(VARIANTS)  # the variants differ
    assert all(a != b for a, b in losses.values())  # so do the seeds
    mean = {v: statistics.fmean(x) for v, x in losses.items()}
    t1 = 12.706204736  # t(0.975, 1): two seeds, one degree of freedom
    for v in VARIANTS:
        row = data["variants"][v]["held-out"]
        assert row["losses"] == losses[v]
        assert row["loss_mean"] == pytest.approx(mean[v], abs=1e-12)
        std = abs(losses[v][0] - losses[v][1]) / math.sqrt(2)
        assert row["loss_std"] == pytest.approx(std, abs=1e-12)
        assert row["delta_vs_vanilla"] == pytest.approx(mean[v] - mean["vanilla"], abs=1e-12)
        cells = _md_row(report, v)
        assert cells[2] == "fixed" and cells[7] == f"{mean[v]:.4f} ± {std:.4f}"
        for column, ref in ((9, "anchor"), (10, "vanilla")):
            if ref == v:
                assert ref not in row["paired"] and cells[column] == "-"
                continue
            diffs = [a - b for a, b in zip(losses[v], losses[ref], strict=True)]
            half = t1 * statistics.stdev(diffs) / math.sqrt(2)
            paired = row["paired"][ref]
            assert paired["values"] == pytest.approx(diffs, abs=1e-12)
            assert paired["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
            assert paired["half_width"] == pytest.approx(half, rel=1e-9)
            assert (paired["low"], paired["high"]) == pytest.approx((paired["mean"] - half, paired["mean"] + half))
            assert cells[column] == f"{statistics.fmean(diffs):+.4f} ± {half:.4f}"
            assert f"{v} - {ref} = {statistics.fmean(diffs):+.4f}" in report
    base_gap = data["variants"]["base"]["held-out"]["paired"]["vanilla"]
    if base_gap["low"] <= 0 <= base_gap["high"]:  # these tiny runs: base and vanilla within noise
        assert data["gap_noise"]["held-out"] == "within noise" and "held-out" not in data["gap_closure"]
        assert "- held-out: none, base and vanilla are within noise" in report
    else:
        gaps = data["gap_closure"]["held-out"]
        for v in ("anchor", "mesh"):
            expected = (mean["base"] - mean[v]) / (mean["base"] - mean["vanilla"])
            assert gaps[v] == pytest.approx(expected, abs=1e-9)
            assert f"{v} {expected:+.2f}" in report
    assert "± n/a" not in report and "CI n/a" not in report


def _partial_copy(sweeps, tmp_path) -> Sweep:
    """The larger finished sweep, copied, then vanilla seed 1 deleted and mesh seed 0 left without
    eval.json or weights (finished elsewhere, its weights not brought back)."""
    full = sweeps[BUDGETS[-1]]
    sweep = dataclasses.replace(full, out=tmp_path / "partial")
    shutil.copytree(full.out, sweep.out)
    shutil.rmtree(sweep.run_dir(Variant.parse("vanilla"), 1))
    (sweep.run_dir(Variant.parse("base"), 1) / "model" / "trainer_state.json").unlink()  # e.g. stopped mid-run
    mesh0 = sweep.run_dir(Variant.parse("mesh"), 0)
    (mesh0 / "eval.json").unlink()
    _drop_weights(mesh0)
    return sweep


def _drop_weights(run_dir) -> None:
    for weights in (run_dir / "model").glob("*.safetensors"):
        weights.unlink()


def test_report_only_reports_each_variant_over_the_seeds_it_has(sweeps, tmp_path, no_training):
    sweep = _partial_copy(sweeps, tmp_path)
    full = sweeps[BUDGETS[-1]]
    summary = run_sweep(sweep, report_only=True)
    assert [(m["variant"], m["seed"], m["reason"]) for m in summary["missing"]] == [
        ("mesh", 0, "no eval.json and no weights"),
        ("vanilla", 1, "no run folder"),
        ("base", 1, "no finished model (model/trainer_state.json at the last step)"),
    ]
    losses = {v: dict(zip(SEEDS, _losses(full, v), strict=True)) for v in VARIANTS}
    rows = summary["variants"]
    assert {v: rows[v]["seeds"] for v in VARIANTS} == {"vanilla": [0], "base": [0], "anchor": [0, 1], "mesh": [1]}
    vanilla = rows["vanilla"]["held-out"]
    assert vanilla["losses"] == [losses["vanilla"][0]] and vanilla["loss_std"] is None
    assert rows["anchor"]["held-out"]["loss_mean"] == pytest.approx(statistics.fmean(losses["anchor"].values()))
    # each paired difference is over the seeds both runs have
    pairs = (("mesh", "anchor", [1]), ("base", "vanilla", [0]), ("anchor", "vanilla", [0]), ("base", "anchor", [0]))
    for variant, ref, seeds in pairs:
        paired = rows[variant]["held-out"]["paired"][ref]
        assert paired["seeds"] == seeds
        assert paired["values"] == pytest.approx([losses[variant][s] - losses[ref][s] for s in seeds], abs=1e-12)
    assert "vanilla" not in rows["mesh"]["held-out"]["paired"]  # mesh has seed 1 only, vanilla seed 0 only
    assert summary["gap_noise"] == {"held-out": "one seed"}  # base - vanilla rests on seed 0 alone
    report = (sweep.out / "report.md").read_text()
    assert "Not in this report (`--report-only` trains nothing): mesh seed 0 (no eval.json and no weights), " in report
    assert "over each variant's own seeds (last column)" in report
    assert "each mean over its variant's own seeds (so seed noise is not paired out):" in report
    assert any(line.startswith("| 1+1R2+1 | mesh |") and line.endswith("| 1 |") for line in report.splitlines())
    d = losses["mesh"][1] - losses["anchor"][1]
    assert f"- held-out: mesh - anchor = {d:+.4f}, CI n/a (seed 1 {d:+.4f})" in report
    assert json.loads((sweep.out / "report.json").read_text())["runs"]["mesh"] == {"1": "runs/mesh-seed1"}


def test_report_only_probes_the_first_reported_run_with_weights(sweeps, tmp_path, no_training):
    sweep = dataclasses.replace(_partial_copy(sweeps, tmp_path), probe_samples=2)
    anchor0, anchor1 = (sweep.run_dir(Variant.parse("anchor"), s) for s in SEEDS)
    _drop_weights(anchor0)  # its eval.json stays: reported, but not probed
    for run in sweep.out.glob("runs/*/probe"):
        shutil.rmtree(run)
    summary = run_sweep(sweep, report_only=True)
    assert summary["variants"]["anchor"]["seeds"] == SEEDS
    assert (anchor1 / "probe" / "probe.json").is_file() and not (anchor0 / "probe").exists()
    probed = {p.parent.parent.name for p in sweep.out.glob("runs/*/probe/probe.json")}
    assert probed == {"vanilla-seed0", "base-seed0", "anchor-seed1", "mesh-seed1"}
    assert "probe/cka.png" in summary["figures"]


def test_without_report_only_the_missing_runs_are_trained(sweeps, tmp_path, monkeypatch):
    sweep = _partial_copy(sweeps, tmp_path)
    trained = []
    monkeypatch.setattr(loop, "train", lambda cfg: trained.append(cfg.out) or {})
    with pytest.raises(MeshLMError, match=r"2 run\(s\) stopped before the end .*or --report-only to report"):
        run_sweep(sweep)  # the stub trains nothing, so the run is still unfinished afterwards
    assert trained == [str(sweep.run_dir(Variant.parse(v), 1)) for v in ("vanilla", "base")]


def test_report_only_with_nothing_finished_says_so(sweeps, tmp_path, no_training):
    sweep = dataclasses.replace(sweeps[BUDGETS[-1]], out=tmp_path / "empty")
    with pytest.raises(MeshLMError, match=r"no run of .* is finished and evaluable"):
        run_sweep(sweep, report_only=True)


def test_scaling_merges_a_report_of_what_finished(sweeps, tmp_path, no_training, capsys):
    from meshlm.cli import main

    sweep = _partial_copy(sweeps, tmp_path)
    run_sweep(sweep, report_only=True)
    out = tmp_path / "scaling"
    assert main(["scaling", str(sweeps[BUDGETS[0]].out), str(sweep.out), "--out", str(out)]) == 0
    capsys.readouterr()
    small, partial = json.loads((out / "scaling.json").read_text())["budgets"]
    assert partial["seeds"] == SEEDS and partial["held-out"]["loss"]["mesh"]["n"] == 1
    assert "mesh" in small["held-out"]["paired"]["vanilla"] and "mesh" not in partial["held-out"]["paired"]["vanilla"]
    loss_table = (out / "scaling.md").read_text().split("## held-out loss")[1].split("##")[0]
    (row,) = [x for x in loss_table.splitlines() if x.startswith(f"| {BUDGETS[-1]:,} |")]
    mesh = partial["held-out"]["loss"]["mesh"]
    assert "| 0, 1 | " in row and f"| {mesh['mean']:.4f} ± n/a (seeds 1) |" in row
    paired_table = (out / "scaling.md").read_text().split("## held-out paired differences")[1]
    header, _, _, row = paired_table.strip().splitlines()[:4]
    cells = dict(zip(header.strip("|").split("|"), row.strip("|").split("|"), strict=True))
    assert cells[" mesh - vanilla "].strip() == "-"
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_merge_matches_a_recomputation(sweeps, tmp_path, capsys):
    from meshlm.cli import main

    out = tmp_path / "scaling"
    folders = [str(sweeps[b].out) for b in reversed(BUDGETS)]  # any order: sorted by tokens
    assert main(["scaling", *folders, "--out", str(out)]) == 0
    assert "mesh - anchor" in capsys.readouterr().out
    data = json.loads((out / "scaling.json").read_text())
    assert [b["tokens"] for b in data["budgets"]] == list(BUDGETS)
    table = (out / "scaling.md").read_text()
    t1 = 12.706204736
    for budget, row in zip(BUDGETS, data["budgets"], strict=True):
        sweep = sweeps[budget]
        losses = {v: _losses(sweep, v) for v in VARIANTS}
        for v in VARIANTS:
            loss = row["held-out"]["loss"][v]
            assert loss["mean"] == pytest.approx(statistics.fmean(losses[v]), abs=1e-12)
            assert loss["std"] == pytest.approx(statistics.stdev(losses[v]), abs=1e-12)
        for ref in ("anchor", "vanilla"):
            for v in VARIANTS:
                if v == ref:
                    continue
                diffs = [a - b for a, b in zip(losses[v], losses[ref], strict=True)]
                paired = row["held-out"]["paired"][ref][v]
                assert paired["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
                assert paired["half_width"] == pytest.approx(t1 * statistics.stdev(diffs) / math.sqrt(2), rel=1e-9)
        mesh_anchor = row["held-out"]["paired"]["anchor"]["mesh"]
        paired_table = table.split("## held-out paired differences")[1]
        (line,) = [x for x in paired_table.splitlines() if x.startswith(f"| {budget:,} |")]
        assert f"{mesh_anchor['mean']:+.4f} ± {mesh_anchor['half_width']:.4f}" in line
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_merges_the_variants_every_budget_trained(sweeps, tmp_path, capsys):
    """A budget that trained fewer variants (here without vanilla and base) limits the curve to the common ones."""
    from meshlm.cli import main

    small, large = (sweeps[b].out for b in BUDGETS)
    report = json.loads((large / "report.json").read_text())
    for name in ("vanilla", "base"):
        report["variants"].pop(name)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    (fewer / "report.json").write_text(json.dumps(report))
    out = tmp_path / "scaling"
    assert main(["scaling", str(small), str(fewer), "--out", str(out)]) == 0
    assert "base, vanilla left out of the curve" in capsys.readouterr().err
    data = json.loads((out / "scaling.json").read_text())
    assert set(data["recipe"]["variants"]) == {"anchor", "mesh"}
    small_row, large_row = data["budgets"]
    for row, sweep in ((small_row, sweeps[BUDGETS[0]]), (large_row, sweeps[BUDGETS[1]])):
        assert set(row["held-out"]["loss"]) == {"anchor", "mesh"}
        assert set(row["held-out"]["paired"]) == {"anchor"}
        diffs = [a - b for a, b in zip(_losses(sweep, "mesh"), _losses(sweep, "anchor"), strict=True)]
        assert row["held-out"]["paired"]["anchor"]["mesh"]["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)


def test_scaling_pairs_against_the_references_every_sweep_chose(sweeps, tmp_path, capsys):
    from meshlm.cli import main

    small, large = (sweeps[b].out for b in BUDGETS)
    report = json.loads((large / "report.json").read_text())
    report["references"] = ["anchor"]  # e.g. written by compare --references anchor
    only_anchor = tmp_path / "only-anchor"
    only_anchor.mkdir()
    (only_anchor / "report.json").write_text(json.dumps(report))
    out = tmp_path / "scaling"
    assert main(["scaling", str(small), str(only_anchor), "--out", str(out)]) == 0
    capsys.readouterr()
    data = json.loads((out / "scaling.json").read_text())
    assert all(set(row["held-out"]["paired"]) == {"anchor"} for row in data["budgets"])


def test_scaling_plots_each_variant_against_each_reference_and_each_two_references_once():
    from meshlm.compare.scaling import _pairs_to_plot

    paired = {"anchor": {"vanilla": 0, "base": 0, "mesh": 0}, "vanilla": {"anchor": 0, "base": 0, "mesh": 0}}
    assert _pairs_to_plot(paired) == [
        ("anchor", "base"),
        ("anchor", "mesh"),
        ("vanilla", "anchor"),
        ("vanilla", "base"),
        ("vanilla", "mesh"),
    ]
    assert _pairs_to_plot({"base": {"linear": 0, "linear-slow": 0}}) == [("base", "linear"), ("base", "linear-slow")]


def test_scaling_refuses_what_is_not_one_recipe(sweeps, tmp_path, capsys):
    from meshlm.cli import main

    small, large = (sweeps[b].out for b in BUDGETS)
    other = tmp_path / "other"
    other.mkdir()
    report = json.loads((large / "report.json").read_text())
    cases = []
    for key, change in (
        ("variants", lambda r: r["variants"]["mesh"].update(layout="2+1R2+1")),
        ("seq_len", lambda r: r["train"].update(seq_len=64)),
    ):
        edited = json.loads(json.dumps(report))
        change(edited)
        folder = tmp_path / f"edited-{len(cases)}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(edited))
        cases.append(([small, folder], f"differ in {key}"))
    cases += [
        ([small, other], "is not a finished sweep"),
        ([small, small], "same number of tokens"),
        ([small], "at least two sweep folders"),
    ]
    for folders, message in cases:
        assert main(["scaling", *map(str, folders), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
