"""Checkpoints: model (safetensors, ``from_pretrained``-loadable), tokenizer, optimizer, RNG, data position.

A checkpoint is written into a temporary sibling folder and renamed into place, so a crash
mid-save leaves the previous checkpoint untouched; only the newest ``keep`` are kept.
Model and optimizer states are saved whole (unsharded), so a run resumes on any world size.
Nothing in a checkpoint is pickled: weights are safetensors, optimizer and RNG states are
safetensors files written by :mod:`meshlm.train.safe_state`, the rest is JSON. Checkpoints of
older meshlm versions (``optimizer.pt``/``rng.pt``, pickles) are refused, never unpickled.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from meshlm.data.cache import publish, temp_sibling
from meshlm.errors import MeshLMError
from meshlm.train.safe_state import load_state, save_state

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
PICKLED_FILES = ("optimizer.pt", "rng.pt")
_STEP_DIR = re.compile(r"step-(\d+)")


def rng_state() -> dict:
    """Every RNG a run draws from, as tensors and plain values (numpy's key array as a list of ints)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, keys.tolist(), pos, has_gauss, cached)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(path: Path, model, tokenizer, state: dict, model_state: dict | None = None) -> None:
    """Write ``model`` (optionally with an explicit full state dict), the tokenizer and ``state`` into ``path``."""
    model.save_pretrained(path, state_dict=model_state, safe_serialization=True)
    tokenizer.save(path)
    (path / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def save_checkpoint(
    root: Path,
    step: int,
    model,
    tokenizer,
    optimizer_state: dict,
    state: dict,
    keep: int,
    model_state: dict | None = None,
) -> Path:
    """Atomically write checkpoint ``root/step-NNNNNNNN`` and prune all but the newest ``keep``."""
    final = root / f"step-{step:08d}"
    tmp = temp_sibling(final)
    try:
        save_model_dir(tmp, model, tokenizer, state, model_state)
        save_state(optimizer_state, tmp / OPTIMIZER_FILE)
        save_state(rng_state(), tmp / RNG_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    publish(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are never listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).exists()]


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MeshLMError(f"checkpoint {path} is unreadable ({err}); delete it or resume from another") from err


def load_training_state(path: Path, device: torch.device) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer state, RNG state) of checkpoint ``path``."""
    state = read_state(path)
    pickled = [name for name in PICKLED_FILES if (path / name).exists()]
    if pickled:
        raise MeshLMError(
            f"checkpoint {path} holds {'/'.join(pickled)}, pickles of an older meshlm that could run code when "
            "loaded; meshlm no longer loads them: start a new run (another --out) instead of --resume"
        )
    try:
        optimizer = load_state(path / OPTIMIZER_FILE, device)
        rng = load_state(path / RNG_FILE)
    except MeshLMError as err:
        raise MeshLMError(f"checkpoint {path} is incomplete or corrupt: {err}") from None
    return state, optimizer, rng
