"""The ``meshlm`` command line: one subcommand per pipeline stage.

Every user error (:class:`~meshlm.errors.MeshLMError`) is printed as one ``error: ...`` line
with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from meshlm.accounting import count
from meshlm.config import PRESETS, MeshLMConfig
from meshlm.errors import MeshLMError

# modules that contribute a subcommand through ``add_subcommand(subparsers)``
SUBCOMMAND_MODULES = ("meshlm.data.cli", "meshlm.train.cli", "meshlm.eval.cli", "meshlm.probe.cli", "meshlm.compare")

# the paper's configurations (spec section 2): preset -> (vanilla layout, recursive layouts)
PAPER_CONFIGS = {
    "pythia-160m": ("12", ("2+4R2+2",)),
    "pythia-410m": ("24", ("4+8R2+4", "3+6R3+3")),
    "pythia-1b": ("16", ("3+5R2+3",)),
    "pythia-1.4b": ("24", ("4+8R2+4", "4+8+8+4")),
}


def _fmt(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _params_rows(args: argparse.Namespace) -> list[tuple[str, str, str, dict]]:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="parameter counts and FLOPs per token of a configuration")
    p.add_argument("--preset", choices=sorted(PRESETS), help="Pythia size; omit to list the paper's configurations")
    p.add_argument("--layout", help="e.g. 24, 4+8R2+4, 4+8+8+4 (default: the preset's vanilla layout)")
    p.add_argument("--scheme", help="base, residual, anchor, anchor*, a+b, static, dynamic, mesh")
    p.add_argument("--buffer-size", type=int, help="MeSH slots (default K + 3)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs (default 2048)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_params)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshlm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MeshLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
