"""Fault injection: planted code never runs, damaged checkpoints are caught, bad inputs get one line.

Every scenario asserts what the user sees (one ``error:`` line, exit status) and what is left
on disk (nothing saved is lost or silently replaced).
"""

import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_run
from meshlm.cli import main
from meshlm.train import checkpoint as ckpt
from meshlm.train.loop import TrainConfig, train
from meshlm.train.safe_state import load_state, save_state

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
    return tiny_run(corpus, out, cache, **{"max_steps": 4, "save_every": 2, "eval_every": 0, **overrides})


def run(corpus, cache, out, **overrides) -> dict:
    return train(TrainConfig(**options(corpus, cache, out, **overrides)))


@pytest.fixture(scope="module")
def paused(corpus, cache, tmp_path_factory):
    """A run stopped after step 2 of 4 (checkpoint step-00000002); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("paused") / "run"
    run(corpus, cache, out, stop_after=2)
    return out


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
    step = ckpt.list_checkpoints(out / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    (step / planted).write_bytes(pickle.dumps(Payload(marker)))
    for name in (ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE):
        (step / name).unlink()
    line = cli_error(train_argv(corpus, cache, out, resume=True), capsys)
    assert "pickle" in line and planted in line
    assert not marker.exists()


def test_pickle_bytes_under_the_new_file_names_are_refused_unread(paused, corpus, cache, tmp_path, capsys):
    out = copy_run(paused, tmp_path)
    step = ckpt.list_checkpoints(out / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    (step / ckpt.OPTIMIZER_FILE).write_bytes(pickle.dumps(Payload(marker)))
    assert "corrupt" in cli_error(train_argv(corpus, cache, out, resume=True), capsys)
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
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted"))
    report = tmp_path / "eval.json"
    argv = ["eval", step, "--ppl", f"x={corpus}", "--context", "32", "--max-tokens", "200", "--device", "cpu"]
    assert main([str(a) for a in [*argv, "--json", report]]) == 0
    assert json.loads(report.read_text())["model"]["model_type"] == "meshlm"
    assert not marker.exists()
