"""``meshlm train``: flags named after :class:`~meshlm.train.loop.TrainConfig` fields, or ``--config run.yaml``
(or a run folder's ``run.json``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from meshlm.config import PRESETS
from meshlm.errors import MeshLMError
from meshlm.train.loop import TrainConfig, max_steps_of, train

# help of every TrainConfig field; a field whose default is None says what None means, the others
# get "(default: <dataclass default>)" appended
HELP = {
    "data": "builtin:NAME, a file/folder/glob of .txt/.jsonl/.parquet, hf:DATASET[:CONFIG][:SPLIT] or a shard folder",
    "out": "run folder: run.json, log.jsonl, checkpoints/ and, at the end, model/",
    "tokenizer": "neox (needs meshlm[neox]), bpe:N, a tokenizer.json or an HF name "
    "(default: the shard folder's own tokenizer)",
    "preset": "Pythia size the model starts from",
    "layout": "e.g. 6, 1+4R2+1, 4+8+8+4 (default: the preset's vanilla layout)",
    "scheme": "base, residual, anchor, anchor*, a+b, static, dynamic or mesh (default: base)",
    "buffer_size": "MeSH memory slots (default: K + 3)",
    "router_init": "MeSH router init: normal, uniform or fresh_slot (default: normal)",
    "router_init_bias": "fresh_slot's bias on each step's own slot (default: 2.0)",
    "mesh_transition_input": "what the transitional MeSH routers see: prelude or embedding (default: prelude)",
    "hidden_size": "model width (default: the preset's)",
    "num_attention_heads": "attention heads (default: the preset's)",
    "intermediate_size": "MLP width (default: 4 x hidden size)",
    "max_position_embeddings": "longest sequence the model accepts (default: 2048)",
    "scale_embeddings": "multiply embeddings by sqrt(hidden size) (default: on)",
    "rotary_pct": "share of each head's dimensions that get rotary embeddings (default: 0.25)",
    "initializer_range": "std of the normal init of weight matrices (default: 0.02)",
    "seq_len": "tokens per training sequence",
    "batch_tokens": "global batch in tokens (sequences x seq-len), split over ranks and micro-batches",
    "micro_batch": "sequences per forward pass on one rank (default: the whole per-rank batch)",
    "max_steps": "optimizer steps (default: --max-tokens / --batch-tokens)",
    "max_tokens": "training tokens, the alternative to --max-steps (default: none, give one of the two)",
    "stop_after": "stop (with a checkpoint) after this many steps, keeping the schedule of --max-steps "
    "(default: run to the end)",
    "lr": "peak learning rate (linear warm-up, cosine decay)",
    "weight_decay": "AdamW weight decay of the weight matrices",
    "scheme_weight_decay": "weight decay of the state-passing scheme's matrices (MeSH routers, linear's adapter) "
    "instead of --weight-decay, e.g. 0 to exempt them (default: --weight-decay)",
    "scheme_lr_scale": "learning rate of the state-passing scheme's matrices as a multiple of --lr, e.g. 0.1 "
    "(default: 1)",
    "warmup_frac": "share of the steps spent warming up",
    "final_lr_frac": "final learning rate as a share of the peak",
    "grad_clip": "clip the gradient norm to this",
    "seed": "seed of the init and of the data order",
    "eval_every": "evaluate held-out loss every N steps (and always at the end); 0 = only at the end",
    "eval_batches": "held-out micro-batches per evaluation",
    "log_every": "log (and print with --no-progress) every N steps",
    "save_every": "checkpoint every N steps (and always at the end); 0 = only at the end",
    "keep_checkpoints": "newest checkpoints kept",
    "resume": "continue from the newest checkpoint in --out",
    "compile": "torch.compile the model (the first step compiles: a minute or more on CPU)",
    "fsdp": "shard with FSDP2 under torchrun instead of DDP",
    "device": "cpu, cuda, cuda:1 ... (default: cuda if available, under torchrun the rank's GPU)",
    "cache_dir": "where tokenizers and tokenized sources are cached (default: $MESHLM_CACHE or ~/.cache/meshlm)",
    "progress": "a progress bar; --no-progress prints a plain line every --log-every steps instead",
    "tensorboard": "write TensorBoard events to OUT/tb (needs meshlm[tensorboard])",
    "wandb": "also log the TensorBoard scalars to this Weights & Biases project, from rank 0 (needs pip install "
    "wandb; WANDB_MODE=offline and the other WANDB_* variables are honoured) (default: off)",
    "wandb_run_name": "the W&B run's name (default: the --out folder's name)",
    "linear_init": "linear scheme's adapter init: identity (starts as base recursion) or normal (Huginn's "
    "random init, N(0, initializer_range)) (default: identity)",
    "diagonal_decay_init": "diagonal scheme's initial per-channel decay a, in (0, 1) (default: 0.5)",
    "train_loops": "loop count per optimizer step: fixed (the layout's K), uniform:MIN-MAX or poisson:MEAN, "
    "drawn from (seed, step) so every rank and a resumed run agree",
    "backprop_loops": "backpropagate through the last N loop iterations only; earlier ones run under no_grad "
    "(default: all of them)",
    "activation_checkpointing": "none, full (recompute every unrolled layer in backward) or selective (every other)",
}

# placeholders shown in --help where the field name would mislead (default: the name in capitals)
METAVARS = {"preset": "NAME", "wandb": "PROJECT", "wandb_run_name": "NAME"}


def _arg_type(annotation):
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return kind
    return str


def _help(f: dataclasses.Field, kind: type) -> str:
    """The field's help with its default: the dataclass default, unless the text names it already."""
    text = HELP[f.name]
    if f.name == "preset":
        text = f"{text}: {', '.join(PRESETS)}"
    if "default" in text or f.default is None:
        return text
    if f.default == "":
        return f"{text} (required, as a flag or in --config)"
    shown = ("on" if f.default else "off") if kind is bool else f.default
    return f"{text} (default: {shown})"


