"""``meshlm convert from-neox SRC --out DIR`` and ``meshlm convert to-neox MODEL_DIR --out DIR``.

The command line of :mod:`meshlm.convert`. ``SRC`` is a local Hugging Face GPT-NeoX folder (a
Pythia checkpoint, say) or a hub id already in the local Hugging Face cache: nothing is
downloaded. ``from-neox`` writes a meshlm model folder as ``meshlm train`` does (weights,
tokenizer, checksums); ``to-neox`` writes a plain ``GPTNeoXForCausalLM`` folder. The tokenizer
goes along when the source has one. Weights are saved in fp32. ``--out`` is written into a
temporary sibling first and renamed into place; a folder that already holds files is replaced only
with ``--force``, and only once the new one is complete.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError

from meshlm.convert import CORE_INITS, from_gpt_neox, to_gpt_neox
from meshlm.data.tokenizers import tokenizer_from_folder
from meshlm.errors import MeshLMError
from meshlm.eval.cli import TOKENIZER_FILES, resolve_model_dir
from meshlm.train.checkpoint import save_atomically, write_atomically
from meshlm.train.logging import quiet_transformers

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


def source_folder(src: str) -> Path:
    """The local folder of ``src``: the folder itself, or a hub id's snapshot in the local HF cache."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not HUB_ID.fullmatch(src):
        problem = "is not a folder" if path.exists() else "does not exist"
        raise MeshLMError(f"{src} {problem}; give a GPT-NeoX model folder (config.json + weights)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src, local_files_only=True))
    except (OSError, ValueError):
        raise MeshLMError(
            f"{src} is neither a folder nor a model in the local Hugging Face cache, and meshlm downloads "
            f"nothing; download it first (hf download {src}) or give its folder"
        ) from None


def model_type(folder: Path) -> str | None:
    """``model_type`` of the folder's config.json; MeshLMError if there is no readable one."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except OSError:
        raise MeshLMError(f"{folder} holds no config.json; give a model folder") from None
    except (ValueError, AttributeError):
        raise MeshLMError(f"{folder}/config.json is not a JSON object of a model config") from None


def check_out(out: Path, force: bool, source: Path) -> None:
    """MeshLMError unless ``out`` may be written: new or empty (or ``force``), and apart from ``source``."""
    out, source = out.expanduser().resolve(), source.resolve()
    if out == source or out in source.parents or source in out.parents:
        raise MeshLMError(f"--out {out} overlaps the source folder {source}; write the conversion elsewhere")
    if out.exists() and not out.is_dir():
        raise MeshLMError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MeshLMError(f"--out {out} already holds files; choose another folder or pass --force to replace it")


def load_for_conversion(folder: Path, model_class, args: argparse.Namespace):
    """``model_class`` in fp32 from ``folder``, once its config names that model type and ``--out`` may be written."""
    expected = model_class.config_class.model_type
    kind = model_type(folder)
    if kind != expected:
        raise MeshLMError(f"{folder} holds a {kind!r} model, not a {expected!r} one")
    check_out(args.out, args.force, folder)
    try:
        with quiet_transformers():
            return model_class.from_pretrained(str(folder), dtype=torch.float32)
    except _LOAD_ERRORS as e:
        raise MeshLMError(f"cannot load the {expected} model in {folder}: {' '.join(str(e).split())}") from None


def run_from_neox(args: argparse.Namespace) -> int:
    """Handler of ``meshlm convert from-neox``."""
    from transformers import GPTNeoXForCausalLM

    folder = source_folder(args.src)
    source = load_for_conversion(folder, GPTNeoXForCausalLM, args)
    overrides = {} if args.buffer_size is None else {"buffer_size": args.buffer_size}
    model = from_gpt_neox(source, layout=args.layout, scheme=args.scheme, core_init=args.core_init, **overrides)
    tokenizer = tokenizer_from_folder(folder) if (folder / "tokenizer.json").is_file() else None
    if tokenizer is None:
        print(f"note: {args.src} has no tokenizer.json; the model is saved without a tokenizer", file=sys.stderr)
    cfg = model.config
    state = {"converted_from": args.src, "layout": cfg.layout, "scheme": cfg.scheme, "core_init": args.core_init}
    with quiet_transformers():
        save_atomically(args.out, model, tokenizer, state)
    layers = source.config.num_hidden_layers
    print(f"{args.src} (GPT-NeoX, {layers} layers) -> {args.out} (meshlm, layout {cfg.layout}, scheme {cfg.scheme})")
    return 0


def run_to_neox(args: argparse.Namespace) -> int:
    """Handler of ``meshlm convert to-neox``."""
    from transformers import AutoTokenizer

    from meshlm.model import MeshLMForCausalLM

    folder = resolve_model_dir(args.model_dir)
    model = load_for_conversion(folder, MeshLMForCausalLM, args)
    try:
        has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
        tokenizer = AutoTokenizer.from_pretrained(str(folder)) if has_tokenizer else None
    except _LOAD_ERRORS as e:
        raise MeshLMError(f"cannot load the tokenizer in {folder}: {' '.join(str(e).split())}") from None
    neox = to_gpt_neox(model)
    if tokenizer is None:
        print(f"note: {folder} has no tokenizer; the GPT-NeoX model is saved without one", file=sys.stderr)

    def write(tmp: Path) -> None:
        neox.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    with quiet_transformers():
        write_atomically(args.out, write)
    print(f"{folder} (meshlm, layout {model.config.layout}) -> {args.out} (GPT-NeoX)")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``meshlm convert from-neox|to-neox``."""
    p = subparsers.add_parser(
        "convert",
        help="convert GPT-NeoX / Pythia checkpoints to meshlm models and back",
        description=(
            "Convert a GPT-NeoX (Pythia) checkpoint into a meshlm model (vanilla with identical logits, or "
            "a recursive layout initialised from its layers), or a vanilla meshlm model into GPT-NeoX. "
            "Nothing is downloaded."
        ),
    )
    commands = p.add_subparsers(dest="convert_command", required=True, metavar="DIRECTION")
    src = commands.add_parser(
        "from-neox",
        help="GPT-NeoX folder -> meshlm model folder",
        description=(
            "Prelude layers take the source's first layers, coda layers its last; each core layer takes "
            "the first middle layers (--core-init first) or the mean of the layers it stands for when "
            "unrolled (average; needs a source of the layout's unrolled depth). Scheme parameters keep "
            "their fresh init."
        ),
    )
    src.add_argument(
        "src",
        metavar="SRC",
        help="local Hugging Face GPT-NeoX folder, or a hub id (e.g. EleutherAI/pythia-160m) already in the "
        "local Hugging Face cache",
    )
    src.add_argument("--out", type=Path, required=True, metavar="DIR", help="meshlm model folder to write")
    src.add_argument("--layout", help="e.g. 4+8R2+4 or 4+8+8+4 (default: the source's depth, vanilla)")
    src.add_argument(
        "--scheme", default="base", help="base, residual, anchor, anchor*, a+b, static, dynamic, mesh, linear, diagonal"
    )
    src.add_argument(
        "--core-init", choices=CORE_INITS, default="first", help="which source layers initialise the shared core"
    )
    src.add_argument("--buffer-size", type=int, metavar="N", help="MeSH slots (default: K + 3)")
    src.add_argument("--force", action="store_true", help="replace what --out holds")
    src.set_defaults(func=run_from_neox)

    back = commands.add_parser(
        "to-neox",
        help="vanilla meshlm model folder -> GPT-NeoX folder",
        description="Only vanilla-layout models without embedding scale (e.g. converted by from-neox) convert.",
    )
    back.add_argument("model_dir", help="meshlm model folder (or a training run folder holding model/)")
    back.add_argument("--out", type=Path, required=True, metavar="DIR", help="GPT-NeoX folder to write")
    back.add_argument("--force", action="store_true", help="replace what --out holds")
    back.set_defaults(func=run_to_neox)
