"""Figures of the section-5 diagnostics, drawn from :class:`~meshlm.probe.aggregate.ProbeAccumulator` results.

Every plot function takes ``results``, either one result dict or a mapping
``label -> result`` (one bar group / panel per label, in order), and a PNG
path; it returns the path written. matplotlib is imported lazily and drawn
with the Agg canvas, without pyplot, so the global backend of the caller is
left alone; without matplotlib the functions raise :class:`MeshLMError`.

- :func:`plot_update_magnitude`: relative update magnitude per block (paper Fig. 3);
- :func:`plot_cka`: CKA heat maps between states (Fig. 4);
- :func:`plot_spectra`: normalised singular value spectra (Fig. 5);
- :func:`plot_routers`: MeSH read/write slot weights per step;
- :func:`write_figures`: all of those that apply, into one folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from meshlm.errors import MeshLMError
from meshlm.probe.aggregate import FORMAT

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Result = Mapping[str, Any]
_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "savefig.dpi": 150,
}
_STATE_NAME = re.compile(r"(h|core_out)([0-9]+)")


def _as_results(results: Result | Mapping[str, Result]) -> dict[str, Result]:
    """``{label: result}`` from one result or a mapping of them, checking the format."""
    if "format" in results:
        results = {"model": results}
    if not results:
        raise MeshLMError("no probe results to plot.")
    for label, result in results.items():
        if not isinstance(result, Mapping) or result.get("format") != FORMAT:
            raise MeshLMError(f"{label!r} is not a probe result of format {FORMAT!r}; pass ProbeAccumulator.result().")
    return dict(results)


def _matplotlib() -> Any:
    """The matplotlib module, or a MeshLMError that names the extra to install."""
    try:
        import matplotlib
        import matplotlib.backends.backend_agg
        import matplotlib.figure
    except ImportError as exc:
        raise MeshLMError("the probe figures need matplotlib: pip install 'meshlm[plot]'.") from exc
    return matplotlib


@contextmanager
def _figure(path: str | Path, figsize: tuple[float, float]) -> Iterator[Figure]:
    """Yield a constrained-layout Figure on an Agg canvas and save it to ``path`` on exit."""
    matplotlib = _matplotlib()
    with matplotlib.rc_context(_STYLE):
        fig = matplotlib.figure.Figure(figsize=figsize, layout="constrained")
        matplotlib.backends.backend_agg.FigureCanvasAgg(fig)
        yield fig
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)


def _cmap(name: str) -> Any:
    """A matplotlib colormap by name."""
    return _matplotlib().colormaps[name]


def _state_label(name: str) -> str:
    """Mathtext label in the paper's notation: h_emb, h^(t), h_out, h_m^(t) for raw core outputs."""
    if name in ("emb", "out"):
        return rf"$h_{{\mathrm{{{name}}}}}$"
    match = _STATE_NAME.fullmatch(name)
    if match is None:
        return name
    return rf"$h^{{({match[2]})}}$" if match[1] == "h" else rf"$h_m^{{({match[2]})}}$"


def _block_label(block: str) -> str:
    return re.sub(r"^core([0-9]+)$", r"core t=\1", block)


def _block_order(block: str) -> float:
    """Sort key putting blocks in computation order: prelude, core1 .. coreK, coda."""
    if block == "prelude":
        return 0.0
    match = re.fullmatch(r"core([0-9]+)", block)
    return float(match[1]) if match else float("inf")


def _annotate_cells(ax: Axes, values: np.ndarray, fontsize: float, low: float = 0.0) -> None:
    """Write each value of a heat map in its cell, dark on light cells and light on dark ones.

    ``low`` is the bottom of the colour scale (the top is the largest value).
    """
    top = max(float(np.nanmax(values)), low + 1e-12)
    for (row, col), value in np.ndenumerate(values):
        colour = "black" if value - low > 0.6 * (top - low) else "white"
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=fontsize)


def cka_colour_range(values: list[np.ndarray]) -> tuple[float, float]:
    """Colour scale of CKA heat maps: from the smallest value shown (down to a multiple of 0.05) to 1.

    CKA lies in [0, 1] and a state's CKA with itself is 1; states of one model are often all above
    0.9, which a fixed 0-1 scale would paint in one colour.
    """
    smallest = min(float(np.nanmin(v)) for v in values)
    return min(0.95, max(0.0, np.floor(smallest * 20) / 20)), 1.0


def _update_series(results: dict[str, Result]) -> list[dict[str, Any]]:
    """One bar series per model, plus a hatched "core alone" series for results with raw core outputs."""
    series = []
    for i, (label, result) in enumerate(results.items()):
        colour = _cmap("tab10")(i % 10)
        series.append({"label": label, "colour": colour, "hatch": None, **result["update_magnitude"]})
        core = result.get("core_update_magnitude")
        if core:
            text = rf"{label}: core alone, $h^{{(t-1)}} \to h_m^{{(t)}}$"
            series.append({"label": text, "colour": (*colour[:3], 0.45), "hatch": "///", **core})
    return series


