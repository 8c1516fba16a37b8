"""``meshlm compare`` and ``meshlm demo``: flags and sweep YAML to a :class:`Sweep`, and the subcommands."""

from __future__ import annotations

from pathlib import Path

from meshlm.compare.demo import DEMO, run_demo
from meshlm.compare.plan import Sweep, Variant
from meshlm.compare.report import print_report
from meshlm.compare.run import run_sweep
from meshlm.errors import MeshLMError
from meshlm.eval.cli import parse_int_list

COMPARE_KEYS = (
    "variants",
    "seeds",
    "evals",
    "eval_tokens",
    "probe_samples",
    "allow_repeat",
    "parallel",
    "eval_loops",
    "references",
)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _distinct(items: list, option: str, key=str) -> list:
    """``items`` if non-empty and without repeats (a repeat would train and count the same run twice)."""
    names = [key(item) for item in items]
    if not names or len(set(names)) != len(names):
        raise MeshLMError(f"{option} takes a non-empty comma list without repeats, got {','.join(names)!r}")
    return items


def _variants(value, configured) -> list[Variant]:
    """``--variants a,b`` or a YAML list; a name the config defines (a dict variant) means that variant,
    so ``--variants mesh,linear-slow`` picks a subset of the config's variants by name."""
    if not isinstance(value, str):
        return [Variant.parse(v) for v in value]
    defined = {}
    if configured is not None and not isinstance(configured, str):
        defined = {variant.name: variant for variant in map(Variant.parse, configured)}
    return [defined.get(name) or Variant.parse(name) for name in _split_list(value)]


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
    configured = extra.get("variants")
    variants = args.variants or configured or "vanilla,base,residual,anchor,anchor*,mesh"
    seeds = args.seeds or extra.get("seeds") or "0"
    evals = dict(extra.get("evals") or {})
    for item in args.eval or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise MeshLMError(f"--eval takes NAME=SOURCE, got {item!r}")
        evals[name] = source
    chosen = _distinct(_variants(variants, configured), "--variants", key=lambda v: v.slug)
    return Sweep(
        train=train_cfg,
        variants=chosen,
        seeds=_distinct(_seeds(seeds), "--seeds"),
        out=Path(train_cfg.out),
        evals=evals,
        eval_tokens=args.eval_tokens or extra.get("eval_tokens") or Sweep.eval_tokens,
        probe_samples=args.probe_samples
        if args.probe_samples is not None
        else extra.get("probe_samples", Sweep.probe_samples),
        allow_repeat=bool(args.allow_repeat or extra.get("allow_repeat", False)),
        parallel=_parallel(args.parallel if args.parallel is not None else extra.get("parallel", 1)),
        eval_loops=_eval_loops(args.eval_loops if args.eval_loops is not None else extra.get("eval_loops")),
        references=_references(args.references or extra.get("references"), chosen),
    )


def _references(value, variants: list[Variant]) -> tuple[str, ...]:
    """``--references base,linear`` (or a YAML list): variants of this sweep to pair the others against."""
    if value is None:
        return Sweep.references
    if not isinstance(value, (str, list)) or not all(isinstance(v, str) for v in value):
        raise MeshLMError(f"references takes a comma list or a YAML list of variant names, got {value!r}")
    names = _distinct(_split_list(value) if isinstance(value, str) else list(value), "--references")
    known = [v.name for v in variants]
    if unknown := [name for name in names if name not in known]:
        raise MeshLMError(
            f"--references names {', '.join(unknown)}, not a variant of this sweep (its variants: {', '.join(known)})"
        )
    return tuple(names)


def _eval_loops(value) -> list[int]:
    """``--eval-loops 1,2,4`` (or a YAML list) as distinct loop counts >= 1; ``none`` drops a config's list."""
    if value is None or value == "none":
        return []
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    counts = parse_int_list(text, "--eval-loops")
    if 0 in counts:
        raise MeshLMError(f"--eval-loops takes loop counts >= 1 (e.g. 1,2,4,8), got {value!r}")
    return list(dict.fromkeys(counts))


def _parallel(value) -> int:
    if not isinstance(value, int) or value < 1:
        raise MeshLMError(f"--parallel takes a number of runs >= 1, got {value!r}")
    return value


def _run_compare(args) -> int:
    sweep = sweep_from_args(args)
    run_sweep(sweep, report_only=args.report_only)
    print_report(sweep.out)
    return 0


def _run_scaling(args) -> int:
    from meshlm.compare.scaling import write_scaling

    out = Path(args.out)
    write_scaling([Path(f) for f in args.sweeps], out)
    print((out / "scaling.md").read_text())
    print(f"scaling report: {out / 'scaling.md'} (scaling.json and scaling.png beside it)")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``meshlm compare``, ``meshlm scaling`` and ``meshlm demo``."""
    from meshlm.train.cli import add_train_arguments

    parser = subparsers.add_parser("compare", help="train, evaluate and probe variants at matched compute")
    # each variant names its scheme, runs always resume, and each W&B run is named after its run folder
    add_train_arguments(parser, skip=("scheme", "resume", "wandb_run_name"))
    parser.add_argument(
        "--variants",
        help="comma list: vanilla, base, residual, anchor, anchor*, a+b, static, "
        "dynamic, mesh (default: vanilla,base,residual,anchor,anchor*,mesh)",
    )
    parser.add_argument("--seeds", help="comma list of seeds (default: 0)")
    parser.add_argument(
        "--eval", action="append", metavar="NAME=SOURCE", help="extra held-out eval set (repeatable; default: none)"
    )
    parser.add_argument("--eval-tokens", type=int, help=f"tokens per eval set (default: {Sweep.eval_tokens})")
    parser.add_argument(
        "--probe-samples",
        type=int,
        help=f"held-out windows probed per variant, 0 = no probe (default: {Sweep.probe_samples})",
    )
    parser.add_argument(
        "--allow-repeat", action="store_true", help="allow a budget of more than one epoch (default: off)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="train up to N runs at once as subprocesses on the device, lowered to what fits in GPU memory "
        "(default: 1)",
    )
    parser.add_argument(
        "--eval-loops",
        metavar="K1,K2,...",
        help="also evaluate every recursive run with its shared core looped K1, K2, ... times "
        "(loss per loop count in the report), e.g. 1,2,3,4,5,6,7,8; none turns off a config's list (default: none)",
    )
    parser.add_argument(
        "--references",
        metavar="V1,V2",
        help="variants every other one is paired against in the report, per seed with t intervals "
        "(default: anchor,vanilla, those the sweep has)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the runs of the grid that finished (from their eval.json, or their weights) "
        "and list the others; e.g. a sweep stopped partway, or run folders gathered from several machines "
        "(default: off)",
    )
    parser.set_defaults(func=_run_compare)
    scaling = subparsers.add_parser(
        "scaling", help="merge finished sweeps of one recipe at different token budgets into a scaling report"
    )
    scaling.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", help="`meshlm compare --out` folders")
    scaling.add_argument("--out", required=True, help="folder for scaling.md, scaling.json, scaling.png")
    scaling.set_defaults(func=_run_scaling)
    demo = subparsers.add_parser("demo", help="the embedded default: a tiny vanilla/base/anchor/mesh comparison on CPU")
    demo.add_argument("--out", default="meshlm-demo", help="report folder (default: ./meshlm-demo)")
    demo.add_argument("--max-steps", type=int, help=f"steps per variant (default: {DEMO['max_steps']})")
    demo.add_argument(
        "--cache-dir", help="where tokenizers and shards are cached (default: $MESHLM_CACHE or ~/.cache/meshlm)"
    )
    demo.set_defaults(func=run_demo)
