"""Fault injection: planted code never runs, damaged checkpoints are caught, bad inputs get one line.

Every scenario asserts what the user sees (one ``error:`` line, exit status) and what is left
on disk (nothing saved is lost or silently replaced).
"""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_run
from meshlm.cli import main
from meshlm.data.cache import sha256_file
from meshlm.train import checkpoint as ckpt
from meshlm.train.loop import TrainConfig, train
from meshlm.train.safe_state import load_state, save_state

SRC = str(Path(__file__).resolve().parents[1] / "src")
WORDS = ("cat dog sun sea hill road lake red blue green old new runs sleeps sings under over").split()  # noqa: SIM905


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)) + ".")
    return str(folder)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def options(corpus, cache, out, **overrides) -> dict:
    return tiny_run(corpus, out, cache, **{"max_steps": 6, "save_every": 2, "eval_every": 0, **overrides})


def run(corpus, cache, out, **overrides) -> dict:
    return train(TrainConfig(**options(corpus, cache, out, **overrides)))


@pytest.fixture(scope="module")
def straight(corpus, cache, tmp_path_factory):
    """A finished 6-step run (checkpoints step-4 and step-6, model/); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run(corpus, cache, out)
    return out


@pytest.fixture(scope="module")
def paused(corpus, cache, tmp_path_factory):
    """The same run stopped after step 4 of 6 (checkpoints step-2 and step-4)."""
    out = tmp_path_factory.mktemp("paused") / "run"
    run(corpus, cache, out, stop_after=4)
    return out


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def newest(out):
    return ckpt.list_checkpoints(out / "checkpoints")[-1]


def copy_run(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def cli_error(argv, capsys) -> str:
    """The one ``error:`` line of a failing ``meshlm`` command (exit status 2, no traceback)."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.startswith("error: ") for line in err].count(True) == 1 and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def train_argv(corpus, cache, out, **overrides) -> list[str]:
    argv = ["train"]
    for key, value in options(corpus, cache, out, **overrides).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv.append(f"{flag}={value}")
    return argv


