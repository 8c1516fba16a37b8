"""``meshlm scaling``: several finished sweeps of one recipe at different token budgets, merged into one curve.

Every sweep folder must hold a ``report.json`` written by ``meshlm compare`` (all its runs finished,
or ``--report-only`` reported those that did) of one recipe: sequence length, tokenizer and model
width; only the budget may differ.
The curve covers the variants that every sweep trained (a larger budget may train fewer, e.g.
only mesh and anchor); a variant name must mean the same layout and scheme in every sweep. Per
budget: held-out loss per variant (mean and sample std over that sweep's seeds), and the paired
differences ``variant - reference`` per seed with their t intervals (:mod:`meshlm.compare.stats`),
for the references all the sweeps share (``anchor`` and ``vanilla`` unless ``--references`` chose).
Written as ``scaling.json``, ``scaling.md`` and ``scaling.png`` (with matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path

from meshlm.compare.plan import log
from meshlm.compare.report import REFERENCES
from meshlm.compare.stats import LEVEL, fmt_pm
from meshlm.errors import MeshLMError, read_json

# what must agree between the sweeps of one curve (besides the variants' layouts and schemes)
RECIPE_KEYS = ("preset", "hidden_size", "num_attention_heads", "intermediate_size", "seq_len")


def read_sweep(folder: Path) -> dict:
    """The report.json of a finished sweep, or one clear error."""
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise MeshLMError(f"{folder} is not a finished sweep (no report.json); run `meshlm compare` to finish it")
    report = read_json(path)
    if not isinstance(report, dict) or not {"plan", "variants", "seeds", "eval_sets"} <= set(report):
        raise MeshLMError(f"{path} is not a meshlm compare report")
    if "train" not in report:
        raise MeshLMError(
            f"{path} predates the scaling merge (no training options in it); run the same `meshlm compare` "
            "command again to rewrite it (finished runs are not retrained)"
        )
    report["folder"] = str(folder)
    return report


def _recipe(report: dict) -> dict:
    return {"tokenizer": report["plan"]["tokenizer"], **{key: report["train"].get(key) for key in RECIPE_KEYS}}


def _variants(report: dict) -> dict[str, tuple[str, str]]:
    return {name: (row["layout"], row["scheme"]) for name, row in report["variants"].items()}


def _check_same_recipe(reports: list[dict]) -> dict:
    """The shared recipe with the variants every sweep trained; one error line for anything else."""
    first = _recipe(reports[0])
    variants = _variants(reports[0])
    for report in reports[1:]:
        other = _recipe(report)
        for key, value in first.items():
            if other[key] != value:
                raise MeshLMError(
                    f"sweeps {reports[0]['folder']} and {report['folder']} differ in {key} ({value} vs {other[key]}); "
                    "a scaling curve merges sweeps of one recipe at different budgets"
                )
        theirs = _variants(report)
        for name in variants.keys() & theirs.keys():
            if variants[name] != theirs[name]:
                raise MeshLMError(
                    f"sweeps {reports[0]['folder']} and {report['folder']} differ in variants ({name} is "
                    f"{'/'.join(variants[name])} vs {'/'.join(theirs[name])})"
                )
        variants = {name: value for name, value in variants.items() if name in theirs}
    if not variants:
        raise MeshLMError("the sweeps have no variant in common; a scaling curve needs one variant in every sweep")
    dropped = sorted({name for r in reports for name in r["variants"]} - variants.keys())
    if dropped:
        log(f"note: {', '.join(dropped)} left out of the curve: not trained at every budget")
    tokens = [r["plan"]["steps"] * r["train"]["batch_tokens"] for r in reports]
    if len(set(tokens)) != len(tokens):
        raise MeshLMError(
            f"two of the sweeps train on the same number of tokens ({sorted(tokens)}); give one per budget"
        )
    return {"variants": variants, **first}


def _seeds_of(report: dict, variant: str) -> list[int]:
    """The seeds a report has of ``variant``: its own (``--report-only``) or, before those, the sweep's."""
    return report["variants"][variant].get("seeds", report["seeds"])


