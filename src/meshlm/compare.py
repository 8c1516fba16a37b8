"""The matched-compute comparison (the paper's experiment) and the embedded demo.

``run_sweep`` trains every variant x seed through :func:`meshlm.train.loop.train` on the same
token stream (same data, tokenizer, sequence length, global batch and seed, so the sampler hands
every variant identical batches in identical order), evaluates held-out loss on each eval set,
probes one model per variant, and writes ``report.md``, ``report.json``, ``loss_curves.png`` and the
probe figures side by side. The vanilla twin of a recursive layout has the same unrolled depth,
so the same FLOPs per token. Finished runs are skipped and interrupted ones resumed, so an
interrupted sweep continues where it stopped. A budget that would repeat training data is
refused unless ``allow_repeat`` is set (a fair comparison stays within one epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from meshlm.accounting import count
from meshlm.config import canonical_scheme, parse_layout
from meshlm.data.shards import TokenBatchSampler, load_tokens
from meshlm.errors import MeshLMError
from meshlm.eval.cli import parse_int_list
from meshlm.train.loop import TrainConfig, build_model_config, load_run_data, max_steps_of

# TrainConfig fields a sweep sets per run; everything else is shared by all runs
PER_RUN_FIELDS = ("out", "seed", "layout", "scheme", "resume")


@dataclass
class Variant:
    """One model of the comparison: ``vanilla`` (the twin layout) or a scheme on the recursive layout."""

    name: str
    scheme: str = "base"
    vanilla: bool = False
    overrides: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | dict) -> Variant:
        """``"mesh"`` / ``"vanilla"`` / ``"anchor*"``, or a dict ``{name, scheme, **model overrides}`` from YAML."""
        if isinstance(spec, str):
            name = spec.strip()
            if name == "vanilla":
                return cls(name, vanilla=True)
            return cls(name, scheme=canonical_scheme(name))
        values = dict(spec)
        name = str(values.pop("name", values.get("scheme", "")))
        if not name:
            raise MeshLMError(f"a variant needs a name or a scheme: {spec}")
        if name == "vanilla" or values.pop("vanilla", False):
            return cls(name, vanilla=True, overrides=values)
        scheme = canonical_scheme(values.pop("scheme", name))
        return cls(name, scheme=scheme, overrides=values)

    @property
    def slug(self) -> str:
        return self.name.replace("*", "star").replace("+", "-").replace("/", "-")


@dataclass
class Sweep:
    """A comparison: the shared training options plus variants, seeds, eval sets and probing."""

    train: TrainConfig
    variants: list[Variant]
    seeds: list[int]
    out: Path
    evals: dict[str, str] = field(default_factory=dict)
    eval_tokens: int = 262_144
    probe_samples: int = 16
    allow_repeat: bool = False

    def layouts(self) -> tuple[str, str]:
        """(recursive layout, its vanilla twin of equal unrolled depth)."""
        layout = parse_layout(self.train.layout or "2+4R2+2")
        if layout.is_vanilla:
            raise MeshLMError(f"--layout {layout} is vanilla; give the recursive layout (e.g. 2+4R2+2)")
        return str(layout), str(layout.unrolled_layers)

    def run_config(self, variant: Variant, seed: int) -> TrainConfig:
        recursive, twin = self.layouts()
        overrides = {k: v for k, v in variant.overrides.items()}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise MeshLMError(f"variant {variant.name!r} sets unknown option(s) {sorted(unknown)}")
        return dataclasses.replace(
            self.train,
            out=str(self.run_dir(variant, seed)),
            seed=seed,
            layout=twin if variant.vanilla else recursive,
            scheme="base" if variant.vanilla else variant.scheme,
            resume=True,
            **overrides,
        )

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.out / "runs" / f"{variant.slug}-seed{seed}"


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def plan(sweep: Sweep, data: tuple | None = None) -> dict:
    """Variants' parameters and FLOPs, the shared data order, and the epoch check; refuses unfair budgets.

    ``data`` is the ``(tokenizer, shards)`` pair of the sweep when the caller already has it.
    """
    tokenizer, shards = data or load_run_data(sweep.train)
    cfg = sweep.train
    steps = max_steps_of(cfg)
    global_seqs = cfg.batch_tokens // cfg.seq_len
    sampler = TokenBatchSampler(shards.split("train"), cfg.seq_len, global_seqs)  # the runs' own epoch arithmetic
    windows = sampler.num_windows
    epochs = steps / sampler.steps_per_epoch
    if epochs > 1 and not sweep.allow_repeat:
        raise MeshLMError(
            f"the budget of {steps} steps x {cfg.batch_tokens} tokens is {epochs:.2f} epochs of the "
            f"{windows * (cfg.seq_len + 1):,} training tokens; a fair comparison stays within one epoch. "
            "Lower --max-tokens, add data, or pass --allow-repeat"
        )
    rows = {}
    for variant in sweep.variants:
        model_cfg = build_model_config(sweep.run_config(variant, sweep.seeds[0]), tokenizer.vocab_size)
        c = count(model_cfg, cfg.seq_len)
        rows[variant.name] = {
            "layout": model_cfg.layout,
            "scheme": model_cfg.scheme,
            "non_embedding": c.non_embedding,
            "total": c.total,
            "flops_per_token": c.flops_per_token,
            "total_flops": c.flops_per_token * steps * cfg.batch_tokens,
            "unrolled_layers": c.unrolled_layers,
        }
    depths = {r["unrolled_layers"] for r in rows.values()}
    if len(depths) != 1:
        raise MeshLMError(f"variants differ in unrolled depth {sorted(depths)}: compute is not matched")
    order = hashlib.sha256(
        json.dumps([cfg.seq_len, global_seqs, windows, sweep.seeds, shards.tokenizer_fingerprint]).encode()
    ).hexdigest()[:16]
    return {
        "variants": rows,
        "steps": steps,
        "epochs": epochs,
        "train_tokens": windows * (cfg.seq_len + 1),
        "tokenizer": tokenizer.name,
        "data_order": order,
    }


def _finished(run_dir: Path, steps: int) -> bool:
    state = run_dir / "model" / "trainer_state.json"
    return state.exists() and json.loads(state.read_text()).get("steps") == steps


def _eval_tokens(shards, limit: int, held_out: bool) -> torch.Tensor:
    """The first ``limit`` tokens of ``shards``: its validation split, or all of it for an extra eval set."""
    import numpy as np

    parts = [shards.split("val")] if held_out else [shards.split(s) for s in shards.splits]
    tokens = np.concatenate([np.asarray(p) for p in parts])[:limit]
    if len(tokens) < 2:
        where = "in its val split" if held_out else "at all"
        raise MeshLMError(f"eval set {shards.path} has no tokens to evaluate {where}")
    return torch.from_numpy(tokens.astype(np.int64))


def evaluate_run(sweep: Sweep, run_dir: Path, eval_sets: dict) -> dict:
    """Held-out loss/PPL of one finished run on every eval set (cached in ``run_dir/eval.json``)."""
    from transformers import AutoModelForCausalLM

    from meshlm.eval.perplexity import token_perplexity

    cached = run_dir / "eval.json"
    if cached.exists():
        return json.loads(cached.read_text())
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    device = sweep.train.device or ("cuda" if torch.cuda.is_available() else "cpu")
    seq = sweep.train.seq_len
    result = {
        name: token_perplexity(model, tokens, context=seq, stride=seq, batch_size=16, device=device)
        for name, tokens in eval_sets.items()
    }
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


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
        _log("note: matplotlib is not installed, no loss_curves.png (pip install 'meshlm[plot]')")
        return None
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot()
    for variant in sweep.variants:
        curves = []
        for seed in sweep.seeds:
            log = sweep.run_dir(variant, seed) / "log.jsonl"
            curves.append([json.loads(line) for line in log.read_text().splitlines() if line.strip()])
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


def probe_variants(sweep: Sweep) -> list[Path]:
    """Diagnostics of each variant's first-seed model on held-out windows, figures side by side."""
    if sweep.probe_samples < 1:
        return []
    from meshlm.probe.figures import write_figures
    from meshlm.probe.run import probe_dir

    results = {}
    for variant in sweep.variants:
        run = sweep.run_dir(variant, sweep.seeds[0])
        results[variant.name] = probe_dir(
            run / "model",
            sweep.train.data,
            samples=sweep.probe_samples,
            seq_len=sweep.train.seq_len,
            out_dir=run / "probe",
            device=sweep.train.device,
            progress=False,
        )
    return write_figures(results, sweep.out / "probe")


