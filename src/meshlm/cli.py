"""The meshlm command line: one subcommand per pipeline stage.

Every user error (:class:`~meshlm.errors.MeshLMError`) is printed as one ``error: ...`` line
with exit status 2; anything else is a bug and keeps its traceback.

``meshlm --help`` and ``meshlm --version`` import no engine (torch, transformers): the top
level lists each subcommand by its summary, and only the subcommand that is run (or asked for
``--help``) has its module imported and its full parser built.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import textwrap
from collections.abc import Iterable, Sequence

from meshlm import __version__
from meshlm.errors import MeshLMError

# subcommand -> (module whose ``add_subcommand(subparsers)`` registers it, summary in ``meshlm --help``)
SUBCOMMANDS = {
    "params": ("meshlm.cli", "parameter counts and FLOPs per token of a configuration"),
    "data": ("meshlm.data.cli", "tokenize a corpus into shards, describe, pack or unpack a shard folder"),
    "train": ("meshlm.train.cli", "train a model (single process, or under torchrun for DDP/FSDP)"),
    "eval": ("meshlm.eval.cli", "evaluate a model dir: perplexity, LAMBADA, LM Evaluation Harness tasks"),
    "generate": ("meshlm.generate", "continue a prompt with a saved model (greedy or sampled)"),
    "convert": ("meshlm.convert_cli", "convert GPT-NeoX / Pythia checkpoints to meshlm models and back"),
    "probe": ("meshlm.probe.cli", "diagnostics of recursion: update magnitude, CKA, spectra, MeSH routers (+ figures)"),
    "compare": ("meshlm.compare", "train, evaluate and probe variants at matched compute"),
    "scaling": (
        "meshlm.compare",
        "merge finished sweeps of one recipe at different token budgets into a scaling report",
    ),
    "demo": ("meshlm.compare", "the embedded default: a tiny vanilla/base/anchor/mesh comparison on CPU"),
}

# the paper's configurations (spec section 2): preset -> (vanilla layout, recursive layouts)
PAPER_CONFIGS = {
    "pythia-160m": ("12", ("2+4R2+2",)),
    "pythia-410m": ("24", ("4+8R2+4", "3+6R3+3")),
    "pythia-1b": ("16", ("3+5R2+3",)),
    "pythia-1.4b": ("24", ("4+8R2+4", "4+8+8+4")),
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default; descriptions and epilogs keep their line breaks and example lines.

    An option whose help already names its default (``default: ...``), a required option and a
    positional argument are left as written; a flag that is off unless given shows ``(default: off)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or not action.option_strings or action.default is None:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Wrap each line on its own; an indented line (an example command) stays as written."""
        lines = text.splitlines() or [""]
        return "\n".join(
            indent + line
            if line[:1].isspace()
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in lines
        )


class ArgumentParser(argparse.ArgumentParser):
    """meshlm's parsers (subcommands inherit it): :class:`HelpFormatter` unless told otherwise.

    Abbreviated flags are refused: with them ``--scheme`` silently meant ``--scheme-weight-decay``
    in ``compare``, and a script's meaning would change whenever a flag is added.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _fmt(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _params_rows(args: argparse.Namespace) -> list[tuple[str, str, str, dict]]:
    from meshlm.accounting import count
    from meshlm.config import MeshLMConfig

    if args.preset:
        cfg = MeshLMConfig.from_preset(
            args.preset, layout=args.layout, scheme=args.scheme, buffer_size=args.buffer_size
        )
        return [(args.preset, cfg.layout, cfg.scheme, count(cfg, args.seq_len).as_dict())]
    rows = []
    for preset, (vanilla, recursive) in PAPER_CONFIGS.items():
        rows.append((preset, vanilla, "base", count(MeshLMConfig.from_preset(preset), args.seq_len).as_dict()))
        for layout in recursive:
            for scheme in ("base", "mesh"):
                cfg = MeshLMConfig.from_preset(preset, layout=layout, scheme=scheme)
                rows.append((preset, layout, scheme, count(cfg, args.seq_len).as_dict()))
    return rows


def cmd_params(args: argparse.Namespace) -> int:
    """Print parameter counts and training FLOPs per token."""
    if not args.preset and (args.layout or args.scheme or args.buffer_size):
        raise MeshLMError("--layout/--scheme/--buffer-size need --preset (e.g. --preset pythia-410m)")
    if args.seq_len is not None and args.seq_len < 1:
        raise MeshLMError(f"--seq-len must be at least 1, got {args.seq_len}")
    rows = _params_rows(args)
    if args.json:
        payload = [dict(preset=p, layout=lay, scheme=s, **c) for p, lay, s, c in rows]
        print(json.dumps(payload[0] if args.preset else payload, indent=2))
        return 0
    header = (
        "preset",
        "layout",
        "scheme",
        "total",
        "embedding",
        "non-emb",
        "router",
        "unrolled",
        "FLOPs/token",
    )
    lines = [header]
    for preset, layout, scheme, c in rows:
        lines.append(
            (
                preset,
                layout,
                scheme,
                _fmt(c["total"]),
                _fmt(c["embedding"]),
                f"{c['non_embedding']:,}",
                f"{c['router']:,}",
                str(c["unrolled_layers"]),
                _fmt(c["flops_per_token"]),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(f"(FLOPs per token: training, forward + backward, at seq len {rows[0][3]['seq_len']})")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``meshlm params``."""
    from meshlm.config import PRESETS

    p = subparsers.add_parser("params", help=SUBCOMMANDS["params"][1])
    p.add_argument("--preset", choices=list(PRESETS), help="Pythia size (default: list the paper's configurations)")
    p.add_argument("--layout", help="e.g. 24, 4+8R2+4, 4+8+8+4 (default: the preset's vanilla layout)")
    p.add_argument(
        "--scheme", help="base, residual, anchor, anchor*, a+b, static, dynamic, mesh (default: the preset's, base)"
    )
    p.add_argument("--buffer-size", type=int, help="MeSH slots (default: K + 3)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs (default: 2048)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_params)


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``meshlm`` parser; ``load`` names the modules whose subcommands get full parsers (default: all).

    A subcommand whose module is not loaded is listed by its summary only, so the parser of
    ``meshlm --help`` imports nothing heavy.
    """
    modules = dict.fromkeys(module for module, _ in SUBCOMMANDS.values())
    loaded = set(modules if load is None else load)
    parser = ArgumentParser(prog="meshlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"meshlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        if module in loaded:
            importlib.import_module(module).add_subcommand(sub)
        else:
            for name, (owner, summary) in SUBCOMMANDS.items():
                if owner == module:
                    sub.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshlm`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([SUBCOMMANDS[command][0]] if command in SUBCOMMANDS else [])
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MeshLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
