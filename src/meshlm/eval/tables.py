"""Markdown tables of evaluation results, in the paper's Table 1 layout.

A Table 1 row is a dict with ``layout``, ``variant``, ``ppl_pile``, ``ppl_wikitext``,
``ppl_lambada_openai``, ``ppl_lambada_standard``, ``avg_0shot`` and ``avg_5shot`` (averages in
percent, as the paper prints them) and optionally ``model``; :func:`table1_row` builds one from
an ``meshlm eval`` report.
"""

from __future__ import annotations

from collections.abc import Sequence

TABLE1_COLUMNS = (
    ("layout", "layout"),
    ("variant", "variant"),
    ("ppl_pile", "PPL Pile"),
    ("ppl_wikitext", "PPL WikiText"),
    ("ppl_lambada_openai", "PPL LAMBADA-O"),
    ("ppl_lambada_standard", "PPL LAMBADA-S"),
    ("avg_0shot", "0-shot avg"),
    ("avg_5shot", "5-shot avg"),
)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; ``None`` cells print as ``-`` and floats with 2 decimals."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(rows: list[dict]) -> str:
    """Table 1 of the paper: layout, variant, PPL Pile/WikiText/LAMBADA-O/LAMBADA-S, 0-/5-shot avg.

    A leading ``model`` column is added when any row has a ``model`` key; missing values are ``-``.
    """
    columns = TABLE1_COLUMNS
    if any("model" in row for row in rows):
        columns = (("model", "model"), *columns)
    return markdown_table([title for _, title in columns], [[row.get(key) for key, _ in columns] for row in rows])


def _harness_metric(report: dict, shots: str, task: str, metric: str) -> float | None:
    return report.get("harness", {}).get(shots, {}).get("results", {}).get(task, {}).get(metric)


def _average_percent(report: dict, shots: str) -> float | None:
    average = report.get("harness", {}).get(shots, {}).get("average_accuracy")
    return None if average is None else 100 * average


def table1_row(report: dict) -> dict:
    """The Table 1 row of one ``meshlm eval`` report.

    Sources: Pile = ``--ppl pile=...`` perplexity; WikiText = ``--rolling wikitext=...`` word
    perplexity, else the 0-shot harness ``wikitext`` task; LAMBADA-O/-S = ``--lambada
    lambada_openai=...`` / ``lambada_standard=...`` perplexity, else the 0-shot harness task of
    that name; averages = the harness's mean accuracy at 0 and 5 shots. A model whose layout is a
    plain layer count is labelled ``vanilla``.
    """
    info = report.get("model", {})
    layout = info.get("layout")
    row = {
        "layout": layout,
        "variant": "vanilla" if layout is not None and str(layout).isdigit() else info.get("scheme"),
        "ppl_pile": report.get("ppl", {}).get("pile", {}).get("perplexity"),
        "ppl_wikitext": report.get("rolling", {}).get("wikitext", {}).get("word_perplexity")
        or _harness_metric(report, "0", "wikitext", "word_perplexity"),
        "avg_0shot": _average_percent(report, "0"),
        "avg_5shot": _average_percent(report, "5"),
    }
    for task in ("lambada_openai", "lambada_standard"):
        row[f"ppl_{task}"] = report.get("lambada", {}).get(task, {}).get("perplexity") or _harness_metric(
            report, "0", task, "perplexity"
        )
    return row


def harness_markdown(report: dict) -> str:
    """Per-task harness summary: task, metric, and its value (percent for accuracies) per shot count."""
    harness = report.get("harness", {})
    shots = sorted(harness, key=int)
    tasks = list(dict.fromkeys(task for s in shots for task in harness[s]["summary"]))
    rows = []
    for task in tasks:
        entries = [harness[s]["summary"].get(task) for s in shots]
        metric = next(e["metric"] for e in entries if e)
        scale = 100 if metric in ("acc", "acc_norm") else 1
        rows.append([task, metric, *[e["value"] * scale if e else None for e in entries]])
    return markdown_table(["task", "metric", *[f"{s}-shot" for s in shots]], rows)


def loops_markdown(report: dict) -> str:
    """One row per ``--loops`` count: token perplexity of each --ppl set, word perplexity of each --rolling one."""
    by_k = report["loops"]
    first = next(iter(by_k.values()))
    ppl, rolling = list(first.get("ppl", {})), list(first.get("rolling", {}))
    header = ["loops", *(f"{n} ppl" for n in ppl), *(f"{n} word ppl" for n in rolling)]
    rows = [
        [
            k,
            *(by_k[k]["ppl"][n]["perplexity"] for n in ppl),
            *(by_k[k]["rolling"][n]["word_perplexity"] for n in rolling),
        ]
        for k in by_k
    ]
    return markdown_table(header, rows)


def report_markdown(report: dict) -> str:
    """A whole ``meshlm eval`` report: Table 1 row, then one table per evaluation kind present."""
    parts = ["## Table 1\n\n" + table1_markdown([report["table1"]])]
    if "ppl" in report:
        rows = [
            [name, r["tokens"], r["loss"], r["perplexity"], r.get("bits_per_byte")] for name, r in report["ppl"].items()
        ]
        parts.append("## Token perplexity\n\n" + markdown_table(["name", "tokens", "loss", "ppl", "bits/byte"], rows))
    if "rolling" in report:
        rows = [
            [name, r["documents"], r["word_perplexity"], r["byte_perplexity"], r["bits_per_byte"]]
            for name, r in report["rolling"].items()
        ]
        header = ["name", "documents", "word ppl", "byte ppl", "bits/byte"]
        parts.append("## Rolling document perplexity\n\n" + markdown_table(header, rows))
    if "loops" in report:
        parts.append("## Perplexity by loop count\n\n" + loops_markdown(report))
    if "lambada" in report:
        rows = [[name, r["examples"], 100 * r["acc"], r["perplexity"]] for name, r in report["lambada"].items()]
        parts.append("## LAMBADA\n\n" + markdown_table(["name", "examples", "acc %", "ppl"], rows))
    if "harness" in report:
        parts.append("## LM Evaluation Harness\n\n" + harness_markdown(report))
    return "\n".join(parts)