def _budget(report: dict, eval_sets: list[str], variants: dict, references: list[str]) -> dict:
    """One budget's row: loss per variant and the paired differences against each reference.

    Both come from the sweep's report (``meshlm compare`` computed them from every run's eval.json);
    only the variants of the curve are kept.
    """
    tokens = report["plan"]["steps"] * report["train"]["batch_tokens"]
    # a report of what finished (--report-only) may miss seeds of some variants: count those the curve has
    has = {s for v in variants for s in _seeds_of(report, v)}
    seeds = [s for s in report["seeds"] if s in has]
    row = {"tokens": tokens, "steps": report["plan"]["steps"], "seeds": seeds, "sweep": report["folder"]}
    for name in eval_sets:
        rows = {v: r[name] for v, r in report["variants"].items() if v in variants}
        row[name] = {
            "loss": {
                v: {
                    "mean": r["loss_mean"],
                    "std": r["loss_std"],
                    "n": len(r["losses"]),
                    "losses": r["losses"],
                    "seeds": _seeds_of(report, v),
                }
                for v, r in rows.items()
            },
            "paired": {
                ref: {v: r["paired"][ref] for v, r in rows.items() if ref in r["paired"]}
                for ref in references
                if ref in rows
            },
        }
    return row


def merge(folders: list[Path]) -> dict:
    """The scaling summary of sweep ``folders`` (any order; sorted by training tokens)."""
    if len(folders) < 2:
        raise MeshLMError("give at least two sweep folders (one per token budget) to merge into a scaling curve")
    reports = [read_sweep(f) for f in folders]
    recipe = _check_same_recipe(reports)
    eval_sets = [s for s in reports[0]["eval_sets"] if all(s in r["eval_sets"] for r in reports)]
    chosen = [r.get("references", list(REFERENCES)) for r in reports]
    references = [ref for ref in chosen[0] if all(ref in c for c in chosen)]
    budgets = sorted(
        (_budget(r, eval_sets, recipe["variants"], references) for r in reports), key=lambda b: b["tokens"]
    )
    return {"recipe": recipe, "eval_sets": eval_sets, "level": LEVEL, "budgets": budgets}


