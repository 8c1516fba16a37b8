"""The sweep's numbers and their presentation: summary over seeds, report.md, the loss-curve figure."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from meshlm.compare.plan import Sweep, log
from meshlm.compare.stats import LEVEL, fmt_pm, interval, sample_std
from meshlm.config import parse_layout
from meshlm.errors import read_jsonl

# the references of a report.json written before sweeps chose theirs (``Sweep.references``)
REFERENCES = ("anchor", "vanilla")
# share of training left out of the loss plot's y-range (the initial fall from ln(vocab))
LOSS_RANGE_SKIP = 0.1


def summarize(
    sweep: Sweep, planned: dict, evals: dict, loops: dict | None = None, missing: list[dict] | None = None
) -> dict:
    """Per-variant mean and sample std over seeds, paired differences, deltas vs vanilla, gap closures vs base.

    ``evals`` is ``{variant: {seed: {set: result}}}``; a variant may lack seeds of the sweep (a report of
    what finished, ``missing`` saying what and why) or be absent: each variant's numbers are over the
    seeds it has (``seeds`` in its row) and each paired difference over the seeds both have.
    ``loops`` (``{variant: {seed: {k: {set: result}}}}``, from ``eval_loops``) adds ``loops_curve``:
    per variant, per eval set, the mean and sample std of the loss at each loop count.

    ``paired[ref]`` holds, per seed, ``loss(variant) - loss(ref)`` (same seed = same data order, so the
    pairing removes the data-order noise both share) with its mean and t interval (:func:`interval`).
    ``base_minus_vanilla`` holds that interval of base against vanilla, which the gap closure is judged by.
    """
    present = [v for v in sweep.variants if evals.get(v.name)]
    names = list(next(iter(evals[present[0].name].values())).keys())
    vanilla_params = next((planned["variants"][v.name]["non_embedding"] for v in sweep.variants if v.vanilla), None)
    table = {}
    for variant in present:
        row = dict(planned["variants"][variant.name])
        if vanilla_params:
            row["non_embedding_vs_vanilla"] = row["non_embedding"] / vanilla_params - 1
        row["seeds"] = [s for s in sweep.seeds if s in evals[variant.name]]
        for name in names:
            losses = [evals[variant.name][seed][name]["loss"] for seed in row["seeds"]]
            mean = statistics.fmean(losses)
            row[name] = {
                "loss_mean": mean,
                "loss_std": sample_std(losses),
                "ppl_mean": math.exp(mean),
                "losses": losses,
            }
        table[variant.name] = row
    references = [ref for ref in sweep.references if ref in table]
    for variant in table:
        for name in names:
            pairs = {ref: _paired(table, variant, ref, name) for ref in references if ref != variant}
            table[variant][name]["paired"] = {ref: p for ref, p in pairs.items() if p is not None}
    gaps, gap_noise, base_gap = {}, {}, {}
    if "vanilla" in table and "base" in table:
        for name in names:
            base, van = table["base"][name]["loss_mean"], table["vanilla"][name]["loss_mean"]
            for variant in table:
                table[variant][name]["delta_vs_vanilla"] = table[variant][name]["loss_mean"] - van
            if (gap := _paired(table, "base", "vanilla", name)) is None:
                continue  # no seed has both: nothing to judge a gap closure by
            base_gap[name] = gap
            gap_noise[name] = _gap_noise(gap)
            if gap_noise[name] != "within noise" and abs(base - van) > 1e-12:
                gaps[name] = {
                    v: (base - table[v][name]["loss_mean"]) / (base - van)
                    for v in table
                    if v not in ("base", "vanilla")
                }
    runs = {
        v.name: {str(s): str(sweep.run_dir(v, s).relative_to(sweep.out)) for s in table[v.name]["seeds"]}
        for v in present
    }
    train = {k: v for k, v in dataclasses.asdict(sweep.train).items() if k != "extra"}
    return {
        "plan": planned,
        "train": train,
        "eval_sets": names,
        "seeds": sweep.seeds,
        "runs": runs,
        "missing": list(missing or []),
        "references": references,
        "variants": table,
        "gap_closure": gaps,
        "gap_noise": gap_noise,
        "base_minus_vanilla": base_gap,
        "loops_curve": _loops_curve(names, loops or {}),
    }


def _paired(table: dict, variant: str, ref: str, name: str) -> dict | None:
    """``loss(variant) - loss(ref)`` on eval set ``name`` per seed both have, with its mean and t interval
    (``seeds`` says which); ``None`` when they share no seed."""
    mine, theirs = (dict(zip(table[v]["seeds"], table[v][name]["losses"], strict=True)) for v in (variant, ref))
    seeds = [s for s in mine if s in theirs]
    if not seeds:
        return None
    return {**interval([mine[s] - theirs[s] for s in seeds]), "seeds": seeds}


def _gap_noise(base_minus_vanilla: dict) -> str:
    """Whether the base-vanilla gap a gap closure divides by is real: "significant", "within noise"
    (its paired interval holds 0, so the ratio would be noise over noise) or "one seed" (unknown)."""
    if base_minus_vanilla["low"] is None:
        return "one seed"
    return "within noise" if base_minus_vanilla["low"] <= 0 <= base_minus_vanilla["high"] else "significant"


def _loops_curve(names: list[str], loops: dict) -> dict:
    """``{variant: {set: {k: {loss_mean, loss_std, losses}}}}`` over the variants evaluated at several loop counts."""
    curve = {}
    for variant, by_seed in loops.items():
        if not all(by_seed.values()):
            continue  # a run without a shared core has no loop count to vary
        counts = list(next(iter(by_seed.values())))
        curve[variant] = {
            name: {
                k: {
                    "loss_mean": statistics.fmean(losses := [by_seed[s][k][name]["loss"] for s in by_seed]),
                    "loss_std": sample_std(losses),
                    "losses": losses,
                }
                for k in counts
            }
            for name in names
        }
    return curve


def loops_markdown(summary: dict) -> list[str]:
    """Report lines: held-out loss (mean ± std over seeds) per variant and evaluation loop count."""
    curve = summary.get("loops_curve") or {}
    if not curve:
        return []
    lines = []
    for name in summary["eval_sets"]:
        counts = list(next(iter(curve.values()))[name])
        lines += ["", f"{name} loss by loop count at evaluation (trained loops in the second column):", ""]
        header = ["variant", "trained loops", *(f"k={k}" for k in counts)]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for variant, by_set in curve.items():
            trained = summary["plan"]["variants"][variant]["train_loops"]
            if trained == "fixed":
                trained = f"fixed ({parse_layout(summary['plan']['variants'][variant]['layout']).loops})"
            cells = [fmt_pm(by_set[name][k]["loss_mean"], by_set[name][k]["loss_std"]) for k in counts]
            lines.append("| " + " | ".join([variant, trained, *cells]) + " |")
    return lines


def _paired_cell(row: dict, ref: str) -> str:
    paired = row["paired"].get(ref)
    return "-" if paired is None else fmt_pm(paired["mean"], paired["half_width"], signed=True)


def _seeds_phrase(summary: dict) -> str:
    """ "the 2 seed(s)", or, when runs are missing, that each variant's numbers are over its own seeds."""
    if summary.get("missing"):
        return "each variant's own seeds (last column); a paired difference is over the seeds both have"
    return f"the {len(summary['seeds'])} seed(s)"


