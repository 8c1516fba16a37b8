"""``meshlm data``: prepare a token shard folder from a text source, describe one, pack and unpack one."""

from __future__ import annotations

import argparse

from meshlm.data.pack import DEFAULT_PRESET, PACK_MANIFEST, Pack, pack_shards, unpack_chunks
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


def _pack(args: argparse.Namespace) -> int:
    out = pack_shards(args.dir, args.out, chunk_mb=args.chunk_mb, preset=args.preset, jobs=args.jobs)
    pack = Pack.load(out / PACK_MANIFEST)
    size = sum(c["bytes"] for c in pack.chunks.values())
    print(
        f"pack       {out}: {len(pack.chunks)} chunk(s), {size:,} bytes, {size / max(1, pack.tokens):.3f} bytes/token"
    )
    for name, chunk in sorted(pack.chunks.items()):
        print(f"chunk      {name}  {chunk['bytes']:>12,} bytes  stream bytes {chunk['start']:,}..{chunk['end']:,}")
    print(f"next       per call, carry {out / PACK_MANIFEST} and one chunk; run `meshlm data unpack CHUNK --out DIR`")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    status = unpack_chunks(args.paths, args.out, manifest=args.manifest)
    for name in status.added:
        print(f"added      {name}")
    if status.complete:
        print(f"complete   {status.out}: all {status.total} chunk(s) in, every file's sha256 checked")
        _print_summary(TokenShards(status.out))
    else:
        print(f"partial    {status.present}/{status.total} chunk(s) in; missing {', '.join(status.missing)}")
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data prepare|info|pack|unpack``; each parser's ``func(args)`` returns an exit code."""
    data = subparsers.add_parser("data", help="tokenize a corpus into shards, describe, pack or unpack a shard folder")
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
    prepare.add_argument("--tokenizer", required=True, metavar="TOK", help="neox, bpe:N, a tokenizer.json or HF name")
    prepare.add_argument("--out", required=True, metavar="DIR", help="shard folder to create")
    prepare.add_argument(
        "--val-fraction", type=float, default=0.01, metavar="F", help="share of documents held out (by text hash)"
    )
    prepare.add_argument(
        "--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N", help="tokens per .bin file at most"
    )
    prepare.add_argument("--overwrite", action="store_true", help="replace a different shard set already at --out")
    prepare.add_argument("--cache-dir", metavar="DIR", help="where trained bpe:N tokenizers are cached")
    prepare.set_defaults(func=_prepare)

    info = commands.add_parser("info", help="describe a shard folder")
    info.add_argument("dir", help="shard folder")
    info.add_argument("--verify", action="store_true", help="check every shard's sha256")
    info.set_defaults(func=_info)

    pack = commands.add_parser(
        "pack",
        help="compress a shard folder into xz chunks of bounded size (to move it one chunk per command)",
        description="Write every file of a shard folder into xz chunks chunk-0000.xz ... of at most --chunk-mb "
        "MiB each, plus pack.json (sha256 of every chunk and file). See docs/data.md.",
    )
    pack.add_argument("dir", help="shard folder")
    pack.add_argument("--out", required=True, metavar="DIR", help="pack folder to create (must not hold anything)")
    pack.add_argument("--chunk-mb", type=float, default=48, metavar="MB", help="largest chunk, in MiB (default 48)")
    pack.add_argument(
        "--preset", type=int, default=DEFAULT_PRESET, metavar="N", help="xz preset 0-9 (default 6; 0-1: faster, larger)"
    )
    pack.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="compress N byte ranges in parallel (up to N-1 more chunks)"
    )
    pack.set_defaults(func=_pack)

    unpack = commands.add_parser(
        "unpack",
        help="add pack chunks to a shard folder; the call that adds the last one verifies and finishes it",
        description="Add the given chunks (chunk files, or pack folders: every chunk in them) to --out, in any "
        "order, one call per chunk if need be. Partial state waits in a hidden folder next to --out.",
    )
    unpack.add_argument("paths", nargs="+", metavar="PATH", help="chunk files and/or pack folders")
    unpack.add_argument("--out", required=True, metavar="DIR", help="shard folder to assemble")
    unpack.add_argument("--manifest", metavar="FILE", help=f"the pack's {PACK_MANIFEST} (default: next to the chunks)")
    unpack.set_defaults(func=_unpack)