def plot_update_magnitude(results: Result | Mapping[str, Result], path: str | Path) -> Path:
    """Bar chart of the relative update magnitude per block, mean ± std over samples, grouped per model.

    Where a result has ``core_update_magnitude`` (mesh models), a hatched bar
    next to each composed h(t-1) -> h(t) bar shows the core's own update h(t-1) -> h_m(t).
    """
    series = _update_series(_as_results(results))
    blocks = sorted({b for s in series for b in s["blocks"]}, key=_block_order)
    width = 0.84 / len(series)
    with _figure(path, (max(6.5, 1.5 + 0.45 * len(blocks) * len(series)), 5.0)) as fig:
        ax = fig.add_subplot()
        for i, s in enumerate(series):
            x = np.array([blocks.index(b) for b in s["blocks"]]) + (i - (len(series) - 1) / 2) * width
            mean, std = np.array(s["mean"]), np.array(s["std"])
            edge = "0.2" if s["hatch"] else None
            style = {"color": s["colour"], "hatch": s["hatch"], "edgecolor": edge, "ecolor": "0.25"}
            ax.bar(x, mean, width * 0.92, yerr=std, capsize=3, label=s["label"], **style)
            for xi, m, sd in zip(x, mean, std, strict=True):
                ax.annotate(
                    f"{m:.2f}",
                    (xi, m + sd),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8 if len(series) <= 3 else 6.5,
                )
        top = max(float(np.max(np.add(s["mean"], s["std"]))) for s in series)
        ax.set_xticks(range(len(blocks)), [_block_label(b) for b in blocks])
        ax.set_ylim(0, top * 1.12 if top > 0 else 1)
        ax.set_xlabel("computational block")
        ax.set_ylabel(r"$2\,\|f(h)-h\|_F \,/\, (\|f(h)\|_F + \|h\|_F)$")
        ax.set_title("Relative update magnitude per block (mean ± std over samples)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if len(series) > 1:
            fig.legend(loc="outside lower center", ncols=min(len(series), 3))
    return Path(path)


def _kernel_text(cka: Mapping[str, Any]) -> str:
    if cka["kernel"] == "rbf":
        return rf"RBF kernel, $\sigma$ = {cka['sigma_frac']:g} × median distance"
    return "linear kernel"


def plot_cka(
    results: Result | Mapping[str, Result],
    path: str | Path,
    *,
    linear: bool = False,
    include_core_outputs: bool = False,
) -> Path:
    """Mean CKA heat map between the states of each model, one annotated panel per model.

    ``linear`` plots ``cka_linear`` instead of the main ``cka``;
    ``include_core_outputs`` adds the raw core outputs h_m(t) next to the states.
    """
    results = _as_results(results)
    key = "cka_linear" if linear else "cka"
    missing = [label for label, r in results.items() if not r.get(key)]
    if missing:
        raise MeshLMError(f"results {missing} have no {key!r}; run the probe with linear CKA enabled.")
    panels = len(results)
    size = max(len(r["states"]) + len(r["core_outputs"]) * include_core_outputs for r in results.values())
    side = max(4.0, 0.55 * size + 1.5)
    shown = {}
    for label, result in results.items():
        names = result["states"] + (result["core_outputs"] if include_core_outputs else [])
        idx = [result[key]["names"].index(n) for n in names]
        shown[label] = (names, np.array(result[key]["mean"])[np.ix_(idx, idx)])
    low, high = cka_colour_range([values for _, values in shown.values()])
    with _figure(path, (side * panels + 1.0, side + 0.6)) as fig:
        axes = fig.subplots(1, panels, squeeze=False)[0]
        image = None
        for ax, (label, (names, values)) in zip(axes, shown.items(), strict=True):
            image = ax.imshow(values, vmin=low, vmax=high, cmap="viridis")
            _annotate_cells(ax, values, fontsize=9 if len(names) <= 7 else 7, low=low)
            ticks = [_state_label(n) for n in names]
            ax.set_xticks(range(len(names)), ticks)
            ax.set_yticks(range(len(names)), ticks)
            result = results[label]
            ax.set_title(f"{label} (n={result['num_samples']})\n{_kernel_text(result[key])}", fontsize=10)
        fig.colorbar(image, ax=list(axes), shrink=0.85, label=f"CKA (scale {low:.2f} to {high:.2f})")
        what = r"hidden states and raw core outputs $h_m^{(t)}$" if include_core_outputs else "hidden states"
        fig.suptitle(f"{'Linear CKA' if linear else 'CKA'} between {what} (mean over samples)")
    return Path(path)


def _state_rows(result: Result, section: str) -> dict[str, np.ndarray]:
    """``{state: mean row}`` of a per-name section (spectrum or effective_rank) for the paper's states."""
    table = result[section]
    return {name: np.array(table["mean"][table["names"].index(name)]) for name in result["states"]}


def plot_spectra(results: Result | Mapping[str, Result], path: str | Path) -> Path:
    """Normalised singular values sigma_i / sigma_0 per state on a log axis, mean ± std band, one panel per model.

    Indices past the rank of the states (zero-padded by the probe) are not drawn.
    """
    results = _as_results(results)
    means = [_state_rows(r, "spectrum") for r in results.values()]
    positive = np.concatenate([row[row > 0] for rows in means for row in rows.values()])
    floor = 0.5 * float(positive.min())
    last = max(int(np.flatnonzero(row > 0).max()) for rows in means for row in rows.values())
    with _figure(path, (5.2 * len(results) + 0.5, 4.6)) as fig:
        axes = fig.subplots(1, len(results), squeeze=False, sharey=True)[0]
        cmap = _cmap("viridis")
        for ax, (label, result), rows in zip(axes, results.items(), means, strict=True):
            stds = {n: np.array(result["spectrum"]["std"][result["spectrum"]["names"].index(n)]) for n in rows}
            eranks = _state_rows(result, "effective_rank")
            for j, (name, mean) in enumerate(rows.items()):
                colour = cmap(0.9 * j / max(1, len(rows) - 1))
                x, shown = np.arange(len(mean)), mean > 0
                text = f"{_state_label(name)} (erank {float(eranks[name]):.0f})"
                ax.plot(x[shown], mean[shown], color=colour, label=text, linewidth=1.6)
                low = np.maximum(mean - stds[name], floor)
                ax.fill_between(x, low, mean + stds[name], where=shown, color=colour, alpha=0.18, lw=0)
            ax.set_yscale("log")
            ax.set_ylim(bottom=floor, top=1.3)
            ax.set_xlim(-0.5, last + 0.5)
            ax.set_xlabel("singular value index $i$")
            ax.set_title(f"{label} (n={result['num_samples']})")
            ax.grid(which="major", alpha=0.3)
            ax.legend(loc="lower left", fontsize=8)
        axes[0].set_ylabel(r"$\sigma_i / \sigma_0$")
        fig.suptitle("Normalised singular value spectrum of each state\n(mean ± std over samples)")
    return Path(path)


def plot_routers(results: Result | Mapping[str, Result], path: str | Path) -> Path:
    """Heat maps (steps x slots) of the mean read and write weight of each slot, one row per mesh model."""
    results = {label: r for label, r in _as_results(results).items() if r.get("router")}
    if not results:
        raise MeshLMError("none of the probe results has router weights; plot_routers needs a mesh model.")
    top = max(
        float(np.max(r["router"][role]["slot_weight_mean"])) for r in results.values() for role in ("read", "write")
    )
    steps = max(r["router"]["steps"] for r in results.values())
    slots = max(r["router"]["slots"] for r in results.values())
    width, height = 2 * max(4.0, 0.75 * slots + 2.2), max(2.8, 0.75 * steps + 1.6) * len(results) + 0.6
    with _figure(path, (width + 0.8, height)) as fig:
        axes = fig.subplots(len(results), 2, squeeze=False)
        image = None
        for row, (label, result) in enumerate(results.items()):
            router = result["router"]
            for ax, role in zip(axes[row], ("read", "write"), strict=True):
                stats = router[role]
                values = np.array(stats["slot_weight_mean"])
                image = ax.imshow(values, vmin=0, vmax=top, cmap="viridis", aspect="auto")
                _annotate_cells(ax, values, fontsize=9 if router["slots"] <= 8 else 7)
                ax.set_xticks(range(router["slots"]), [f"$m_{{{b}}}$" for b in range(router["slots"])])
                ylabels = [rf"$\to h^{{({t})}}$  H={h:.2f}" for t, h in enumerate(stats["entropy_mean"])]
                ax.set_yticks(range(router["steps"]), ylabels)
                ax.set_xlabel("buffer slot")
                max_h = f"max H = ln {router['slots']} = {router['max_entropy']:.2f}"
                ax.set_title(f"{label}: {role} weights ({max_h})", fontsize=10)
            axes[row][0].set_ylabel("step (state produced)")
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label="mean slot weight")
        fig.suptitle("MeSH router weight per slot and step\n(mean over tokens and samples; H = mean token entropy)")
    return Path(path)


def write_figures(results: Result | Mapping[str, Result], out_dir: str | Path) -> list[Path]:
    """Write every figure that applies to ``results`` into ``out_dir``; return the paths written.

    Always update_magnitude.png, cka.png and spectra.png; cka_linear.png when all
    results have linear CKA; cka_core_outputs.png when one has raw core outputs;
    routers.png when one has router weights.
    """
    results = _as_results(results)
    out = Path(out_dir)
    paths = [
        plot_update_magnitude(results, out / "update_magnitude.png"),
        plot_cka(results, out / "cka.png"),
        plot_spectra(results, out / "spectra.png"),
    ]
    if all(r.get("cka_linear") for r in results.values()):
        paths.append(plot_cka(results, out / "cka_linear.png", linear=True))
    if any(r["core_outputs"] for r in results.values()):
        paths.append(plot_cka(results, out / "cka_core_outputs.png", include_core_outputs=True))
    if any(r.get("router") for r in results.values()):
        paths.append(plot_routers(results, out / "routers.png"))
    return paths
