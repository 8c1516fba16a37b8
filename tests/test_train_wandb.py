"""The optional Weights & Biases logger, against a fake ``wandb`` module (the real package is never used)."""

import json
import os
import sys
import types

import pytest

from conftest import tiny_train as tiny
from meshlm.errors import MeshLMError
from meshlm.train.logging import RunLogger, scalars
from meshlm.train.loop import train


class FakeWandb(types.ModuleType):
    """Records ``init`` keyword arguments, ``log`` calls and ``finish`` per run."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.runs: list[FakeRun] = []

    def init(self, **kwargs):
        run = FakeRun(kwargs, run_id=kwargs.get("id", f"run{len(self.runs)}"))
        self.runs.append(run)
        return run


class FakeRun:
    def __init__(self, kwargs: dict, run_id: str) -> None:
        self.kwargs, self.id = kwargs, run_id
        self.logged: list[tuple[int, dict]] = []
        self.finished = 0

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, dict(data)))

    def finish(self) -> None:
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch) -> FakeWandb:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def log_records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_wandb_logs_the_scalars_of_every_logged_step(corpus, tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=8, eval_every=4, wandb="meshlm-tests"))
    (run,) = fake_wandb.runs
    assert run.kwargs["project"] == "meshlm-tests" and run.kwargs["name"] == "run"  # named after --out
    assert run.kwargs["dir"] == str(out) and "mode" not in run.kwargs  # WANDB_MODE is left to wandb
    assert run.kwargs["config"] == json.loads((out / "run.json").read_text())
    records = log_records(out)
    assert run.logged == [(r["step"], scalars(r)) for r in records]
    assert [step for step, data in run.logged if "val/loss" in data] == [4, 8]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(run.logged[0][1])
    assert run.finished == 1
    assert (out / "wandb_run_id").read_text().strip() == "run0"
    assert os.environ["WANDB_MODE"] == "offline"


def test_a_resumed_run_continues_its_wandb_run(corpus, tmp_path, fake_wandb):
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=8, stop_after=4, wandb="p", wandb_run_name="first try"))
    train(tiny(corpus, out, max_steps=8, resume=True, wandb="p", wandb_run_name="first try"))
    first, second = fake_wandb.runs
    assert "id" not in first.kwargs and (second.kwargs["id"], second.kwargs["resume"]) == ("run0", "allow")
    assert first.kwargs["name"] == second.kwargs["name"] == "first try"
    assert [s for s, _ in first.logged] == [1, 2, 3, 4] and [s for s, _ in second.logged] == [5, 6, 7, 8]
    assert [scalars(r) for r in log_records(out)] == [d for _, d in first.logged + second.logged]


def test_only_the_main_process_starts_a_wandb_run(tmp_path, fake_wandb):
    cfg = tiny(tmp_path / "data", tmp_path / "run", wandb="p")
    logger = RunLogger(tmp_path / "run", False, cfg, 8, 0, {})
    logger.log({"step": 1, "loss": 1.0})
    logger.finish(1, 256, None)
    assert fake_wandb.runs == [] and not (tmp_path / "run").exists()


def test_missing_wandb_is_one_line_with_the_pip_command(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MeshLMError, match=r"pip install wandb"):
        train(tiny(corpus, tmp_path / "run", wandb="p"))
    assert not (tmp_path / "run").exists()  # refused before any work
