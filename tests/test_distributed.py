"""DDP and FSDP2 under torchrun on CPU (gloo): same losses as one process, checkpoints portable across modes.

The distributed runs also recompute activations (``--activation-checkpointing``), which must not change a loss.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_run
from meshlm.train.loop import TrainConfig, train

SRC = str(Path(__file__).resolve().parents[1] / "src")
LINES = [f"Line {i}: the quick brown fox {i % 7} jumps over the lazy dog {i % 5}." for i in range(3000)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 documents of 10 lines; 3 of them hash into the val split, so the runs evaluate."""
    folder = tmp_path_factory.mktemp("dist")
    for d in range(300):
        (folder / f"doc{d:03d}.txt").write_text(" ".join(LINES[10 * d : 10 * d + 10]))
    return str(folder)


def options(corpus, out, cache) -> dict:
    return tiny_run(corpus, out, cache, batch_tokens=512, max_steps=6, eval_every=3)


def torchrun(opts: dict, *flags: str) -> None:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "meshlm.cli", "train"]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv + list(flags), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(out) -> list[float]:
    return [json.loads(x)["loss"] for x in (Path(out) / "log.jsonl").read_text().splitlines()]


def router(out) -> dict[str, float]:
    """Router statistics of the last evaluation (ranks evaluate different batches and all-reduce them)."""
    last = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()][-1]
    return {k: v for k, v in last.items() if k.startswith("router/")}


def test_ddp_and_fsdp_match_single_process_and_resume_across_modes(corpus, tmp_path):
    cache = tmp_path / "cache"
    single = tmp_path / "single"
    train(TrainConfig(**options(corpus, single, cache)))
    ddp = tmp_path / "ddp"
    torchrun(options(corpus, ddp, cache), "--activation-checkpointing", "selective")
    assert losses(ddp) == pytest.approx(losses(single), abs=1e-5)
    assert router(single) and router(ddp) == pytest.approx(router(single), abs=1e-5)
    # a single-process run stopped half way continues under FSDP on two ranks
    resumed = tmp_path / "resumed"
    train(TrainConfig(**options(corpus, resumed, cache), stop_after=3))
    assert len(losses(resumed)) == 3
    torchrun(options(corpus, resumed, cache), "--resume", "--fsdp", "--activation-checkpointing", "full")
    assert losses(resumed) == pytest.approx(losses(single), abs=1e-5)
    assert router(resumed) == pytest.approx(router(single), abs=1e-5)


def test_fsdp_units_leave_the_shared_core_in_the_root():
    from meshlm.config import parse_layout
    from meshlm.train.distributed import _layers_run_once

    assert _layers_run_once(parse_layout("2+4R2+2")) == [0, 1, 6, 7]  # core layers 2..5 run twice
    assert _layers_run_once(parse_layout("1+2+2+1")) == list(range(6))  # unshared cores run once each
    assert _layers_run_once(parse_layout("0+3R3+0")) == []
