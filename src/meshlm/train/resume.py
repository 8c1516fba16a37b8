"""What a resumed run must match, and which folders a run may write into.

A resume continues an interrupted run bit for bit only when the model, the batch order and the
schedule are the ones the checkpoint was written with. The batch order is fixed by the
sampler's state (seed, seq_len, global batch, windows of the data) and the schedule by the
number of steps, so a checkpoint records both (``settings``) and a resume that asks for other
values is refused with one line naming the flag. Options that only scale the update (``lr``,
warm-up, final lr, weight decay, clipping) may change, the way to recover from a divergence;
the run then says so, since it no longer matches an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

from meshlm.config import MeshLMConfig
from meshlm.data.sources import is_shard_dir
from meshlm.errors import MeshLMError
from meshlm.train import checkpoint as ckpt

ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "layout",
    "scheme",
    "buffer_size",
    "mesh_transition_input",
    "rotary_pct",
    "use_parallel_residual",
    "scale_embeddings",
)
# saved setting -> the flag that changes it
SETTING_FLAGS = {
    "seed": "--seed",
    "seq_len": "--seq-len",
    "global_batch": "--batch-tokens",
    "num_windows": "--data (its train tokens)",
    "max_steps": "--max-steps/--max-tokens",
}
UPDATE_OPTIONS = (
    "lr",
    "warmup_frac",
    "final_lr_frac",
    "weight_decay",
    "scheme_weight_decay",
    "scheme_lr_scale",
    "grad_clip",
)


def architecture(config: MeshLMConfig) -> dict:
    """The config fields that decide the weights' shapes and meaning (what a resume must match)."""
    return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}


def settings(sampler, max_steps: int) -> dict:
    """The batch order and schedule of a run, as its checkpoints record them."""
    return {**sampler.state_dict(), "max_steps": max_steps}


def check_settings(saved: dict, current: dict, where: Path) -> None:
    """MeshLMError naming the first setting ``current`` changes from the ``saved`` one."""
    for key, flag in SETTING_FLAGS.items():
        if saved.get(key) != current[key]:
            raise MeshLMError(
                f"cannot resume {where}: it was written with {key}={saved.get(key)}, this run asks for "
                f"{current[key]}; another {flag} would not continue the same data order and schedule "
                "(give the same value, or another --out for a new run)"
            )


def check_model(saved: MeshLMConfig, current: MeshLMConfig, where: Path) -> None:
    if architecture(saved) != architecture(current):
        raise MeshLMError(
            f"cannot resume {where}: it holds a different model ({saved.layout}/{saved.scheme}, "
            f"d={saved.hidden_size}) than this run asks for ({current.layout}/{current.scheme}, "
            f"d={current.hidden_size})"
        )


SCHEME_GROUP_FLAGS = {"scheme_weight_decay": "--scheme-weight-decay", "scheme_lr_scale": "--scheme-lr-scale"}


def check_parameter_groups(saved_train: dict, cfg, path: Path) -> None:
    """Refuse giving or dropping the scheme's own optimizer group on resume: it adds or removes a group.

    The group exists when ``--scheme-weight-decay`` or ``--scheme-lr-scale`` is set."""
    saved = {flag: saved_train.get(key) for key, flag in SCHEME_GROUP_FLAGS.items()}
    asked = any(getattr(cfg, key) is not None for key in SCHEME_GROUP_FLAGS)
    if any(v is not None for v in saved.values()) != asked:
        given = [f"{flag} {v}" for flag, v in saved.items() if v is not None]
        was = "with " + " and ".join(given) if given else "without " + " or ".join(SCHEME_GROUP_FLAGS.values())
        raise MeshLMError(
            f"checkpoint {path} was trained {was}; turning them on or off changes the optimizer's parameter "
            "groups, so the run cannot resume (change their values instead, or start a new run)"
        )


def changed_update_options(saved_train: dict, cfg) -> list[str]:
    """``name old -> new`` for every update option the resumed run changes (allowed, but not exact)."""
    return [
        f"{name} {saved_train[name]} -> {getattr(cfg, name)}"
        for name in UPDATE_OPTIONS
        if name in saved_train and saved_train[name] != getattr(cfg, name)
    ]


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_summary(out: Path, current: dict) -> dict | None:
    """The summary of the run in ``out`` if it already finished with these settings (intact ``model/``)."""
    state = _read_json(out / "model" / ckpt.STATE_FILE)
    if state is None or state.get("run", {}).get("settings") != current or ckpt.damage(out / "model"):
        return None
    return _read_json(out / "summary.json") or {k: v for k, v in state.items() if k not in ("run", ckpt.FILES_KEY)}


def check_out_folder(out: Path, data: str, resume: bool, current: dict) -> None:
    """Refuse an ``--out`` that is a file, a shard folder, the data, or another run's folder.

    ``out`` holding a run (``run.json``) is refused without ``--resume``; with it and no
    checkpoint (killed before the first save) the run starts over only if its settings match.
    """
    if out.exists() and not out.is_dir():
        raise MeshLMError(f"--out {out} is a file; give a folder for the run")
    if out.resolve() == Path(data).expanduser().resolve() or is_shard_dir(out):
        raise MeshLMError(f"--out {out} is a data folder; give a folder of its own for the run")
    has_checkpoints = bool(ckpt.step_folders(out / "checkpoints"))
    has_run = (out / "run.json").exists() or has_checkpoints
    if has_run and not resume:
        raise MeshLMError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if has_run and not has_checkpoints:
        saved = (_read_json(out / "run.json") or {}).get("settings")
        if saved is not None and saved != current:
            check_settings(saved, current, out)
