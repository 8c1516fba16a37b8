"""xz settings for ``meshlm data pack``: bytes per token and speed on samples of a shard folder.

For each ``.bin`` file named (default: the first train file), the first ``--sample-mb`` MiB are
compressed with each setting (xz container, stdlib ``lzma``) and decompressed again (checked).
Speeds are MB (10^6 bytes) of token data per CPU second of this process
(``time.process_time``), so that a machine busy with other jobs still gives comparable numbers;
bytes per token assume the folder's dtype. ``pack`` uses LZMA2 preset 6 (docs/data.md says why).

    PYTHONPATH=src python bench/pack_compression.py /tmp/meshlm-offline/neox --files train-00000.bin
"""

from __future__ import annotations

import argparse
import lzma
import time
from pathlib import Path

from meshlm.data.shards import TokenShards

SETTINGS = {
    "preset 0": [{"id": lzma.FILTER_LZMA2, "preset": 0}],
    "preset 1": [{"id": lzma.FILTER_LZMA2, "preset": 1}],
    "preset 2": [{"id": lzma.FILTER_LZMA2, "preset": 2}],
    "preset 3": [{"id": lzma.FILTER_LZMA2, "preset": 3}],
    "preset 6": [{"id": lzma.FILTER_LZMA2, "preset": 6}],
    "preset 9": [{"id": lzma.FILTER_LZMA2, "preset": 9}],
    "preset 6, lc=0 lp=1 pb=1 (16-bit aligned)": [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 0, "lp": 1, "pb": 1}],
    "delta dist=2 + preset 6": [{"id": lzma.FILTER_DELTA, "dist": 2}, {"id": lzma.FILTER_LZMA2, "preset": 6}],
}


def measure(data: bytes, filters: list[dict]) -> tuple[int, float, float]:
    """Compressed size, compression and decompression CPU seconds of ``data``."""
    start = time.process_time()
    packed = lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters)
    mid = time.process_time()
    if lzma.decompress(packed) != data:
        raise AssertionError("round trip failed")
    return len(packed), mid - start, time.process_time() - mid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards", help="shard folder")
    parser.add_argument("--files", nargs="+", help="its .bin files to sample (default: the first train file)")
    parser.add_argument("--sample-mb", type=float, default=12, help="MiB read from the start of each file")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), metavar="NAME")
    args = parser.parse_args()
    shards = TokenShards(args.shards)
    names = args.files or [shards.manifest["splits"]["train"]["files"][0]["name"]]
    samples = {}
    for name in names:
        with open(Path(args.shards) / name, "rb") as fh:
            samples[name] = fh.read(int(args.sample_mb * (1 << 20)))
    print(f"| setting | {' | '.join(f'{n} ({len(d) / 1e6:.1f} MB)' for n, d in samples.items())} |")
    print(f"| --- | {' | '.join('---' for _ in samples)} |")
    for label in args.settings:
        cells = []
        for data in samples.values():
            size, comp, decomp = measure(data, SETTINGS[label])
            tokens, mb = len(data) / shards.dtype.itemsize, len(data) / 1e6
            cells.append(f"{size / tokens:.3f} B/token, {mb / comp:.2f} MB/s in, {mb / decomp:.0f} MB/s out")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
