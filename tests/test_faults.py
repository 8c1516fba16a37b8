"""Fault injection: planted code never runs, damaged checkpoints are caught, bad inputs get one line.

Every scenario asserts what the user sees (one ``error:`` line, exit status) and what is left
on disk (nothing saved is lost or silently replaced).
"""

import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_run
from meshlm.cli import main
from meshlm.data.cache import sha256_file
from meshlm.model import MeshLMForCausalLM
from meshlm.train import checkpoint as ckpt
from meshlm.train import loop
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


# --- resume refuses what breaks exactness ----------------------------------------------------


def tree(folder) -> dict:
    """Every file under ``folder`` with its sha256: what must stay untouched."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change, flag",
    [({"seq_len": 16}, "--seq-len"), ({"batch_tokens": 512}, "--batch-tokens"), ({"seed": 1}, "--seed")]
    + [({"max_steps": 8}, "--max-steps"), ({"max_steps": None, "max_tokens": 256 * 8}, "--max-tokens")],
)
def test_resume_with_a_changed_setting_is_refused_naming_it(paused, corpus, cache, tmp_path, capsys, change, flag):
    out = copy_run(paused, tmp_path)
    before = tree(out)
    argv = [a for a in train_argv(corpus, cache, out, resume=True, **change) if not a.endswith("=None")]
    assert flag in cli_error(argv, capsys)
    assert tree(out) == before


def test_resume_of_a_finished_run_is_a_no_op(straight, corpus, cache, tmp_path, capsys):
    out = copy_run(straight, tmp_path)
    before = tree(out)
    assert main(train_argv(corpus, cache, out, resume=True)) == 0
    assert "is complete (6 steps); nothing to do" in capsys.readouterr().err
    assert tree(out) == before
    assert json.loads((out / "summary.json").read_text())["final_loss"] is not None


@pytest.mark.parametrize("stop_after", [1, 3])
def test_window_losses_after_resume_match_the_straight_run_at_any_log_every(corpus, cache, tmp_path, stop_after):
    """log every 4 steps, checkpoints at 2 and at the pause: the resumed windows mix nothing."""
    straight = tmp_path / "straight"
    run(corpus, cache, straight, log_every=4)
    out = tmp_path / "resumed"
    run(corpus, cache, out, log_every=4, stop_after=stop_after)
    run(corpus, cache, out, log_every=4, resume=True)
    records = [[json.loads(x) for x in (o / "log.jsonl").read_text().splitlines()] for o in (straight, out)]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in records[0]] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in records[1]
    ]
    assert [r["step"] for r in records[0]] == [4, 6]


def test_tensorboard_shows_each_step_once_after_a_resume(corpus, cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run(corpus, cache, out, tensorboard=True, stop_after=4)
    shutil.rmtree(out / "checkpoints" / "step-00000004")  # killed after logging step 4, before saving it
    run(corpus, cache, out, tensorboard=True, resume=True)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses(out))


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_exits_non_zero_after_saving(corpus, cache, tmp_path, monkeypatch, signum, status):
    original = loop.lr_at

    def lr_then_signal(step, *args):
        if step == 2:
            signal.raise_signal(signum)
        return original(step, *args)

    monkeypatch.setattr(loop, "lr_at", lr_then_signal)
    out = tmp_path / "run"
    assert main(train_argv(corpus, cache, out)) == status
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000002", "step-00000003"]


# --- NaN and divergence ---------------------------------------------------------------------


def test_a_diverging_update_keeps_a_genuinely_good_checkpoint(corpus, cache, tmp_path, capsys, monkeypatch):
    """lr 1e4 on the update of step 5, a checkpoint every step, keep 1: step-4 survives, step-5 is set aside."""
    original = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, *a: 1e4 if step == 4 else original(step, *a))
    out = tmp_path / "run"
    line = cli_error(train_argv(corpus, cache, out, max_steps=10, save_every=1, keep_checkpoints=1), capsys)
    assert "last good checkpoint is" in line and line.count("step-00000004") == 1 and "suspect-step-00000005" in line
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000004"]
    assert (out / "checkpoints" / "suspect-step-00000005").is_dir()  # kept, but never resumed from
    good = MeshLMForCausalLM.from_pretrained(out / "checkpoints" / "step-00000004")
    logged = losses(out)
    assert logged[3] < logged[0] and all(math.isfinite(v) and v < 2 * math.log(good.config.vocab_size) for v in logged)


def test_an_update_that_makes_parameters_non_finite_is_never_saved(corpus, cache, tmp_path, capsys, monkeypatch):
    real_step = torch.optim.AdamW.step

    def poisoned(self, *a, **k):
        result = real_step(self, *a, **k)
        self.steps_done = getattr(self, "steps_done", 0) + 1
        if self.steps_done == 4:  # the update of step 4, a save step: its loss was computed before it
            self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "run"
    line = cli_error(train_argv(corpus, cache, out, log_every=10), capsys)
    assert "update of step 4 made parameters non-finite" in line and "step-00000002" in line
    assert [p.name for p in ckpt.step_folders(out / "checkpoints")] == ["step-00000002"]


def test_an_lr_that_overflows_the_optimizer_stops_in_one_line(corpus, cache, tmp_path, capsys):
    out = tmp_path / "run"
    line = cli_error(train_argv(corpus, cache, out, lr=1e39), capsys)
    assert "overflows float32" in line and "no good checkpoint" in line


# --- bad inputs: one line, exit != 0, nothing lost ------------------------------------------

BAD_TRAIN_OPTIONS = {
    "batch_tokens=0": ({"batch_tokens": 0}, "--batch-tokens"),
    "seq_len=0": ({"seq_len": 0}, "--seq-len"),
    "log_every=0": ({"log_every": 0}, "--log-every"),
    "log_every=-1": ({"log_every": -1}, "--log-every"),
    "save_every=-1": ({"save_every": -1}, "--save-every"),
    "eval_every=-1": ({"eval_every": -1}, "--eval-every"),
    "lr=-1": ({"lr": -1}, "--lr"),
    "lr=nan": ({"lr": "nan"}, "--lr"),
    "lr=inf": ({"lr": "inf"}, "--lr"),
    "seed=-1": ({"seed": -1}, "--seed"),
    "device=tpu": ({"device": "tpu"}, "--device tpu"),
    "keep_checkpoints=-1": ({"keep_checkpoints": -1}, "--keep-checkpoints"),
    "grad_clip=-1": ({"grad_clip": -1}, "--grad-clip"),
    "grad_clip=0": ({"grad_clip": 0}, "--grad-clip"),
    "max_steps=-5": ({"max_steps": -5}, "--max-steps"),
    "max_steps=0": ({"max_steps": 0}, "--max-steps"),
    "micro_batch=0": ({"micro_batch": 0}, "--micro-batch"),
    "weight_decay=-0.1": ({"weight_decay": -0.1}, "--weight-decay"),
    "warmup_frac=-0.1": ({"warmup_frac": -0.1}, "--warmup-frac"),
    "warmup_frac=2": ({"warmup_frac": 2}, "--warmup-frac"),
    "stop_after=0": ({"stop_after": 0}, "--stop-after"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_OPTIONS))
def test_bad_train_options_give_one_line_and_write_nothing(corpus, cache, tmp_path, capsys, case):
    change, flag = BAD_TRAIN_OPTIONS[case]
    out = tmp_path / "run"
    assert flag in cli_error(train_argv(corpus, cache, out, **change), capsys)
    assert not out.exists()


@pytest.mark.parametrize("yaml_text, option", [('lr: "abc"', "--lr (lr) must be a float"), ('seq_len: "32"', "int")])
def test_wrong_types_in_the_yaml_config_give_one_line(corpus, cache, tmp_path, capsys, yaml_text, option):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text + "\n")
    out = tmp_path / "run"
    argv = [a for a in train_argv(corpus, cache, out) if not a.startswith(("--lr=", "--seq-len="))]
    assert option in cli_error([*argv, "--config", config], capsys)
    assert not out.exists()


@pytest.fixture(scope="module")
def shard_folder(paused, cache):
    """The shard folder the module's runs tokenized their corpus into."""
    return next(p.parent for p in Path(cache).rglob("manifest.json"))