def scaling_markdown(summary: dict) -> str:
    """Two tables per eval set: loss vs tokens, and the paired differences vs tokens."""
    variants = list(summary["recipe"]["variants"])
    layouts = ", ".join(f"{v} `{layout}`/{scheme}" for v, (layout, scheme) in summary["recipe"]["variants"].items())
    lines = [
        "# meshlm scaling",
        "",
        f"Variants {layouts}; seq len {summary['recipe']['seq_len']}, tokenizer `{summary['recipe']['tokenizer']}`. "
        "Loss: mean ± sample std over each budget's seeds (a variant's own, where named). "
        "Differences: mean over seeds of the paired `loss(variant) - loss(reference)` on the same seed "
        "(negative = variant better) ± the half-width of its "
        f"{summary['level']:.0%} t interval; n/a with one seed.",
    ]
    for name in summary["eval_sets"]:
        header = ["tokens", "steps", "seeds", *variants]
        lines += ["", f"## {name} loss", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for b in summary["budgets"]:
            cells = [f"{b['tokens']:,}", str(b["steps"]), ", ".join(map(str, b["seeds"]))]
            cells += [_loss_cell(b[name]["loss"][v], b["seeds"]) for v in variants]
            lines.append("| " + " | ".join(cells) + " |")
        pairs = [(ref, v) for ref, per in _all_pairs(summary, name).items() for v in per]
        header = ["tokens", *(f"{v} - {ref}" for ref, v in pairs)]
        lines += [
            "",
            f"## {name} paired differences",
            "",
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
        ]
        for b in summary["budgets"]:
            cells = [f"{b['tokens']:,}"]
            for ref, v in pairs:
                p = b[name]["paired"].get(ref, {}).get(v)
                cells.append("-" if p is None else fmt_pm(p["mean"], p["half_width"], signed=True))
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Sweeps: " + ", ".join(f"`{b['sweep']}`" for b in summary["budgets"]) + "."]
    return "\n".join(lines) + "\n"


def _loss_cell(loss: dict, seeds: list[int]) -> str:
    """``mean ± std``, naming the variant's seeds when it lacks some of its budget's (a --report-only sweep)."""
    cell = fmt_pm(loss["mean"], loss["std"])
    return cell if loss["seeds"] == seeds else f"{cell} (seeds {', '.join(map(str, loss['seeds']))})"


def _all_pairs(summary: dict, name: str) -> dict[str, dict[str, None]]:
    """``{reference: {variant: None}}``: every pair any budget has on eval set ``name`` (a budget reported
    from what finished may lack one), in order of first appearance."""
    pairs: dict[str, dict[str, None]] = {}
    for budget in summary["budgets"]:
        for ref, per in budget[name]["paired"].items():
            pairs.setdefault(ref, {}).update(dict.fromkeys(per))
    return pairs


def _pairs_to_plot(paired: dict) -> list[tuple[str, str]]:
    """Every variant against each reference, and each two references once (anchor - vanilla, not also
    vanilla - anchor): the later reference is the one subtracted."""
    refs = list(paired)
    return [(ref, v) for i, ref in enumerate(refs) for v in paired[ref] if v not in refs[i + 1 :]]


def plot_scaling(summary: dict, path: Path) -> Path | None:
    """Loss vs tokens per variant (left) and paired differences vs tokens with intervals (right), per eval set."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log("note: matplotlib is not installed, no scaling.png (pip install 'meshlm[plot]')")
        return None
    sets = summary["eval_sets"]
    fig = Figure(figsize=(12, 4.5 * len(sets)), dpi=120)
    axes = fig.subplots(len(sets), 2, squeeze=False)
    tokens = [b["tokens"] for b in summary["budgets"]]
    for (left, right), name in zip(axes, sets, strict=True):
        for v in summary["recipe"]["variants"]:
            means = [b[name]["loss"][v]["mean"] for b in summary["budgets"]]
            stds = [b[name]["loss"][v]["std"] or 0.0 for b in summary["budgets"]]
            left.errorbar(tokens, means, yerr=stds, marker="o", capsize=3, label=v)
        pairs = _pairs_to_plot(_all_pairs(summary, name))
        for i, (ref, v) in enumerate(pairs):
            found = [(b["tokens"], b[name]["paired"].get(ref, {}).get(v)) for b in summary["budgets"]]
            points = [(t, p) for t, p in found if p is not None]
            shift = 1.03 ** (i - (len(pairs) - 1) / 2)  # side by side, not on top
            right.errorbar(
                [t * shift for t, _ in points],
                [p["mean"] for _, p in points],
                yerr=[p["half_width"] or 0.0 for _, p in points],
                marker="o",
                capsize=3,
                label=f"{v} - {ref}",
            )
        right.axhline(0.0, color="black", linewidth=0.8)
        left.set_title(f"{name} loss (mean ± std over seeds)")
        right.set_title(f"{name}: paired differences ({summary['level']:.0%} t intervals)")
        for ax, ylabel in ((left, "loss (nats/token)"), (right, "Δ loss (nats/token)")):
            ax.set_xscale("log")
            ax.set_xlabel("training tokens")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_scaling(folders: list[Path], out: Path) -> dict:
    """Merge ``folders`` and write scaling.json, scaling.md and scaling.png into ``out``."""
    summary = merge(folders)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_scaling(summary, out / "scaling.png")
    summary["figures"] = [figure.name] if figure else []
    (out / "scaling.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "scaling.md").write_text(scaling_markdown(summary))
    return summary
