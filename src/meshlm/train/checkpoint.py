"""Checkpoints: model (safetensors, ``from_pretrained``-loadable), tokenizer, optimizer, RNG, data position.

A checkpoint is written into a temporary sibling folder and renamed into place, so a crash
mid-save leaves the previous checkpoint untouched; only the newest ``keep`` are kept.
``trainer_state.json``, written last, records the sha256 and size of every other file: a
checkpoint is complete when all are present at their size, and intact when their bytes
still match (checked on resume and when eval/probe load it).
Model and optimizer states are saved whole (unsharded), so a run resumes on any world size.
Nothing in a checkpoint is pickled: weights are safetensors, optimizer and RNG states are
safetensors files written by :mod:`meshlm.train.safe_state`, the rest is JSON. Checkpoints of
older meshlm versions (``optimizer.pt``/``rng.pt``, pickles) are refused, never unpickled.
"""

from __future__ import annotations

import errno
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from meshlm.data.cache import publish, sha256_file, temp_sibling
from meshlm.errors import MeshLMError
from meshlm.train.safe_state import load_state, save_state

STATE_FILE = "trainer_state.json"
FILES_KEY = "files"  # in STATE_FILE: {file name: {"sha256", "bytes"}} of every other file of the folder
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


def save_model_dir(
    path: Path, model, tokenizer, state: dict, model_state: dict | None = None, optimizer_state: dict | None = None
) -> None:
    """Write ``model`` (optionally with an explicit full state dict), the tokenizer if any (its
    ``model_max_length`` the model's context length), the optimizer and RNG states when given, and
    last ``state`` with the sha256 of every other file into ``path``."""
    model.save_pretrained(path, state_dict=model_state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save(path, model_max_length=model.config.max_position_embeddings)
    if optimizer_state is not None:
        save_state(optimizer_state, path / OPTIMIZER_FILE)
        save_state(rng_state(), path / RNG_FILE)
    files = {
        f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in sorted(path.iterdir())
        if f.is_file() and f.name != STATE_FILE
    }
    (path / STATE_FILE).write_text(json.dumps({**state, FILES_KEY: files}, indent=2) + "\n")


def save_atomically(final: Path, *args, **kwargs) -> None:
    """:func:`save_model_dir` into ``final`` through :func:`write_atomically`."""
    write_atomically(final, lambda tmp: save_model_dir(tmp, *args, **kwargs))


def write_atomically(final: Path, write: Callable[[Path], object]) -> None:
    """``write(folder)`` into a temporary sibling of ``final``, renamed to ``final`` once complete.

    A crash or a full disk mid-save leaves whatever ``final`` held before untouched (and at
    worst a ``.NAME.tmp-*`` folder that :func:`remove_temp_folders` clears on the next start).
    """
    tmp = temp_sibling(final)
    try:
        write(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (OSError, SafetensorError)):
            disk_full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)
            full = " (the disk is full)" if disk_full else ""
            raise MeshLMError(f"cannot write {final}{full}: {err}; what was saved before is untouched") from None
        raise
    if final.exists():
        shutil.rmtree(final)
    publish(tmp, final)


def remove_temp_folders(folder: Path) -> list[Path]:
    """Delete the ``.NAME.tmp-*`` folders a killed save left in ``folder``; returns them."""
    leftovers = [p for p in folder.glob(".*.tmp-*") if p.is_dir()] if folder.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def save_checkpoint(
    root: Path,
    step: int,
    model,
    tokenizer,
    optimizer_state: dict,
    state: dict,
    keep: int,
    model_state: dict | None = None,
    protect: Path | None = None,
) -> Path:
    """Atomically write checkpoint ``root/step-NNNNNNNN``; prune all but the newest ``keep`` and ``protect``.

    ``keep=0`` keeps every checkpoint.
    """
    final = root / f"step-{step:08d}"
    save_atomically(final, model, tokenizer, state, model_state, optimizer_state)
    for old in list_checkpoints(root)[:-keep] if keep else []:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def step_folders(root: Path) -> list[Path]:
    """Every ``step-N`` folder under ``root``, complete or not, oldest first (temporary folders are never listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first: every recorded file present at its recorded size.

    The sha256 of every file is checked where a checkpoint is loaded (:func:`newest_intact`,
    :func:`check_intact`), not here, so listing and pruning stay cheap at any model size.
    """
    return [p for p in step_folders(root) if damage(p, checksums=False) is None]


def damage(folder: Path, checksums: bool = True) -> str | None:
    """Why ``folder`` is not an intact saved folder (a missing, resized or altered file), or None."""
    pickled = [name for name in PICKLED_FILES if (folder / name).exists()]
    if pickled:
        return (
            f"it holds {'/'.join(pickled)}, pickles of an older meshlm that could run code when loaded, "
            "and meshlm never unpickles a checkpoint"
        )
    try:
        files = json.loads((folder / STATE_FILE).read_text())[FILES_KEY]
        records = [(name, int(r["bytes"]), str(r["sha256"])) for name, r in files.items()]
    except OSError:
        return f"{STATE_FILE} is missing"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{STATE_FILE} is unreadable or records no file checksums"
    for name, size, digest in records:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not the {size} recorded (truncated or overwritten)"
        if checksums and sha256_file(path) != digest:
            return f"{name} does not match its recorded sha256 (damaged on disk)"
    return None


def check_intact(folder: Path) -> None:
    """MeshLMError if ``folder`` records file checksums (meshlm saves do) that its files no longer match.

    Folders whose ``trainer_state.json`` is absent or records no checksums (any other Hugging
    Face model or trainer folder) are not checked.
    """
    path = folder / STATE_FILE
    if not path.exists():
        return
    try:
        recorded = FILES_KEY in json.loads(path.read_text())
    except (OSError, ValueError, TypeError) as err:
        raise MeshLMError(f"{folder} is damaged: {STATE_FILE} is unreadable ({err})") from None
    if recorded and (reason := damage(folder)):
        raise MeshLMError(f"{folder} is damaged: {reason}; use another checkpoint")


def newest_intact(root: Path, message) -> Path | None:
    """The newest checkpoint under ``root`` whose files all match their checksums, None if there is none.

    Damaged newer ones are skipped with a ``message``; if every one is damaged, MeshLMError (one
    line) rather than starting the run over them.
    """
    skipped = []
    for folder in reversed(step_folders(root)):
        reason = damage(folder)
        if reason is None:
            return folder
        skipped.append(f"{folder.name}: {reason}")
        message(f"checkpoint {folder} is not intact ({reason}); trying an older one")
    if skipped:
        raise MeshLMError(f"no intact checkpoint to resume in {root} ({'; '.join(skipped)})")
    return None


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MeshLMError(f"checkpoint {path} is unreadable ({err}); delete it or resume from another") from err


def load_training_state(path: Path, device: torch.device) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer state, RNG state) of checkpoint ``path`` (check it with :func:`damage` first)."""
    state = read_state(path)
    try:
        optimizer = load_state(path / OPTIMIZER_FILE, device)
        rng = load_state(path / RNG_FILE)
    except MeshLMError as err:
        raise MeshLMError(f"checkpoint {path} is incomplete or corrupt: {err}") from None
    return state, optimizer, rng