def add_train_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per TrainConfig field but ``skip``, default None so YAML values and dataclass defaults show."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra" or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _arg_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_help(f, kind))
        else:
            choices = list(PRESETS) if f.name == "preset" else None
            metavar = METAVARS.get(f.name)
            parser.add_argument(flag, type=kind, default=None, choices=choices, metavar=metavar, help=_help(f, kind))
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file of the same options, or a run's run.json; flags override it (default: none)",
    )


def read_config_file(path: Path) -> dict:
    """The option mapping of a ``--config`` file, keys normalised to underscores.

    The file is a YAML mapping of option: value, or a run folder's ``run.json``, whose ``train``
    section is the run's whole TrainConfig (JSON is YAML): a finished run is repeated with
    ``--config RUN/run.json --out NEW`` and continued with ``--config RUN/run.json --resume``.
    """
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise MeshLMError(f"cannot read --config {path}: {err}") from err
    if isinstance(loaded, dict) and isinstance(loaded.get("train"), dict):  # no option is named "train"
        loaded = loaded["train"]
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
    """Train; exit 128 + N when signal N (SIGINT 130, SIGTERM 143) stopped the run after its checkpoint."""
    cfg = config_from_args(args)
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns; the first one reports
        print(json.dumps(summary, indent=2))
        if summary["steps"] == max_steps_of(cfg):
            print(f"model saved to {Path(cfg.out) / 'model'}", file=sys.stderr)
    signum = summary.get("interrupted_by_signal")
    return 128 + signum if signum else 0


def add_subcommand(subparsers) -> None:
    """Register ``meshlm train``."""
    parser = subparsers.add_parser("train", help="train a model (single process, or under torchrun for DDP/FSDP)")
    add_train_arguments(parser)
    parser.set_defaults(func=_run)