def test_out_that_is_a_file_a_shard_folder_or_a_run_without_checkpoints_is_refused(
    paused, shard_folder, corpus, cache, tmp_path, capsys
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert "is a file" in cli_error(train_argv(corpus, cache, a_file), capsys)
    assert a_file.read_text() == "keep me"
    shards_before = tree(shard_folder)
    assert "is a data folder" in cli_error(train_argv(corpus, cache, shard_folder), capsys)
    assert tree(shard_folder) == shards_before
    out = copy_run(paused, tmp_path)
    shutil.rmtree(out / "checkpoints")
    before = tree(out)
    assert "already holds a run" in cli_error(train_argv(corpus, cache, out, scheme="anchor"), capsys)
    assert "--seed" in cli_error(train_argv(corpus, cache, out, resume=True, seed=3), capsys)
    assert tree(out) == before
    assert "notes.txt" in cli_error(["probe", newest(paused), "--data", corpus, "--out", a_file], capsys)
    assert a_file.read_text() == "keep me"


def test_token_ids_outside_the_vocabulary_give_one_line(shard_folder, cache, tmp_path, capsys):
    bad = tmp_path / "shards"
    shutil.copytree(shard_folder, bad)
    tokens = np.memmap(bad / "train-00000.bin", dtype=np.uint16, mode="r+")
    tokens[100] = 65000
    tokens.flush()
    out = tmp_path / "run"
    argv = [a for a in train_argv(bad, cache, out) if not a.startswith("--tokenizer=")]
    line = cli_error(argv, capsys)
    assert "token id 65000" in line and "300 ids" in line
    assert not out.exists()


def test_keep_checkpoints_0_keeps_every_checkpoint(corpus, cache, tmp_path):
    out = tmp_path / "run"
    run(corpus, cache, out, save_every=1, keep_checkpoints=0)
    assert len(ckpt.list_checkpoints(out / "checkpoints")) == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["params", "--seq-len", "-5"], "--seq-len must be at least 1"),
        (["compare", "--seeds=-1"], "--seeds"),
        (["compare", "--seeds", "a,b"], "--seeds"),
        (["compare", "--seeds", "0,0"], "without repeats"),
        (["compare", "--variants", "base,base"], "without repeats"),
        (["compare", "--variants", ","], "non-empty"),
    ],
)
def test_bad_params_and_compare_lists_give_one_line(corpus, tmp_path, capsys, argv, message):
    if argv[0] == "compare":
        argv = [*argv, "--data", corpus, "--tokenizer", "bpe:300", "--out", str(tmp_path / "cmp"), "--max-steps", "2"]
    assert message in cli_error(argv, capsys)
    assert not (tmp_path / "cmp").exists()


def test_eval_context_0_gives_one_line(straight, corpus, capsys):
    assert "context 0" in cli_error(["eval", straight / "model", "--ppl", f"x={corpus}", "--context", "0"], capsys)