def run_sweep(sweep: Sweep) -> dict:
    """Train, evaluate, probe and report every variant x seed; skips what is already done."""
    from meshlm.train.loop import train

    tokenizer, shards = load_run_data(sweep.train)
    planned = plan(sweep, (tokenizer, shards))
    sweep.out.mkdir(parents=True, exist_ok=True)
    _log("variant      layout      non-emb params   FLOPs/token   total FLOPs")
    for name, row in planned["variants"].items():
        _log(
            f"{name:<12} {row['layout']:<11} {row['non_embedding']:>14,}   {row['flops_per_token']:.3e}   "
            f"{row['total_flops']:.3e}"
        )
    for seed in sweep.seeds:
        for variant in sweep.variants:
            run_dir = sweep.run_dir(variant, seed)
            if _finished(run_dir, planned["steps"]):
                _log(f"[skip] {variant.name} seed {seed}: already trained")
                continue
            _log(f"[train] {variant.name} seed {seed} -> {run_dir}")
            train(sweep.run_config(variant, seed))
    unfinished = [
        str(sweep.run_dir(v, s))
        for s in sweep.seeds
        for v in sweep.variants
        if not _finished(sweep.run_dir(v, s), planned["steps"])
    ]
    if unfinished:
        raise MeshLMError(
            f"{len(unfinished)} run(s) stopped before the end ({', '.join(unfinished)}); "
            "run the same command again to continue them"
        )
    eval_sets = {"held-out": _eval_tokens(shards, sweep.eval_tokens, held_out=True)}
    for name, source in sweep.evals.items():
        extra = load_tokens(source, tokenizer, cache_dir=sweep.train.cache_dir)
        eval_sets[name] = _eval_tokens(extra, sweep.eval_tokens, held_out=False)
    evals = {
        v.name: {s: evaluate_run(sweep, sweep.run_dir(v, s), eval_sets) for s in sweep.seeds} for v in sweep.variants
    }
    summary = summarize(sweep, planned, evals)
    figures = probe_variants(sweep)
    curves = plot_loss_curves(sweep, sweep.out / "loss_curves.png")
    summary["figures"] = [str(p.relative_to(sweep.out)) for p in [*figures, *([curves] if curves else [])]]
    (sweep.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (sweep.out / "report.md").write_text(report_markdown(summary, sweep))
    return summary


# The embedded default (``meshlm demo``): the real pipeline at a size two CPU cores finish in minutes.
DEMO = dict(
    data="builtin:wiki",
    tokenizer="bpe:2048",
    preset="pythia-14m",
    hidden_size=64,
    num_attention_heads=4,
    layout="1+2R2+1",
    seq_len=128,
    batch_tokens=4096,
    max_steps=100,
    lr=3e-3,
    eval_every=50,
    eval_batches=8,
    log_every=10,
    device="cpu",
)
DEMO_VARIANTS = ("vanilla", "base", "anchor", "mesh")
COMPARE_KEYS = ("variants", "seeds", "evals", "eval_tokens", "probe_samples", "allow_repeat")


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _distinct(items: list, option: str, key=str) -> list:
    """``items`` if non-empty and without repeats (a repeat would train and count the same run twice)."""
    names = [key(item) for item in items]
    if not names or len(set(names)) != len(names):
        raise MeshLMError(f"{option} takes a non-empty comma list without repeats, got {','.join(names)!r}")
    return items


def _seeds(value) -> list[int]:
    """Seeds from ``--seeds 0,1`` or a YAML list: non-negative integers."""
    if isinstance(value, str):
        return parse_int_list(value, "--seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise MeshLMError(f"seeds must be non-negative integers, got {value!r}")
    return list(value)


def sweep_from_args(args) -> Sweep:
    """A Sweep from ``meshlm compare`` flags and an optional ``--config`` YAML (flags win)."""
    from meshlm.train.cli import config_from_args, read_config_file

    loaded = read_config_file(args.config) if args.config is not None else {}
    extra = {k: loaded.pop(k) for k in COMPARE_KEYS if k in loaded}
    train_cfg = config_from_args(args, loaded)
    if not train_cfg.out:
        raise MeshLMError("give --out DIR for the comparison report")
    variants = args.variants or extra.get("variants") or "vanilla,base,residual,anchor,anchor*,mesh"
    seeds = args.seeds or extra.get("seeds") or "0"
    evals = dict(extra.get("evals") or {})
    for item in args.eval or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise MeshLMError(f"--eval takes NAME=SOURCE, got {item!r}")
        evals[name] = source
    return Sweep(
        train=train_cfg,
        variants=_distinct(
            [Variant.parse(v) for v in (_split_list(variants) if isinstance(variants, str) else variants)],
            "--variants",
            key=lambda v: v.slug,
        ),
        seeds=_distinct(_seeds(seeds), "--seeds"),
        out=Path(train_cfg.out),
        evals=evals,
        eval_tokens=args.eval_tokens or extra.get("eval_tokens") or Sweep.eval_tokens,
        probe_samples=args.probe_samples if args.probe_samples is not None else extra.get("probe_samples", 16),
        allow_repeat=bool(args.allow_repeat or extra.get("allow_repeat", False)),
    )


def _print_report(out: Path) -> None:
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} (figures and report.json beside it)")


def _run_compare(args) -> int:
    sweep = sweep_from_args(args)
    run_sweep(sweep)
    _print_report(sweep.out)
    return 0


def _run_demo(args) -> int:
    out = Path(args.out)
    train_cfg = TrainConfig(**DEMO, out=str(out), progress=False, tensorboard=False, cache_dir=args.cache_dir)
    if args.max_steps:
        train_cfg.max_steps = args.max_steps
    sweep = Sweep(
        train=train_cfg,
        variants=[Variant.parse(v) for v in DEMO_VARIANTS],
        seeds=[0],
        out=out,
        eval_tokens=65_536,
        probe_samples=8,
    )
    _log(
        f"meshlm demo: {', '.join(DEMO_VARIANTS)} on {DEMO['data']} ({DEMO['tokenizer']}), layout "
        f"{DEMO['layout']} vs its vanilla twin, d={DEMO['hidden_size']}, {train_cfg.max_steps} steps each, CPU"
    )
    run_sweep(sweep)
    _print_report(out)
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``meshlm compare`` and ``meshlm demo``."""
    from meshlm.train.cli import add_train_arguments

    parser = subparsers.add_parser("compare", help="train, evaluate and probe variants at matched compute")
    add_train_arguments(parser)
    parser.add_argument(
        "--variants",
        help="comma list: vanilla, base, residual, anchor, anchor*, a+b, static, "
        "dynamic, mesh (default: vanilla,base,residual,anchor,anchor*,mesh)",
    )
    parser.add_argument("--seeds", help="comma list of seeds (default 0)")
    parser.add_argument("--eval", action="append", metavar="NAME=SOURCE", help="extra held-out eval set (repeatable)")
    parser.add_argument("--eval-tokens", type=int, help="tokens per eval set (default 262144)")
    parser.add_argument("--probe-samples", type=int, help="held-out windows probed per variant (0 = no probe)")
    parser.add_argument("--allow-repeat", action="store_true", help="allow a budget of more than one epoch")
    parser.set_defaults(func=_run_compare)
    demo = subparsers.add_parser("demo", help="the embedded default: a tiny vanilla/base/anchor/mesh comparison on CPU")
    demo.add_argument("--out", default="meshlm-demo", help="report folder (default ./meshlm-demo)")
    demo.add_argument("--max-steps", type=int, help=f"steps per variant (default {DEMO['max_steps']})")
    demo.add_argument("--cache-dir", help="where tokenizers and shards are cached")
    demo.set_defaults(func=_run_demo)
