"""Run logs: ``run.json`` (what ran), ``log.jsonl`` (every logged step), TensorBoard events, a progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class RunLogger:
    """Writes the logs of one run from the main process (other ranks only track the step)."""

    def __init__(self, out: Path, is_main: bool, cfg, max_steps: int, start_step: int, run_info: dict) -> None:
        self.out, self.is_main, self.max_steps = out, is_main, max_steps
        self.last_logged_step = start_step
        self.records: list[dict] = []
        self.t0 = time.perf_counter()
        self.start_step = start_step
        self.bar = self.tb = None
        if not is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")
        self.log_path = out / "log.jsonl"
        self._truncate_after(start_step)
        if cfg.tensorboard:
            self.tb = _tensorboard_writer(out / "tb")
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop log lines past the checkpoint so the log reads as one uninterrupted run."""
        if not self.log_path.exists():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
        self.log_path.write_text("".join(ln + "\n" for ln in kept))

    def log(self, record: dict) -> None:
        self.records.append(record)
        if not self.is_main:
            self.last_logged_step = record["step"]
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    # names that carry their own group ("router/write/step0/slot1") keep it
                    self.tb.add_scalar(key if "/" in key else f"train/{key}", value, record["step"])
            self.tb.flush()
        if self.bar is not None:
            self.bar.update(record["step"] - self.last_logged_step)
            shown = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
            if "val_loss" in record:
                shown["val"] = f"{record['val_loss']:.4f}"
            self.bar.set_postfix(shown)
        self.last_logged_step = record["step"]

    def message(self, text: str) -> None:
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(text, file=sys.stderr)

    def finish(self, tokens_seen: int, resumed_from) -> dict:
        """Close the writers and return (and save) the run summary."""
        evals = [r for r in self.records if "val_loss" in r]
        last = self.records[-1] if self.records else {}
        summary = {
            "steps": last.get("step", self.start_step),
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
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _tensorboard_writer(path: Path):
    """A TensorBoard SummaryWriter, or None (with a note) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, no event files (pip install 'meshlm[tensorboard]')", file=sys.stderr)
        return None
    return SummaryWriter(str(path))
