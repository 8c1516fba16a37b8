"""``meshlm data``: prepare a token shard folder from a text source, and describe one."""

from __future__ import annotations

import argparse

from meshlm.data.shards import DEFAULT_SHARD_TOKENS, TokenShards, prepare_shards
from meshlm.data.tokenizers import load_tokenizer


def _print_summary(shards: TokenShards) -> None:
    m = shards.manifest
    print(f"shards     {shards.path}")
    print(f"tokenizer  {shards.tokenizer_name} (vocab {shards.vocab_size:,}, eos {shards.eos_id}, {m['dtype']})")
    for split in shards.splits:
        files = len(m["splits"][split]["files"])
        print(
            f"{split:<10} {shards.num_tokens(split):>14,} tokens  "
            f"{shards.num_documents(split):>10,} documents  {files} file(s)"
        )
    for source in m["sources"]:
        tokens = sum(source[split]["tokens"] for split in shards.splits)
        docs = sum(source[split]["documents"] for split in shards.splits)
        print(f"source     {source['spec']}: {tokens:,} tokens, {docs:,} documents")


def _prepare(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.tokenizer, corpus=args.data[0], cache_dir=args.cache_dir)
    out = prepare_shards(
        args.data,
        tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
    )
    _print_summary(TokenShards(out))
    return 0


def _info(args: argparse.Namespace) -> int:
    _print_summary(TokenShards(args.dir, verify=args.verify))
    if args.verify:
        print("checksums  ok")
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data prepare`` and ``data info``; each parser's ``func(args)`` returns an exit code."""
    data = subparsers.add_parser("data", help="tokenize a corpus into shards, or describe a shard folder")
    commands = data.add_subparsers(dest="data_command", required=True)

    prepare = commands.add_parser(
        "prepare",
        help="tokenize text into a shard folder (train/val .bin files + manifest + tokenizer)",
        description="Tokenize every document once (each followed by EOS) into a shard folder.",
    )
    prepare.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SRC",
        help="builtin:NAME, a .txt/.jsonl/.parquet file, folder or glob, or hf:DATASET[:CONFIG][:SPLIT]; "
        "repeat to concatenate sources (bpe:N trains on the first)",
    )
    prepare.add_argument(
        "--tokenizer",
        required=True,
        metavar="TOK",
        help="neox (needs meshlm[neox]), bpe:N, a tokenizer.json or HF name",
    )
    prepare.add_argument("--out", required=True, metavar="DIR", help="shard folder to create")
    prepare.add_argument(
        "--val-fraction", type=float, default=0.01, metavar="F", help="share of documents held out (by text hash)"
    )
    prepare.add_argument(
        "--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N", help="tokens per .bin file at most"
    )
    prepare.add_argument("--overwrite", action="store_true", help="replace a different shard set already at --out")
    prepare.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where trained bpe:N tokenizers are cached (default: $MESHLM_CACHE or ~/.cache/meshlm)",
    )
    prepare.set_defaults(func=_prepare)

    info = commands.add_parser("info", help="describe a shard folder")
    info.add_argument("dir", help="shard folder")
    info.add_argument("--verify", action="store_true", help="check every shard's sha256")
    info.set_defaults(func=_info)
