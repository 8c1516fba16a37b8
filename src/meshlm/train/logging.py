"""Run logs: ``run.json`` (what ran), ``log.jsonl`` (every logged step), TensorBoard events, an optional
Weights & Biases run, a progress bar or, without it, one plain line per logged step."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshlm.errors import MeshLMError

WANDB_ID_FILE = "wandb_run_id"  # in the run folder: the W&B run a --resume continues


class RunLogger:
    """Writes the logs of one run from the main process (other ranks only track the step)."""

    def __init__(
        self, out: Path, is_main: bool, cfg, max_steps: int, window_start: int, run_info: dict, purge_after: int = 0
    ) -> None:
        """``purge_after``: the step a resume starts from; what was logged past it is dropped.

        ``window_start`` is the last logged step before it, where the current loss window began.
        """
        self.out, self.is_main, self.max_steps = out, is_main, max_steps
        self.last_logged_step = window_start
        self.records: list[dict] = []
        self.t0 = time.perf_counter()
        self.start_step = self.shown_step = purge_after
        self.bar = self.tb = self.wandb = None
        self.plain = not cfg.progress
        if not is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")
        self.log_path = out / "log.jsonl"
        self._truncate_after(purge_after)
        if cfg.tensorboard:
            self.tb = _tensorboard_writer(out / "tb", purge_step=purge_after + 1 if purge_after else None)
        if cfg.wandb:
            self.wandb = _wandb_run(cfg, out, run_info)
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=purge_after, desc=out.name, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop log lines past the checkpoint so the log reads as one uninterrupted run.

        The kept records stay in :attr:`records`, so the summary covers the whole run.
        """
        if not self.log_path.exists():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        self.records = [r for r in map(json.loads, lines) if r["step"] <= step]
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, record: dict) -> None:
        self.records.append(record)
        if not self.is_main:
            self.last_logged_step = record["step"]
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = scalars(record)
        if self.tb is not None:
            for name, value in numbers.items():
                self.tb.add_scalar(name, value, record["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])
        if self.bar is not None:
            self.bar.update(record["step"] - self.shown_step)
            self.shown_step = record["step"]
            shown = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
            if "val_loss" in record:
                shown["val"] = f"{record['val_loss']:.4f}"
            self.bar.set_postfix(shown)
        elif self.plain:
            done = record["step"] - self.start_step
            eta = (time.perf_counter() - self.t0) / done * (self.max_steps - record["step"]) if done else None
            print(log_line(record, self.max_steps, eta), file=sys.stderr, flush=True)
        self.last_logged_step = record["step"]

    def message(self, text: str) -> None:
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(text, file=sys.stderr)

    def finish(self, steps: int, tokens_seen: int, resumed_from) -> dict:
        """Close the writers and return the run summary (:meth:`write_summary` saves it, after the model)."""
        evals = [r for r in self.records if "val_loss" in r]
        last = self.records[-1] if self.records else {}
        summary = {
            "steps": steps,
            "tokens_seen": tokens_seen,
            "final_loss": last.get("loss"),
            "final_val_loss": evals[-1]["val_loss"] if evals else None,
            "final_val_ppl": evals[-1]["val_ppl"] if evals else None,
            "wall_seconds": time.perf_counter() - self.t0,
            "resumed_from": str(resumed_from) if resumed_from else None,
        }
        if self.is_main:
            if self.bar is not None:
                self.bar.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
        return summary

    def write_summary(self, summary: dict) -> None:
        """``summary.json``, written last: once it exists, everything the run saved is in place."""
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# log.jsonl keys whose dashboard name is not train/<key>: held-out numbers get a group of their own
SCALAR_NAMES = {"val_loss": "val/loss", "val_ppl": "val/ppl", "val_loss_eager": "val/loss_eager"}


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a log record under their dashboard names (TensorBoard, W&B), ``step`` left out.

    ``val_loss`` -> ``val/loss``, ``val_ppl`` -> ``val/ppl``; a name that carries its own group
    (``router/write/step0/slot1``) keeps it; every other key becomes ``train/<key>``. The wall-clock
    ``time`` is left out too: dashboards stamp every point with their own.
    """
    return {
        SCALAR_NAMES.get(key, key if "/" in key else f"train/{key}"): value
        for key, value in record.items()
        if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def log_line(record: dict, max_steps: int, eta_seconds: float | None) -> str:
    """One plain progress line, ``step N/M | loss | val | tok/s | MFU | ETA`` (val and MFU when known)."""
    parts = [f"step {record['step']}/{max_steps}", f"loss {record['loss']:.4f}"]
    if "val_loss" in record:
        parts.append(f"val {record['val_loss']:.4f}")
    parts.append(f"tok/s {record['tokens_per_s']:,.0f}")
    if record.get("mfu") is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    if eta_seconds is not None:
        parts.append(f"ETA {_duration(eta_seconds)}")
    return " | ".join(parts)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars ("Writing model shards", "Loading weights") inside the block.

    meshlm saves and loads small models many times per run; those bars would drown its own progress.
    """
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _tensorboard_writer(path: Path, purge_step: int | None = None):
    """A TensorBoard SummaryWriter, or None (with a note) when tensorboard is not installed.

    ``purge_step`` (on resume) hides the events an earlier, killed process logged from that step
    on, so TensorBoard shows each step once.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, no event files (pip install 'meshlm[tensorboard]')", file=sys.stderr)
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


def import_wandb():
    """The ``wandb`` module (imported only for ``--wandb``); MeshLMError with the pip command if absent."""
    try:
        import wandb
    except ImportError:
        raise MeshLMError(
            "--wandb needs the wandb package: pip install wandb (or pip install 'meshlm[wandb]')"
        ) from None
    return wandb


def _wandb_run(cfg, out: Path, run_info: dict):
    """A W&B run in project ``cfg.wandb`` with ``run.json``'s content as its config.

    The run's files go to ``OUT/wandb`` unless WANDB_DIR says otherwise; WANDB_MODE (offline,
    disabled) and the other WANDB_* variables are left to wandb. A ``--resume`` continues the W&B
    run recorded in ``OUT/wandb_run_id``; wandb ignores the steps it already holds (re-run
    bitwise-equal after the checkpoint), so each step shows once.
    """
    wandb = import_wandb()
    id_file = out / WANDB_ID_FILE
    resumed = {"id": id_file.read_text().strip(), "resume": "allow"} if cfg.resume and id_file.is_file() else {}
    run = wandb.init(
        project=cfg.wandb,
        name=cfg.wandb_run_name or out.name,
        dir=os.environ.get("WANDB_DIR", str(out)),
        config=run_info,
        **resumed,
    )
    id_file.write_text(f"{run.id}\n")
    return run
