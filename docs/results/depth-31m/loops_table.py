"""Held-out and prose loss by test-time loop count, mean over seeds, from each run's eval_loops.json.

Run from this folder: python loops_table.py (prints the tables of README.md's test-time-loops section).
"""

import json
from pathlib import Path

runs = sorted(Path("schemes/runs").glob("*/eval_loops.json"))
by_variant: dict[str, list[dict]] = {}
for path in runs:
    by_variant.setdefault(path.parent.name.rsplit("-seed", 1)[0], []).append(json.loads(path.read_text()))
for eval_set in ("held-out", "prose"):
    counts = list(next(iter(by_variant.values()))[0])
    print(f"\n{eval_set}, mean over seeds (n = seeds); k=2 is the trained count\n")
    print("| variant | n | " + " | ".join(f"k={k}" for k in counts) + " | k=8 - k=2 |")
    print("| --- | --- | " + " | ".join("---" for _ in counts) + " | --- |")
    for variant, seeds in by_variant.items():
        mean = {k: sum(s[k][eval_set]["loss"] for s in seeds) / len(seeds) for k in counts}
        cells = " | ".join(f"{mean[k]:.4f}" for k in counts)
        print(f"| {variant} | {len(seeds)} | {cells} | {mean['8'] - mean['2']:+.4f} |")
