"""The sweep's numbers and their presentation: summary over seeds, report.md, the loss-curve figure."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from meshlm.compare.plan import Sweep, log


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarize(sweep: Sweep, planned: dict, evals: dict) -> dict:
    """Per-variant mean +- std over seeds, deltas vs vanilla, and the gap closures vs base."""
    names = list(next(iter(evals.values()))[sweep.seeds[0]].keys())
    vanilla_params = next((planned["variants"][v.name]["non_embedding"] for v in sweep.variants if v.vanilla), None)
    table = {}
    for variant in sweep.variants:
        row = dict(planned["variants"][variant.name])
        if vanilla_params:
            row["non_embedding_vs_vanilla"] = row["non_embedding"] / vanilla_params - 1
        for name in names:
            losses = [evals[variant.name][seed][name]["loss"] for seed in sweep.seeds]
            mean, std = _mean_std(losses)
            row[name] = {"loss_mean": mean, "loss_std": std, "ppl_mean": math.exp(mean), "losses": losses}
        table[variant.name] = row
    gaps = {}
    if "vanilla" in table and "base" in table:
        for name in names:
            base, van = table["base"][name]["loss_mean"], table["vanilla"][name]["loss_mean"]
            for variant in table:
                table[variant][name]["delta_vs_vanilla"] = table[variant][name]["loss_mean"] - van
            if abs(base - van) > 1e-12:
                gaps[name] = {
                    v: (base - table[v][name]["loss_mean"]) / (base - van)
                    for v in table
                    if v not in ("base", "vanilla")
                }
    return {"plan": planned, "eval_sets": names, "seeds": sweep.seeds, "variants": table, "gap_closure": gaps}


def report_markdown(summary: dict, sweep: Sweep) -> str:
    """The Table-1-style report: params, FLOPs, held-out loss/PPL (mean +- std), deltas, gap closure."""
    plan_ = summary["plan"]
    cfg = sweep.train
    lines = [
        "# meshlm comparison",
        "",
        f"Preset `{cfg.preset}`, data `{cfg.data}`, tokenizer `{plan_['tokenizer']}`, seq len {cfg.seq_len}, "
        f"global batch {cfg.batch_tokens:,} tokens, {plan_['steps']} steps "
        f"({plan_['steps'] * cfg.batch_tokens:,} tokens, {plan_['epochs']:.2f} epochs of "
        f"{plan_['train_tokens']:,} training tokens), peak lr {cfg.lr}, seeds {summary['seeds']}; "
        f"every variant saw the same batches in the same order (data order {plan_['data_order']}).",
        "",
    ]
    sets = summary["eval_sets"]
    header = ["layout", "variant", "non-emb params", "vs vanilla", "FLOPs/token", "total FLOPs"]
    for name in sets:
        header += [f"{name} loss", f"{name} PPL", f"{name} Δ vs vanilla"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for variant, row in summary["variants"].items():
        rel = row.get("non_embedding_vs_vanilla")
        cells = [
            row["layout"],
            variant,
            f"{row['non_embedding']:,}",
            "-" if rel is None else f"{100 * rel:+.1f}%",
            f"{row['flops_per_token']:.3e}",
            f"{row['total_flops']:.3e}",
        ]
        for name in sets:
            r = row[name]
            delta = r.get("delta_vs_vanilla")
            cells += [
                f"{r['loss_mean']:.4f} ± {r['loss_std']:.4f}",
                f"{r['ppl_mean']:.2f}",
                "-" if delta is None else f"{delta:+.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["gap_closure"]:
        lines += [
            "",
            "Gap closure `(base - variant) / (base - vanilla)` of mean held-out loss "
            "(1 = reaches vanilla, 0 = no better than base):",
            "",
        ]
        for name, gaps in summary["gap_closure"].items():
            lines.append(f"- {name}: " + ", ".join(f"{v} {g:+.2f}" for v, g in gaps.items()))
    lines += [
        "",
        "Files: `report.json` (every number), `loss_curves.png`, `probe/` (diagnostics side by side), "
        "`runs/<variant>-seed<k>/` (logs, checkpoints, final model).",
    ]
    return "\n".join(lines) + "\n"


def plot_loss_curves(sweep: Sweep, path: Path) -> Path | None:
    """Training loss (mean over seeds) and held-out points of every variant against tokens, one plot."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log("note: matplotlib is not installed, no loss_curves.png (pip install 'meshlm[plot]')")
        return None
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
    for variant in sweep.variants:
        curves = []
        for seed in sweep.seeds:
            log_path = sweep.run_dir(variant, seed) / "log.jsonl"
            curves.append([json.loads(line) for line in log_path.read_text().splitlines() if line.strip()])
        n = min(len(c) for c in curves)
        tokens = [curves[0][i]["tokens"] for i in range(n)]
        loss = [statistics.fmean(c[i]["loss"] for c in curves) for i in range(n)]
        (line,) = ax.plot(tokens, loss, label=variant.name, linewidth=1.2)
        val = [(r["tokens"], r["val_loss"]) for r in curves[0] if "val_loss" in r]
        if val:
            ax.plot(*zip(*val, strict=True), "o", color=line.get_color(), markersize=3)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training loss (lines, mean over seeds) and held-out loss (dots, first seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    lows = [
        min(json.loads(x)["loss"] for x in (sweep.run_dir(v, s) / "log.jsonl").read_text().splitlines())
        for v in sweep.variants
        for s in sweep.seeds
    ]
    ax.set_ylim(min(lows) - 0.1, min(lows) + 2.5)
    fig.tight_layout()
    fig.savefig(path)
    return path


def print_report(out: Path) -> None:
    """Print a finished sweep's report.md and where its files are."""
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} (figures and report.json beside it)")
