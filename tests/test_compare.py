"""The matched-compute sweep on a tiny CPU config: same data order, matched FLOPs, full report, resumable."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import tiny_run
from meshlm.compare import Sweep, Variant, plan, run_sweep
from meshlm.config import parse_layout
from meshlm.data.shards import TokenBatchSampler
from meshlm.errors import MeshLMError
from meshlm.train import loop
from meshlm.train.loop import TrainConfig

DOCS = [
    " ".join(f"Doc {d} line {i}: the red fox sat near {(i * d) % 11} trees." for i in range(12)) for d in range(300)
]
VARIANTS = ["vanilla", "base", "anchor", "mesh"]


@pytest.fixture
def sweep(tmp_path) -> Sweep:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS))
    train = TrainConfig(
        **tiny_run(
            corpus, tmp_path / "cmp", tmp_path / "cache", scheme=None, micro_batch=None, max_steps=6, eval_every=3
        )
    )
    return Sweep(
        train=train,
        variants=[Variant.parse(v) for v in VARIANTS],
        seeds=[0],
        out=tmp_path / "cmp",
        eval_tokens=2048,
        probe_samples=2,
    )


def test_plan_matches_compute_and_derives_the_vanilla_twin(sweep):
    planned = plan(sweep)
    rows = planned["variants"]
    assert rows["vanilla"]["layout"] == "4" and rows["mesh"]["layout"] == "1+1R2+1"
    assert {r["unrolled_layers"] for r in rows.values()} == {4}
    assert rows["vanilla"]["flops_per_token"] == rows["base"]["flops_per_token"] == rows["anchor"]["flops_per_token"]
    assert rows["mesh"]["flops_per_token"] == pytest.approx(rows["base"]["flops_per_token"], rel=1e-2)
    assert rows["base"]["non_embedding"] < rows["vanilla"]["non_embedding"]
    assert rows["mesh"]["total_flops"] == rows["mesh"]["flops_per_token"] * 6 * 256


def test_budget_beyond_one_epoch_is_refused_unless_allowed(sweep):
    sweep.train.max_steps = 10_000
    with pytest.raises(MeshLMError, match="one epoch"):
        plan(sweep)
    sweep.allow_repeat = True
    assert plan(sweep)["epochs"] > 1


def test_variant_parsing():
    assert Variant.parse("vanilla").vanilla
    assert Variant.parse("anchor+residual").scheme == "residual+anchor"
    fresh = Variant.parse({"name": "mesh-fresh", "scheme": "mesh", "router_init": "fresh_slot"})
    assert (fresh.name, fresh.scheme, fresh.overrides) == ("mesh-fresh", "mesh", {"router_init": "fresh_slot"})
    with pytest.raises(MeshLMError, match="unknown scheme"):
        Variant.parse("meshy")


def test_sweep_same_data_order_full_report_and_resume(sweep, monkeypatch):
    seen: dict[int, tuple[TokenBatchSampler, list[str]]] = {}
    original = TokenBatchSampler.batches_for_step

    def spy(self, step):
        batches = original(self, step)
        digest = hashlib.sha256(b"".join(x.numpy().tobytes() + y.numpy().tobytes() for x, y in batches)).hexdigest()
        # holding the sampler keeps its id from being reused by a later run's sampler
        seen.setdefault(id(self), (self, []))[1].append(digest)
        return batches

    monkeypatch.setattr(TokenBatchSampler, "batches_for_step", spy)
    home = sweep.out.parent / "home"  # the sweep's cache_dir is tmp_path/cache: nothing may land in ~/.cache
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MESHLM_CACHE", raising=False)
    # first pass is interrupted after 3 steps of every run
    sweep.train.stop_after = 3
    with pytest.raises(MeshLMError, match="run the same command again"):
        run_sweep(sweep)
    partial = {
        v: json.loads((sweep.run_dir(Variant.parse(v), 0) / "log.jsonl").read_text().splitlines()[0]) for v in VARIANTS
    }
    sweep.train.stop_after = None
    summary = run_sweep(sweep)

    streams = [digests for _, digests in seen.values()]
    assert len(streams) == 2 * len(VARIANTS)  # one sampler per run and pass
    first_pass, second_pass = streams[: len(VARIANTS)], streams[len(VARIANTS) :]
    assert all(s == first_pass[0] for s in first_pass)
    assert all(s == second_pass[0] for s in second_pass)
    assert len(first_pass[0]) == len(second_pass[0]) == 3  # the second pass resumed at step 4, not at 1
    for v in VARIANTS:
        log = [json.loads(x) for x in (sweep.run_dir(Variant.parse(v), 0) / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(1, 7))
        assert log[0] == partial[v]

    report = (sweep.out / "report.md").read_text()
    for v in VARIANTS:
        assert f"| {v} |" in report
    assert "Gap closure" in report
    assert "± 0.0000" not in report and "± n/a" in report  # one seed: no spread, no interval
    data = json.loads((sweep.out / "report.json").read_text())
    assert set(data["variants"]) == set(VARIANTS)
    assert data["variants"]["vanilla"]["held-out"]["delta_vs_vanilla"] == 0
    for name in (
        "loss_curves.png",
        "probe/update_magnitude.png",
        "probe/cka.png",
        "probe/spectra.png",
        "probe/routers.png",
    ):
        path = sweep.out / name
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert summary["plan"]["data_order"] == data["plan"]["data_order"]
    assert not (home / ".cache" / "meshlm").exists()  # tokenizer, training and probe shards: all in --cache-dir

    # a third run retrains nothing
    monkeypatch.setattr(loop, "train", lambda cfg: pytest.fail(f"retrained {cfg.out}"))
    run_sweep(sweep)


def test_compare_cli_reads_sweep_yaml(tmp_path, sweep, capsys):
    from meshlm.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"data: {sweep.train.data}\ntokenizer: bpe:300\nhidden_size: 32\nnum_attention_heads: 4\n"
        f"layout: 1+1R2+1\nseq_len: 32\nbatch_tokens: 256\nmax_steps: 3\nlog_every: 1\neval_batches: 2\n"
        f"device: cpu\nprogress: false\ntensorboard: false\ncache_dir: {tmp_path / 'cache'}\n"
        "variants: [vanilla, {name: mesh-fresh, scheme: mesh, router_init: fresh_slot}]\nseeds: [1]\n"
        "probe_samples: 0\neval_tokens: 1024\n"
    )
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "yaml")]) == 0
    out = capsys.readouterr().out
    assert "mesh-fresh" in out and "vanilla" in out
    cfg = json.loads((Path(tmp_path / "yaml/runs/mesh-fresh-seed1/model/config.json")).read_text())
    assert cfg["router_init"] == "fresh_slot"


def test_compare_report_only_of_nothing_finished_is_one_error_line(tmp_path, sweep, capsys, no_training):
    from meshlm.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"data: {sweep.train.data}\ntokenizer: bpe:300\nhidden_size: 32\nnum_attention_heads: 4\n"
        f"layout: 1+1R2+1\nseq_len: 32\nbatch_tokens: 256\nmax_steps: 3\ndevice: cpu\nprogress: false\n"
        f"tensorboard: false\ncache_dir: {tmp_path / 'cache'}\nvariants: [base, mesh]\nprobe_samples: 0\n"
    )
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "none"), "--report-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --report-only: no run of ") and "Traceback" not in "".join(err)
    assert not (tmp_path / "none" / "report.md").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_configs_are_valid(path, tmp_path):
    from meshlm.cli import build_parser
    from meshlm.compare import sweep_from_args

    args = build_parser().parse_args(["compare", "--config", str(path), "--data", "x", "--out", str(tmp_path)])
    sweep = sweep_from_args(args)
    assert len(sweep.variants) >= 3 and sweep.seeds
    depths = set()
    for variant in sweep.variants:
        cfg = sweep.run_config(variant, sweep.seeds[0])
        depths.add(parse_layout(cfg.layout).unrolled_layers)
    assert len(depths) == 1  # matched compute


def test_eval_loops_none_turns_off_the_configs_list(tmp_path):
    from meshlm.cli import build_parser
    from meshlm.compare import sweep_from_args

    config = Path(__file__).parents[1] / "configs" / "depth-schemes-31m.yaml"
    base = ["compare", "--config", str(config), "--data", "x", "--out", str(tmp_path)]
    assert sweep_from_args(build_parser().parse_args(base)).eval_loops == list(range(1, 9))
    assert sweep_from_args(build_parser().parse_args([*base, "--eval-loops", "none"])).eval_loops == []


def test_variants_flag_picks_the_configs_own_variants_by_name(tmp_path):
    from meshlm.cli import build_parser
    from meshlm.compare import sweep_from_args

    config = Path(__file__).parents[1] / "configs" / "linear-init-cpu.yaml"
    argv = ["compare", "--config", str(config), "--out", str(tmp_path), "--variants", "linear-slow,base,linear-normal"]
    slow, base, normal = sweep_from_args(build_parser().parse_args(argv)).variants
    assert (slow.name, slow.scheme, slow.overrides) == ("linear-slow", "linear", {"scheme_lr_scale": 0.1})
    assert (base.name, base.scheme, base.overrides) == ("base", "base", {})
    assert normal.overrides == {"linear_init": "normal"}


def test_references_flag_and_yaml_key_name_variants_of_the_sweep(tmp_path):
    from meshlm.cli import build_parser
    from meshlm.compare import sweep_from_args

    config = Path(__file__).parents[1] / "configs" / "linear-init-cpu.yaml"
    argv = ["compare", "--config", str(config), "--out", str(tmp_path)]
    assert sweep_from_args(build_parser().parse_args(argv)).references == ("anchor", "vanilla")
    chosen = sweep_from_args(build_parser().parse_args([*argv, "--references", "base,linear"]))
    assert chosen.references == ("base", "linear")
    yaml_refs = tmp_path / "refs.yaml"
    yaml_refs.write_text(config.read_text() + "references: [linear-slow]\n")
    argv_yaml = ["compare", "--config", str(yaml_refs), "--out", str(tmp_path)]
    assert sweep_from_args(build_parser().parse_args(argv_yaml)).references == ("linear-slow",)
    with pytest.raises(MeshLMError, match=r"--references names mesh, not a variant of this sweep \(its variants: "):
        sweep_from_args(build_parser().parse_args([*argv, "--references", "base,mesh"]))
    with pytest.raises(MeshLMError, match="without repeats"):
        sweep_from_args(build_parser().parse_args([*argv, "--references", "base,base"]))
    for bad in ("5", "[base, {a: 1}]"):
        yaml_refs.write_text(config.read_text() + f"references: {bad}\n")
        with pytest.raises(MeshLMError, match="references takes a comma list or a YAML list of variant names"):
            sweep_from_args(build_parser().parse_args(argv_yaml))


def test_plan_matches_compute_on_expected_flops_of_random_depth(sweep):
    sweep.variants = [
        Variant.parse("vanilla"),
        Variant.parse({"name": "mesh-rd", "scheme": "mesh", "train_loops": "uniform:1-3"}),
    ]
    rows = plan(sweep)["variants"]
    assert rows["mesh-rd"]["unrolled_layers"] == rows["vanilla"]["unrolled_layers"] == 4  # E[k] = 2 = K
    assert rows["mesh-rd"]["flops_per_token"] == pytest.approx(rows["vanilla"]["flops_per_token"], rel=1e-2)
    assert rows["mesh-rd"]["train_loops"] == "uniform:1-3" and rows["vanilla"]["train_loops"] == "fixed"
    for extra in (
        {"name": "deep", "scheme": "mesh", "train_loops": "uniform:2-4"},  # E[k] = 3
        {"name": "tbptt", "scheme": "anchor", "train_loops": "uniform:1-3", "backprop_loops": 1},  # cheaper steps
    ):
        sweep.variants = sweep.variants[:2] + [Variant.parse(extra)]
        with pytest.raises(MeshLMError, match="expected backbone training FLOPs per token"):
            plan(sweep)


def test_sweep_evaluates_every_loop_count_and_reports_the_curve(sweep, capfd):
    sweep.variants = [Variant.parse(v) for v in ("base", "mesh", "linear")]
    sweep.train.train_loops = "uniform:1-3"
    sweep.train.max_steps = 3
    sweep.probe_samples = 0
    sweep.eval_loops = [1, 2, 4]
    run_sweep(sweep)
    assert "Loading weights" not in capfd.readouterr().err  # transformers' bars stay quiet
    data = json.loads((sweep.out / "report.json").read_text())
    curve = data["loops_curve"]
    assert set(curve) == {"base", "mesh", "linear"}
    for variant in curve:
        at = curve[variant]["held-out"]
        assert list(at) == ["1", "2", "4"]
        default = json.loads((sweep.run_dir(Variant.parse(variant), 0) / "eval.json").read_text())
        assert at["2"]["loss_mean"] == default["held-out"]["loss"]  # K = 2 is the default forward
        assert at["1"]["loss_mean"] != at["4"]["loss_mean"]
    report = (sweep.out / "report.md").read_text()
    assert "held-out loss by loop count" in report and "| mesh | uniform:1-3 |" in report
    sweep.eval_loops = [3]  # a finished sweep evaluates only the new count
    run_sweep(sweep)
    cached = json.loads((sweep.run_dir(Variant.parse("mesh"), 0) / "eval_loops.json").read_text())
    assert sorted(cached) == ["1", "2", "3", "4"]
    assert list(json.loads((sweep.out / "report.json").read_text())["loops_curve"]["mesh"]["held-out"]) == ["3"]
    for weights in sweep.out.glob("runs/*/model/*.safetensors"):  # brought back from a GPU without weights
        weights.unlink()
    sweep.eval_loops = [1, 3]
    assert run_sweep(sweep)["loops_curve"]["mesh"]["held-out"]["3"]["loss_mean"] == cached["3"]["held-out"]["loss"]
    sweep.eval_loops = [5]
    with pytest.raises(MeshLMError, match=r"base-seed0/model has no weights .* --eval-loops none"):
        run_sweep(sweep)


def test_a_run_without_a_shared_core_needs_no_weights_for_loop_counts(sweep, tmp_path):
    from meshlm import MeshLMConfig
    from meshlm.compare.run import evaluate_loops

    sweep.eval_loops = [1, 3]
    for layout, expect_error in (("4", False), ("1+1R2+1", True)):
        run = tmp_path / layout
        MeshLMConfig(vocab_size=64, hidden_size=16, num_attention_heads=2, layout=layout).save_pretrained(run / "model")
        if expect_error:
            with pytest.raises(MeshLMError, match="has no weights"):
                evaluate_loops(sweep, run, {})
        else:
            assert evaluate_loops(sweep, run, {}) == {}  # vanilla: nothing to loop, nothing loaded


def test_damaged_result_files_of_a_finished_sweep_give_one_line(sweep):
    """eval.json cut short by a kill, or a log.jsonl whose last line was cut: a named error, not a traceback."""
    sweep.variants = sweep.variants[:2]
    sweep.probe_samples = 0
    run_sweep(sweep)
    run = sweep.run_dir(sweep.variants[1], 0)
    good = (run / "eval.json").read_text()
    (run / "eval.json").write_text(good[: len(good) // 2])
    with pytest.raises(MeshLMError, match=r"eval.json is not valid JSON .*delete it and run the same command"):
        run_sweep(sweep)
    (run / "eval.json").write_text(good)
    log = run / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines[:-1], lines[-1][:10]]) + "\n")
    with pytest.raises(MeshLMError, match=rf"log.jsonl, line {len(lines)}, is not valid JSON"):
        run_sweep(sweep)


def test_a_signal_that_stops_one_run_stops_the_whole_sweep(sweep, monkeypatch):
    """Ctrl-C / SIGTERM during a sequential sweep: the interrupted run's checkpoint stays, no later run starts."""
    started = []

    def interrupted(cfg):
        started.append(cfg.out)
        return {"interrupted_by_signal": 15}

    monkeypatch.setattr(loop, "train", interrupted)  # run_sweep imports it from the loop when it runs
    with pytest.raises(MeshLMError, match=r"4 run\(s\) stopped before the end"):
        run_sweep(sweep)
    assert started == [str(sweep.run_dir(sweep.variants[0], 0))]


