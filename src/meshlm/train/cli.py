"""``meshlm train``: flags named after :class:`~meshlm.train.loop.TrainConfig` fields, or ``--config run.yaml``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from meshlm.errors import MeshLMError
from meshlm.train.loop import TrainConfig, train

HELP = {
    "data": "builtin:NAME, a file/folder/glob of .txt/.jsonl/.parquet, hf:DATASET[:CONFIG][:SPLIT] or a shard folder",
    "tokenizer": "neox, bpe:N, a tokenizer.json, an HF name (default: the shard folder's own tokenizer)",
    "preset": "Pythia size the model starts from (pythia-14m ... pythia-1.4b)",
    "batch_tokens": "global batch in tokens (sequences x seq-len), split over ranks and micro-batches",
    "micro_batch": "sequences per forward pass on one rank (default: the whole per-rank batch)",
    "eval_every": "evaluate held-out loss every N steps (and always at the end); 0 = only at the end",
    "stop_after": "stop (with a checkpoint) after this many steps, keeping the schedule of --max-steps",
    "save_every": "checkpoint every N steps (and always at the end); 0 = only at the end",
    "train_loops": "loop count per optimizer step: fixed (the layout's K), uniform:MIN-MAX or poisson:MEAN, "
    "drawn from (seed, step) so every rank and a resumed run agree",
    "backprop_loops": "backpropagate through the last N loop iterations only; earlier ones run under no_grad",
    "activation_checkpointing": "none, full (recompute every unrolled layer in backward) or selective (every other)",
}


def _arg_type(annotation):
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return kind
    return str


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, default None so YAML values and dataclass defaults show through."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _arg_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP.get(f.name))
        else:
            parser.add_argument(flag, type=kind, default=None, help=HELP.get(f.name))
    parser.add_argument("--config", type=Path, help="YAML file of the same options (flags override it)")


def read_config_file(path: Path) -> dict:
    """The option mapping of a ``--config`` YAML file, keys normalised to underscores."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise MeshLMError(f"cannot read --config {path}: {err}") from err
    if not isinstance(loaded, dict):
        raise MeshLMError(f"--config {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def config_from_args(args: argparse.Namespace, file_values: dict | None = None) -> TrainConfig:
    """Merge the ``--config`` YAML (or ``file_values`` already read from it) and the given flags."""
    if file_values is None:
        file_values = read_config_file(args.config) if args.config is not None else {}
    values = dict(file_values)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return TrainConfig.from_dict(values)


def _run(args: argparse.Namespace) -> int:
    summary = train(config_from_args(args))
    print(json.dumps(summary, indent=2))
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``meshlm train``."""
    parser = subparsers.add_parser("train", help="train a model (single process, or under torchrun for DDP/FSDP)")
    add_train_arguments(parser)
    parser.set_defaults(func=_run)
