"""Summaries behind the 2026-12-02 notes in ../performance.md, from the files in this folder.

    python docs/results/gpu-2026-12-02/analyse.py kernels prof410h200/*.txt
    python docs/results/gpu-2026-12-02/analyse.py clocks smi.csv bench410-clk.log --steps 40

``kernels`` sums a profile table's CUDA kernel rows per step (3 profiled steps) by kind, and lists
the matmul kernels with their calls and mean time, to compare the same cuBLAS kernel across models.
``clocks`` takes the nvidia-smi samples that fall inside each model's timed steps (the ``--steps``
step times before the bench printed that model's row, each line of the log stamped with its epoch
time) and prints the median SM clock and power there.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path

PROFILED_STEPS = 3
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()
    return float(number) * UNITS_MS[unit]


def _kind(name: str) -> str:
    n = name.lower()
    if "nvjet" in n or "cublas" in n or "gemm" in n:
        return "matmul (cuBLAS)"
    if "sdpa" in n or "cudnn" in n or "flash" in n:
        return "attention"
    if "multi_tensor_apply" in n:
        return "AdamW and clip (foreach)"
    if n.startswith("triton"):
        return "Triton (inductor's fused element-wise)"
    return "other"


def kernels(paths: list[str]) -> None:
    """Per-step CUDA time by kernel kind, and the matmul kernels one by one."""
    for path in paths:
        rows, seen = [], set()
        for line in Path(path).read_text().splitlines():
            cols = re.split(r"\s{2,}", line.strip())
            if len(cols) != 11 or cols[0] == "Name" or cols[0].startswith("-"):
                continue
            name, self_cpu, self_cuda, calls = cols[0], _ms(cols[2]), _ms(cols[6]), int(cols[10])
            annotation = "#" in name  # e.g. Optimizer.step#AdamW.step: GPU time its kernels already count
            if self_cpu == 0 and self_cuda > 0 and not annotation and name not in seen:  # a kernel, once
                seen.add(name)
                rows.append((name, self_cuda / PROFILED_STEPS, calls / PROFILED_STEPS))
        by_kind: dict[str, float] = {}
        for name, ms, _ in rows:
            by_kind[_kind(name)] = by_kind.get(_kind(name), 0.0) + ms
        print(f"== {path}: {sum(by_kind.values()):.1f} ms of kernels per step in the table")
        for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:40s} {ms:7.2f} ms")
        for name, ms, calls in rows:
            if _kind(name).startswith("matmul"):
                print(f"  {name[:62]:62s} {ms:6.2f} ms, {calls:5.1f} calls, {ms / calls * 1e3:6.1f} us each")


def clocks(smi_path: str, log_path: str, steps: int) -> None:
    """Median SM clock and power during each model's timed steps."""
    samples = []
    for row in list(csv.reader(Path(smi_path).read_text().splitlines()))[1:]:
        if len(row) > 5 and "MHz" in row[1]:
            when = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            samples.append((when.timestamp(), int(row[1].split()[0]), float(row[3].split()[0]), row[5].strip()))
    for line in Path(log_path).read_text().splitlines():
        stamp, _, text = line.partition(" ")
        if not text.startswith('{"model"'):
            continue
        result = json.loads(text)
        end = float(stamp)
        start = end - steps * result["step_ms"] / 1e3
        inside = [s for s in samples if start <= s[0] <= end]
        mhz, watts = [s[1] for s in inside], [s[2] for s in inside]
        print(
            f"{result['model']}: {result['step_ms']:.1f} ms; {len(inside)} samples; SM clock median "
            f"{statistics.median(mhz):.0f} MHz (min {min(mhz)}, max {max(mhz)}); power median "
            f"{statistics.median(watts):.0f} W; reasons {sorted({s[3] for s in inside})}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("profiles", nargs="+")
    c = sub.add_parser("clocks")
    c.add_argument("smi")
    c.add_argument("log")
    c.add_argument("--steps", type=int, required=True)
    args = parser.parse_args()
    if args.what == "kernels":
        kernels(args.profiles)
    else:
        clocks(args.smi, args.log, args.steps)


if __name__ == "__main__":
    main()