def test_a_sequential_sweep_evaluates_each_run_before_the_next_starts(sweep, monkeypatch):
    """A sweep stopped by a time limit keeps the held-out results (loop counts too) of every run it finished."""
    sweep.variants = [Variant.parse(v) for v in ("base", "mesh")]
    sweep.probe_samples = 0
    sweep.eval_loops = [1, 3]
    real_train = loop.train
    started = []

    def second_is_stopped(cfg):
        started.append(cfg.out)
        return real_train(cfg) if len(started) == 1 else {"interrupted_by_signal": 15}

    monkeypatch.setattr(loop, "train", second_is_stopped)
    with pytest.raises(MeshLMError, match=r"1 run\(s\) stopped before the end"):
        run_sweep(sweep)
    first, second = (sweep.run_dir(v, 0) for v in sweep.variants)
    assert len(started) == 2
    assert not (second / "eval.json").exists() and not (second / "eval_loops.json").exists()
    held_out = json.loads((first / "eval.json").read_text())["held-out"]
    assert held_out["tokens"] > 0 and 0 < held_out["loss"] < 20
    by_loops = json.loads((first / "eval_loops.json").read_text())
    assert sorted(by_loops) == ["1", "3"] and by_loops["1"]["held-out"]["loss"] != by_loops["3"]["held-out"]["loss"]
