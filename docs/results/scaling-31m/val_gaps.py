"""Mesh - anchor in the training logs' val loss, per seed and step, with the paired 95% t interval;
then every variant's val loss at the last step and its paired differences against anchor and vanilla.

Reads the ``log.jsonl`` of every ``<variant>-seedN`` run given, as a run folder or a folder of runs
(default: the 250M grid here); a run given later replaces one of the same name given earlier, so
``s31-250M-s12``'s mesh seed 2 (stopped at step 5,080) replaces the eighth session's, whose
in-training val loss is not trusted (README). The val loss is the training loop's: 20 batches of
32 x 1024 tokens from the corpus's val split, the same windows at every eval. At the last step the
eager re-score of the same batches (``val_loss_eager``) is used where the run logged one. Mid-run
points are not the end of a shorter budget (the learning rate has not decayed yet); only the last
row is a result.

    python docs/results/scaling-31m/val_gaps.py
"""

import json
import sys
from pathlib import Path

from meshlm.compare.stats import interval

HERE = Path(__file__).parent
DEFAULT = [HERE / "s31-250M" / "runs", HERE / "s31-250M-s12" / "runs" / "mesh-seed2"]
ORDER = ["vanilla", "base", "anchor", "mesh"]


def val_losses(run: Path) -> dict[int, float]:
    """``{step: val_loss}`` of one run's log, the eager re-score where one was logged."""
    rows = (json.loads(line) for line in (run / "log.jsonl").read_text().splitlines())
    return {r["step"]: r.get("val_loss_eager", r["val_loss"]) for r in rows if "val_loss" in r}


def main(paths: list[Path]) -> None:
    folders = [[p] if (p / "log.jsonl").exists() else sorted(p.iterdir()) for p in paths]
    runs = {p.name: val_losses(p) for folder in folders for p in folder if "-seed" in p.name}
    mesh_vs_anchor({name: r for name, r in runs.items() if name.startswith(("mesh-", "anchor-"))})
    print()
    last_step(runs)


def last_step(runs: dict[str, dict[int, float]]) -> None:
    """Each variant's val loss at the end of the schedule, and paired differences on the seeds both finished."""
    end = max(max(r) for r in runs.values())
    done = {name: r[end] for name, r in runs.items() if end in r}
    names = {name.split("-seed")[0] for name in done}
    variants = [v for v in ORDER if v in names] + sorted(names - set(ORDER))
    seeds = sorted({int(name.split("seed")[1]) for name in done})
    print(f"| variant | {' | '.join(f'seed {s}' for s in seeds)} | - anchor | - vanilla |")
    print("| --- " * (3 + len(seeds)) + "|")
    for v in variants:
        cells = [f"{done[f'{v}-seed{s}']:.4f}" if f"{v}-seed{s}" in done else "-" for s in seeds]
        for ref in ("anchor", "vanilla"):
            both = [s for s in seeds if f"{v}-seed{s}" in done and f"{ref}-seed{s}" in done]
            if v == ref or not both:
                cells.append("-")
                continue
            ci = interval([done[f"{v}-seed{s}"] - done[f"{ref}-seed{s}"] for s in both])
            bounds = "n/a" if ci["low"] is None else f"[{ci['low']:+.4f}, {ci['high']:+.4f}]"
            cells.append(f"{ci['mean']:+.4f} {bounds} (seeds {', '.join(map(str, both))})")
        print(f"| {v} | {' | '.join(cells)} |")


def mesh_vs_anchor(runs: dict[str, dict[int, float]]) -> None:
    seeds = sorted({name.split("seed")[1] for name in runs}, key=int)
    pairs = {s: (runs.get(f"mesh-seed{s}"), runs.get(f"anchor-seed{s}")) for s in seeds}
    steps = sorted({st for mesh, anchor in pairs.values() if mesh and anchor for st in mesh.keys() & anchor.keys()})
    last = max(steps)
    shown = [st for st in steps if st % 1000 == 0] + [last]
    print("| step | tokens | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95% CI] |")
    print("| --- " * (3 + len(seeds)) + "|")
    for st in shown:
        gaps = {s: m[st] - a[st] for s, (m, a) in pairs.items() if m and a and st in m and st in a}
        ci = interval(list(gaps.values()))
        bounds = "n/a" if ci["low"] is None else f"[{ci['low']:+.4f}, {ci['high']:+.4f}]"
        cells = " | ".join(f"{gaps[s]:+.4f}" if s in gaps else "-" for s in seeds)
        tokens = st * 32 * 1024 / 1e6
        print(f"| {st} | {tokens:.0f}M | {cells} | {ci['mean']:+.4f} {bounds} (n={ci['n']}) |")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or DEFAULT)