def report_markdown(summary: dict, sweep: Sweep) -> str:
    """The Table-1-style report: params, FLOPs, held-out loss/PPL (mean ± std), paired deltas, gap closure."""
    plan_ = summary["plan"]
    cfg = sweep.train
    references = summary["references"]
    lines = [
        "# meshlm comparison",
        "",
        f"Preset `{cfg.preset}`, data `{cfg.data}`, tokenizer `{plan_['tokenizer']}`, seq len {cfg.seq_len}, "
        f"global batch {cfg.batch_tokens:,} tokens, {plan_['steps']} steps "
        f"({plan_['steps'] * cfg.batch_tokens:,} tokens, {plan_['epochs']:.2f} epochs of "
        f"{plan_['train_tokens']:,} training tokens), peak lr {cfg.lr}, seeds {summary['seeds']}; "
        f"every variant saw the same batches in the same order (data order {plan_['data_order']}).",
        "",
        f"Loss: mean ± sample std over {_seeds_phrase(summary)}. Δ vs "
        f"{' / '.join(references) or 'a reference'}: mean over seeds "
        "of the paired difference `loss(variant) - loss(reference)` on the same seed (negative = variant better) "
        f"± the half-width of its {LEVEL:.0%} t interval (n - 1 degrees of freedom); n/a with one seed.",
        "",
    ]
    missing = summary.get("missing") or []
    if missing:
        left_out = ", ".join(f"{m['variant']} seed {m['seed']} ({m['reason']})" for m in missing)
        lines += [f"Not in this report (`--report-only` trains nothing): {left_out}.", ""]
    sets = summary["eval_sets"]
    header = ["layout", "variant", "train loops", "non-emb params", "vs vanilla", "FLOPs/token", "total FLOPs"]
    for name in sets:
        header += [f"{name} loss", f"{name} PPL", *(f"{name} Δ vs {ref}" for ref in references)]
    header += ["seeds"] if missing else []
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for variant, row in summary["variants"].items():
        rel = row.get("non_embedding_vs_vanilla")
        cells = [
            row["layout"],
            variant,
            row["train_loops"] + ("" if row["backprop_loops"] is None else f", backprop {row['backprop_loops']}"),
            f"{row['non_embedding']:,}",
            "-" if rel is None else f"{100 * rel:+.1f}%",
            f"{row['flops_per_token']:.3e}",
            f"{row['total_flops']:.3e}",
        ]
        for name in sets:
            r = row[name]
            cells += [
                fmt_pm(r["loss_mean"], r["loss_std"]),
                f"{r['ppl_mean']:.2f}",
                *(_paired_cell(r, ref) for ref in references),
            ]
        cells += [", ".join(map(str, row["seeds"]))] if missing else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences per seed (seeds {summary['seeds']}), with {LEVEL:.0%} intervals:", ""]
    if not references:
        lines.append(f"- none: no reference ({', '.join(sweep.references)}) is a variant of this sweep (--references)")
    for name in sets:
        for variant, row in summary["variants"].items():
            for ref, p in row[name]["paired"].items():
                bounds = "n/a" if p["low"] is None else f"[{p['low']:+.4f}, {p['high']:+.4f}]"
                per_seed = ", ".join(f"seed {s} {d:+.4f}" for s, d in zip(p["seeds"], p["values"], strict=True))
                lines.append(f"- {name}: {variant} - {ref} = {p['mean']:+.4f}, CI {bounds} ({per_seed})")
    lines += loops_markdown(summary)
    if summary.get("gap_noise") and set(summary["variants"]) - {"base", "vanilla"}:
        lines += [
            "",
            "Gap closure `(base - variant) / (base - vanilla)` of mean held-out loss "
            "(1 = reaches vanilla, 0 = no better than base), where the base-vanilla gap is larger than "
            f"the noise (its paired {LEVEL:.0%} interval excludes 0)"
            + (", each mean over its variant's own seeds (so seed noise is not paired out):" if missing else ":"),
            "",
        ]
        for name, noise in summary["gap_noise"].items():
            gap = summary["base_minus_vanilla"][name]
            if noise == "within noise":
                bounds = f"[{gap['low']:+.4f}, {gap['high']:+.4f}]"
                lines.append(f"- {name}: none, base and vanilla are within noise (base - vanilla {bounds})")
            elif name in summary["gap_closure"]:
                gaps = ", ".join(f"{v} {g:+.2f}" for v, g in summary["gap_closure"][name].items())
                caveat = f" (one seed: the noise of base - vanilla = {gap['mean']:+.4f} is unknown)"
                lines.append(f"- {name}: {gaps}" + (caveat if noise == "one seed" else ""))
    figures = summary.get("figures", [])
    files = ["`report.json` (every number)"]
    files += ["`loss_curves.png`"] if "loss_curves.png" in figures else []
    files += ["`probe/` (diagnostics side by side)"] if any(f.startswith("probe/") for f in figures) else []
    files += ["`runs/<variant>-seed<k>/` (logs, checkpoints, final model, `eval.json`)"]
    return "\n".join([*lines, "", "Files: " + ", ".join(files) + "."]) + "\n"


