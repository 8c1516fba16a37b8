"""``meshlm compare --parallel``: runs as subprocesses give the sequential results bitwise, resume, and fail cleanly."""

import json
from pathlib import Path

import pytest

from conftest import tiny_run
from meshlm.compare import Sweep, Variant, run_sweep
from meshlm.compare.parallel import GIB, runs_that_fit
from meshlm.errors import MeshLMError
from meshlm.train.loop import TrainConfig

DOCS = [" ".join(f"Doc {d} line {i}: a blue owl saw {(i * d) % 7} moons." for i in range(12)) for d in range(200)]


def _sweep(tmp_path, name: str, variants, parallel: int) -> Sweep:
    corpus = tmp_path / "corpus.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS))
    train = TrainConfig(
        **tiny_run(corpus, tmp_path / name, tmp_path / "cache", scheme=None, max_steps=4, eval_every=2, save_every=1)
    )
    return Sweep(
        train=train,
        variants=[Variant.parse(v) for v in variants],
        seeds=[0],
        out=tmp_path / name,
        eval_tokens=1024,
        probe_samples=0,
        parallel=parallel,
    )


def _records(sweep: Sweep, variant: str) -> list[dict]:
    log = sweep.run_dir(Variant.parse(variant), 0) / "log.jsonl"
    clock = {"tokens_per_s", "time"}  # wall-clock fields; everything else must match bitwise
    return [{k: v for k, v in json.loads(x).items() if k not in clock} for x in log.read_text().splitlines()]


def test_parallel_runs_resume_and_equal_sequential_runs_bitwise(tmp_path, monkeypatch):
    # the CPU thread count follows the load average unless fixed, and it changes the order of reductions:
    # two runs side by side see each other's load, one alone does not (meshlm.train.hardware.cpu_threads)
    monkeypatch.setenv("MESHLM_THREADS", "1")
    variants = ["base", "mesh"]
    sequential = _sweep(tmp_path, "seq", variants, parallel=1)
    run_sweep(sequential)
    parallel = _sweep(tmp_path, "par", variants, parallel=2)
    parallel.train.stop_after = 2  # first pass stops every run halfway, with a checkpoint
    with pytest.raises(MeshLMError, match="run the same command again"):
        run_sweep(parallel)
    parallel.train.stop_after = None
    summary = run_sweep(parallel)
    for v in variants:
        assert _records(parallel, v) == _records(sequential, v)  # losses, grad norms, val losses: bitwise
        run_dir = parallel.run_dir(Variant.parse(v), 0)
        assert json.loads((run_dir / "eval.json").read_text()) == json.loads(
            (sequential.run_dir(Variant.parse(v), 0) / "eval.json").read_text()
        )
        assert "train_config.yaml" in {p.name for p in run_dir.iterdir()}
        assert (run_dir / "train.log").exists()  # each run's output in its own folder
    assert summary["variants"]["mesh"]["held-out"]["losses"] == [
        json.loads((sequential.run_dir(Variant.parse("mesh"), 0) / "eval.json").read_text())["held-out"]["loss"]
    ]


def test_a_failing_run_fails_the_sweep_with_its_error_line(tmp_path):
    # micro-batch 3 does not divide the 8 sequences of a step: the run itself refuses, after the plan passed
    sweep = _sweep(tmp_path, "bad", ["base", {"name": "odd", "scheme": "base", "micro_batch": 3}], parallel=2)
    with pytest.raises(MeshLMError) as err:
        run_sweep(sweep)
    message = str(err.value)
    assert "run odd seed 0 failed: --micro-batch 3 does not divide the 8 sequences" in message
    assert "\n" not in message


def test_runs_that_fit_lowers_parallel_to_free_memory():
    # each run: 4 GiB peak x 1.25 + 1.5 GiB = 6.5 GiB; 40 GiB free minus 7 GiB for evaluation holds 5
    n, message = runs_that_fit(8, 40 * GIB, 4 * GIB, 7 * GIB)
    assert n == 5 and message.startswith("--parallel 8 lowered to 5") and "6.5 GiB" in message
    assert runs_that_fit(4, 40 * GIB, 4 * GIB, 7 * GIB)[0] == 4
    assert runs_that_fit(4, 1 * GIB, 4 * GIB, 0)[0] == 1  # never below one run


