"""``meshlm probe``: the section-5 diagnostics of one model, or several side by side (``--compare``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from meshlm.errors import MeshLMError
from meshlm.probe.metrics import DEFAULT_SIGMA_FRAC, DEFAULT_SPECTRUM_K, KERNELS
from meshlm.probe.run import (
    COMPARE_FILE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SAMPLES,
    PRECISIONS,
    PROBE_FILE,
    compare_dirs,
    probe_dir,
)

EPILOG = """examples:
  meshlm probe runs/mesh/model --data builtin:wiki --samples 500 --seq-len 2048 --out probes/mesh
  meshlm probe --compare probes/base probes/mesh --labels base,MeSH --out probes/base-vs-mesh
"""


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    labels = [part.strip() for part in text.split(",")]
    if not all(labels):
        raise MeshLMError(f"--labels takes comma-separated non-empty names, got {text!r}.")
    return labels


def _summary(label: str, result: dict[str, Any]) -> list[str]:
    """Three lines per model: its label, the update magnitude per block, the effective rank per state."""
    update = result["update_magnitude"]
    erank = result["effective_rank"]
    blocks = "  ".join(f"{b} {m:.3f}" for b, m in zip(update["blocks"], update["mean"], strict=True))
    ranks = "  ".join(f"{n} {m:.1f}" for n, m in zip(erank["names"], erank["mean"], strict=True))
    head = f"{label} (n={result['num_samples']}, seq {result['seq_len']})"
    return [head, f"  update magnitude  {blocks}", f"  effective rank    {ranks}"]


def _written(out: Path) -> str:
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return f"wrote {out}: {', '.join(files)}"


def _run(args: argparse.Namespace) -> int:
    if (args.model_dir is None) == (args.compare is None):
        raise MeshLMError("give either one MODEL_DIR or --compare DIR1 DIR2 ... (not both).")
    if args.labels is not None and args.compare is None:
        raise MeshLMError("--labels names the folders of --compare; use it with --compare.")
    options = {
        "samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "cache_dir": args.cache_dir,
        "device": args.device,
        "kernel": args.kernel,
        "sigma_frac": args.sigma_frac,
        "linear_cka": args.linear_cka,
        "spectrum_k": args.spectrum_k,
        "split": args.split,
        "core_outputs": args.core_outputs,
        "precision": args.precision,
    }
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise MeshLMError(f"--out {out} is a file; give a folder for the probe results.")
    if args.compare is not None:
        results = compare_dirs(
            args.compare, out, labels=_labels(args.labels), data=args.data, figures=args.figures, **options
        )
    else:
        if args.data is None:
            raise MeshLMError("meshlm probe MODEL_DIR needs --data SOURCE (held-out text or a shard folder).")
        result = probe_dir(args.model_dir, args.data, out_dir=out, figures=args.figures, **options)
        results = {result["label"]: result}
    for label, result in results.items():
        print("\n".join(_summary(label, result)))
    print(_written(out))
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``meshlm probe``."""
    p = subparsers.add_parser(
        "probe",
        help="diagnostics of recursion: update magnitude, CKA, spectra, MeSH routers (+ figures)",
        description=(
            f"Probe a saved model on held-out windows of --data; write {PROBE_FILE} and PNG figures to --out.\n"
            "With --compare, put several models (model folders or earlier probe outputs) side by side:\n"
            f"{COMPARE_FILE} and one figure per diagnostic."
        ),
        epilog=EPILOG,
    )
    p.add_argument(
        "model_dir", nargs="?", help="model folder (or a training run folder holding model/); omit with --compare"
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        help="model folders and/or folders holding probe.json (default: probe one MODEL_DIR)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for probe.json / compare.json and the figures")
    p.add_argument("--labels", metavar="A,B,...", help="labels of the --compare folders (default: scheme + layout)")
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="any --data source (a shard folder, file, folder, glob, builtin:NAME, hf:...); its val split is used, "
        "or train if val has too few windows (default: none; needed for a MODEL_DIR)",
    )
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="held-out windows (default: %(default)s)")
    p.add_argument("--seq-len", type=int, help="tokens per sample (default: the model's max positions)")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="samples per forward pass (default: %(default)s)"
    )
    p.add_argument("--kernel", choices=KERNELS, default="rbf", help="main CKA kernel (default: %(default)s)")
    p.add_argument(
        "--sigma-frac",
        type=float,
        default=DEFAULT_SIGMA_FRAC,
        help="RBF bandwidth as a fraction of the median pairwise distance (default: %(default)s)",
    )
    p.add_argument("--linear-cka", action="store_true", help="also compute linear CKA, cka_linear.png (default: off)")
    p.add_argument(
        "--spectrum-k",
        type=int,
        default=DEFAULT_SPECTRUM_K,
        help="singular values kept per state (default: %(default)s)",
    )
    p.add_argument(
        "--split",
        metavar="LAYOUT",
        help="block boundaries of a vanilla model, e.g. 4+8+8+4 (default: prelude round(N/6), two equal cores)",
    )
    p.add_argument(
        "--core-outputs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the raw core outputs h_m(t) (default: for recursive models with a scheme other than base)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument(
        "--precision", choices=PRECISIONS, default="bf16", help="bf16 autocast on CUDA, or fp32 (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where tokenized text sources are cached (default: $MESHLM_CACHE or ~/.cache/meshlm)",
    )
    p.add_argument(
        "--no-figures", dest="figures", action="store_false", help="write the JSON only (default: JSON and PNG figures)"
    )
    p.set_defaults(func=_run)