def loss_range(points: list[tuple[float, float]], skip_frac: float = LOSS_RANGE_SKIP) -> tuple[float, float]:
    """y-range of the loss plot: every (tokens, loss) point past the first ``skip_frac`` of training, 5% margins.

    The first steps fall from ln(vocab) and would squash the differences between variants, which
    are what the plot is for.
    """
    last = max(t for t, _ in points)
    kept = [loss for t, loss in points if t > skip_frac * last] or [loss for _, loss in points]
    low, high = min(kept), max(kept)
    margin = 0.05 * (high - low) or 0.05
    return low - margin, high + margin


def plot_loss_curves(sweep: Sweep, path: Path, seeds: dict[str, list[int]]) -> Path | None:
    """Training loss (mean over seeds) and held-out points of every variant against tokens, one plot.

    ``seeds`` (variant name -> seeds) are the runs the report covers.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        log("note: matplotlib is not installed, no loss_curves.png (pip install 'meshlm[plot]')")
        return None
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
    points, handles = [], []
    for variant in sweep.variants:
        curves = [read_jsonl(sweep.run_dir(variant, seed) / "log.jsonl") for seed in seeds.get(variant.name, [])]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        tokens = [curves[0][i]["tokens"] for i in range(n)]
        loss = [statistics.fmean(c[i]["loss"] for c in curves) for i in range(n)]
        (line,) = ax.plot(tokens, loss, label=variant.name, linewidth=1.2)
        handles.append(line)
        points += zip(tokens, loss, strict=True)
        val = [(r["tokens"], r["val_loss"]) for r in curves[0] if "val_loss" in r]
        if val:
            ax.plot(*zip(*val, strict=True), "o", color=line.get_color(), markersize=4)
            points += val
    held_out = Line2D([], [], color="0.4", marker="o", linestyle="", markersize=4)
    ax.legend([*handles, held_out], [*(h.get_label() for h in handles), "held-out loss (first seed)"])
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    counts = {len(s) for s in seeds.values() if s}
    averaged = "one seed" if counts == {1} else f"mean over {'/'.join(map(str, sorted(counts)))} seeds"
    ax.set_title(
        f"Training loss (lines, {averaged}) and held-out loss (dots)\n"
        f"y-axis fitted to the last {1 - LOSS_RANGE_SKIP:.0%} of training",
        fontsize=11,
    )
    ax.grid(alpha=0.3)
    ax.set_ylim(*loss_range(points))
    fig.tight_layout()
    fig.savefig(path)
    return path


def print_report(out: Path) -> None:
    """Print a finished sweep's report.md and where its files are."""
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} (figures and report.json beside it)")