class Payload:
    """Unpickling this writes ``marker``: the code execution a pickled checkpoint allows."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["optimizer.pt", "rng.pt"])
def test_planted_pickle_in_an_old_format_checkpoint_never_runs(paused, corpus, cache, tmp_path, capsys, planted):
    out = copy_run(paused, tmp_path)
    marker = tmp_path / "pwned"
    for step in ckpt.step_folders(out / "checkpoints"):
        (step / planted).write_bytes(pickle.dumps(Payload(marker)))
        for name in (ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE):
            (step / name).unlink()
    line = cli_error(train_argv(corpus, cache, out, resume=True), capsys)
    assert "pickle" in line and planted in line
    assert not marker.exists()


def rerecord(folder) -> None:
    """Make ``trainer_state.json`` record the files as they are now, as an attacker could."""
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    for name, record in state[ckpt.FILES_KEY].items():
        record.update(sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size)
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state))


@pytest.mark.parametrize("name", [ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE])
def test_pickle_bytes_under_the_new_file_names_are_refused_unread(paused, corpus, cache, tmp_path, capsys, name):
    out = copy_run(paused, tmp_path)
    marker = tmp_path / "pwned"
    for step in ckpt.list_checkpoints(out / "checkpoints"):
        (step / name).write_bytes(pickle.dumps(Payload(marker)))
        rerecord(step)  # checksums that match: only the file format stands between the pickle and a resume
    assert "not a readable meshlm state file" in cli_error(train_argv(corpus, cache, out, resume=True), capsys)
    assert not marker.exists()


def test_safe_state_round_trips_optimizer_and_rng_states_exactly(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"state": {"w": dict(opt.state_dict()["state"][0])}, "param_groups": opt.state_dict()["param_groups"]}
    save_state(state, tmp_path / "opt.safetensors")
    back = load_state(tmp_path / "opt.safetensors")
    assert back["param_groups"] == state["param_groups"]  # tuples (betas) and None stay what they were
    assert all(torch.equal(back["state"]["w"][k], v) for k, v in state["state"]["w"].items())

    random.random(), np.random.rand(), np.random.randn(), torch.rand(1)
    save_state(ckpt.rng_state(), tmp_path / "rng.safetensors")
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)
    ckpt.set_rng_state(load_state(tmp_path / "rng.safetensors"))
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])
    with pytest.raises(TypeError, match="without pickling"):
        save_state({"x": object()}, tmp_path / "bad.safetensors")


def _foreign_folder(tmp_path, marker):
    folder = tmp_path / "foreign"
    folder.mkdir()
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    return folder


def test_eval_of_a_folder_with_foreign_code_refuses_without_prompting(corpus, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    prompts = []
    monkeypatch.setattr("builtins.input", lambda *a: prompts.append(a) or "n")
    folder = _foreign_folder(tmp_path, marker)
    line = cli_error(["eval", folder, "--ppl", f"x={corpus}", "--device", "cpu"], capsys)
    assert "--trust-remote-code" in line and "evil.EvilConfig" in line
    assert not prompts and not marker.exists()


def test_meshlm_folders_load_meshlm_classes_never_the_copied_code(paused, corpus, tmp_path, capsys, monkeypatch):
    """A tampered flat copy of the modelling code in a meshlm folder is not what eval runs."""
    out = copy_run(paused, tmp_path)
    step = ckpt.list_checkpoints(out / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    for name in ("modeling_meshlm.py", "configuration_meshlm.py"):
        (step / name).write_text(f"open({str(marker)!r}, 'w')\n")
    rerecord(step)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted"))
    report = tmp_path / "eval.json"
    argv = ["eval", step, "--ppl", f"x={corpus}", "--context", "32", "--max-tokens", "200", "--device", "cpu"]
    assert main([str(a) for a in [*argv, "--json", report]]) == 0
    assert json.loads(report.read_text())["model"]["model_type"] == "meshlm"
    assert not marker.exists()


# --- integrity ------------------------------------------------------------------------------


def flip(path, offset: int = -200, count: int = 64) -> None:
    """Invert ``count`` bytes of ``path`` from ``offset`` (negative: from the end, inside the tensor data)."""
    data = bytearray(path.read_bytes())
    start = offset % len(data)
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped bytes": lambda f: flip(f / "model.safetensors"),
    "flipped header": lambda f: flip(f / "model.safetensors", offset=8, count=16),
    "truncated weights": lambda f: truncate(f / "model.safetensors"),
    "zero-length weights": lambda f: (f / "model.safetensors").write_bytes(b""),
    "deleted weights": lambda f: (f / "model.safetensors").unlink(),
    "garbage config": lambda f: (f / "config.json").write_text("{not json"),
    "deleted config": lambda f: (f / "config.json").unlink(),
    "flipped optimizer": lambda f: flip(f / ckpt.OPTIMIZER_FILE),
    "deleted optimizer": lambda f: (f / ckpt.OPTIMIZER_FILE).unlink(),
    "flipped rng": lambda f: flip(f / ckpt.RNG_FILE, offset=100),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint_and_matches_the_straight_run(
    paused, straight, corpus, cache, tmp_path, capsys, kind
):
    out = copy_run(paused, tmp_path)
    damaged = ckpt.step_folders(out / "checkpoints")[-1]
    DAMAGE[kind](damaged)
    summary = run(corpus, cache, out, resume=True)
    err = capsys.readouterr().err
    assert f"checkpoint {damaged} is not intact" in err and "trying an older one" in err
    assert summary["resumed_from"].endswith("step-00000002")
    assert losses(out) == losses(straight)


def test_resume_with_every_checkpoint_damaged_refuses_and_deletes_nothing(paused, corpus, cache, tmp_path, capsys):
    out = copy_run(paused, tmp_path)
    steps = ckpt.step_folders(out / "checkpoints")
    flip(steps[0] / "model.safetensors")
    (steps[1] / "config.json").unlink()
    before = sorted(p.name for s in steps for p in s.iterdir())
    line = cli_error(train_argv(corpus, cache, out, resume=True), capsys)
    assert "no intact checkpoint" in line and "sha256" in line and "config.json is missing" in line
    assert sorted(p.name for s in steps for p in s.iterdir()) == before


def test_a_checkpoint_missing_a_recorded_file_is_not_listed_as_complete(paused, tmp_path):
    out = copy_run(paused, tmp_path)
    steps = ckpt.step_folders(out / "checkpoints")
    (steps[-1] / ckpt.OPTIMIZER_FILE).unlink()
    assert ckpt.list_checkpoints(out / "checkpoints") == steps[:-1]


MODEL_DAMAGE = sorted(k for k in DAMAGE if "optimizer" not in k and "rng" not in k)


# flipped tensor bytes are only visible through checksums; every other damage breaks the format
@pytest.mark.parametrize(
    "kind, recorded", [(k, True) for k in MODEL_DAMAGE] + [(k, False) for k in MODEL_DAMAGE if k != "flipped bytes"]
)
def test_eval_and_probe_of_a_damaged_folder_give_one_line(
    straight, corpus, cache, tmp_path, capsys, monkeypatch, kind, recorded
):
    """With checksums (meshlm's folders) the damage is named; without (other folders) loading fails in one line."""
    folder = tmp_path / "model"
    shutil.copytree(straight / "model", folder)
    if not recorded:
        state = json.loads((folder / ckpt.STATE_FILE).read_text())
        del state[ckpt.FILES_KEY]
        (folder / ckpt.STATE_FILE).write_text(json.dumps(state))
    DAMAGE[kind](folder)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted"))
    evaluated = cli_error(["eval", folder, "--ppl", f"x={corpus}", "--device", "cpu"], capsys)
    probed = cli_error(["probe", folder, "--data", corpus, "--cache-dir", cache, "--out", tmp_path / "p"], capsys)
    if recorded:
        assert "is damaged" in evaluated and "is damaged" in probed
    assert not (tmp_path / "p").exists()


def test_a_save_killed_during_the_final_model_leaves_no_model_and_resume_finishes(paused, corpus, cache, tmp_path):
    """kill -9 inside the final ``model/`` save: no half folder, no summary; the next start cleans up and ends."""
    out = copy_run(paused, tmp_path)
    script = (
        "import os, sys\n"
        "from meshlm.train import checkpoint as ckpt\n"
        "from meshlm.cli import main\n"
        "real = ckpt.save_model_dir\n"
        "def killed(path, *a, **k):\n"
        "    real(path, *a, **k)\n"
        "    if path.name.startswith('.model.tmp-'):\n"
        "        (path / 'model.safetensors').unlink()\n"
        "        os._exit(137)\n"
        "ckpt.save_model_dir = killed\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", script, *train_argv(corpus, cache, out, resume=True)], env=env, capture_output=True
    )
    assert done.returncode == 137
    assert not (out / "model").exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == 4  # still the pause's summary
    assert [p.name for p in out.glob(".model.tmp-*")]
    summary = run(corpus, cache, out, resume=True)
    assert not list(out.glob(".model.tmp-*")) and not list((out / "checkpoints").glob(".*"))
    assert summary["steps"] == 6 and (out / "summary.json").exists()
    ckpt.check_intact(out / "model")