def test_compiled_runs_are_budgeted_at_the_measured_compile_peak():
    """The 8-run OOM on an H200: 10.3 GiB eager peak, 139 GiB free, 2.3 GiB eval; compiled runs reached 34.5 GiB."""
    eager, free, reserve = int(10.3 * GIB), int(139 * GIB), int(2.3 * GIB)
    assert runs_that_fit(8, free, eager, reserve)[0] == 8  # what let 8 start and run out of memory
    n, message = runs_that_fit(8, free, eager, reserve, compiled=True)
    assert n == 3 and "x 3.4 for torch.compile" in message
    assert n * 34.5 * GIB + reserve <= free


def test_parallel_flag_is_checked(tmp_path):
    from meshlm.cli import build_parser
    from meshlm.compare import sweep_from_args

    args = build_parser().parse_args(["compare", "--data", "x", "--out", str(tmp_path), "--parallel", "0"])
    with pytest.raises(MeshLMError, match="--parallel takes a number of runs >= 1"):
        sweep_from_args(args)
    args = build_parser().parse_args(["compare", "--data", "x", "--out", str(tmp_path), "--parallel", "3", "--compile"])
    sweep = sweep_from_args(args)
    assert sweep.parallel == 3
    assert sweep.run_config(Variant.parse("mesh"), 0).compile  # --compile reaches every run


def test_sigterm_to_the_sweep_stops_every_run_with_a_checkpoint(tmp_path):
    """As GNU `timeout` does it: SIGTERM to the sweep, then to its whole process group (the runs too).

    The second signal used to land while the sweep was stopping its runs and end it in a traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = _sweep(tmp_path, "term", ["base", "mesh"], parallel=2)
    cfg = sweep.train
    argv = [
        *("compare", "--data", cfg.data, "--tokenizer", cfg.tokenizer, "--out", str(sweep.out)),
        *("--hidden-size", "32", "--num-attention-heads", "4", "--layout", cfg.layout, "--seq-len", "32"),
        *("--batch-tokens", "256", "--max-steps", "100000", "--log-every", "1", "--eval-batches", "2"),
        *("--no-progress", "--no-tensorboard", "--cache-dir", cfg.cache_dir, "--device", "cpu"),
        *("--variants", "base,mesh", "--parallel", "2", "--probe-samples", "0", "--allow-repeat"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlm.cli", *argv], stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    logs = [sweep.run_dir(Variant.parse(v), 0) / "log.jsonl" for v in ("base", "mesh")]
    deadline = time.monotonic() + 300
    while not all(p.exists() and p.read_text().strip() for p in logs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=300)[1].strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("error: interrupted; the runs saved checkpoints"), err
    assert not any("Traceback" in line for line in err), err
    for log in logs:
        assert list((log.parent / "checkpoints").iterdir())  # each run stopped through its own checkpoint save


class _FakeRun:
    """A ``subprocess.Popen`` stand-in that exits cleanly on its ``polls``-th poll."""

    pid = 0

    def __init__(self, polls: int):
        self.polls, self.returncode = polls, None

    def poll(self):
        self.polls -= 1
        if self.polls <= 0:
            self.returncode = 0
        return self.returncode


def test_a_finished_runs_slot_is_refilled_before_the_run_is_evaluated(tmp_path, monkeypatch):
    """The next run starts (and compiles) while the sweep scores the last one, not after."""
    from meshlm.compare import parallel

    events = []

    def launch(cfg):
        events.append(f"launch {Path(cfg.out).name}")
        return _FakeRun(polls=1 if cfg.scheme == "base" else 3), Path(cfg.out) / "train.log"

    monkeypatch.setattr(parallel, "launch", launch)
    monkeypatch.setattr(parallel, "POLL_SECONDS", 0)
    sweep = _sweep(tmp_path, "order", ["base", "mesh", "anchor"], parallel=2)
    pending = [(v, 0) for v in sweep.variants]
    parallel.train_parallel(sweep, pending, 2, lambda v, s: events.append(f"evaluate {v.name}-seed{s}"))
    assert events == [
        "launch base-seed0",
        "launch mesh-seed0",
        "launch anchor-seed0",  # base's slot, refilled before base is evaluated
        "evaluate base-seed0",
        "evaluate mesh-seed0",
        "evaluate anchor-seed0",
    ]
