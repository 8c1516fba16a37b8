"""Pack a shard folder into xz chunks of bounded size, and unpack them one call at a time.

Why: a machine that receives at most a few tens of MiB per command (and keeps nothing once
released) can only get a large corpus piece by piece. ``pack_shards`` writes every file of a
shard folder, laid end to end as one byte stream, into independent xz streams
``chunk-0000.xz``, ``chunk-0001.xz`` ... of at most ``chunk_mb`` MiB each, plus ``pack.json``
(the shard manifest, every file's size, offset in the stream and sha256, every chunk's sha256
and the byte range and file pieces it covers). ``unpack_chunks`` adds whichever chunks it is
given to a hidden staging folder next to the output, verifying each against ``pack.json``; the
call that completes the set checks every file's sha256 and only then renames the finished shard
folder into place. Format and usage: docs/data.md ("Moving a shard folder in chunks").
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from meshlm.data.cache import publish, sha256_file, temp_sibling
from meshlm.data.shards import TokenShards
from meshlm.data.sources import SHARD_MANIFEST, is_shard_dir
from meshlm.errors import MeshLMError

PACK_MANIFEST = "pack.json"
PACK_FORMAT = "meshlm-shard-pack"
PACK_VERSION = 1
MIB = 1 << 20
BLOCK = MIB  # bytes read, compressed or decompressed at a time: memory stays bounded
# A chunk is closed once its compressed size is this close to the limit. liblzma emits its output
# in LZMA2 chunks of at most 64 KiB compressed, so little is still held back at that point (measured:
# under 0.1 MiB); the margin covers that plus the block just fed. A chunk that ends up over the limit
# anyway is compressed again from fewer bytes.
MARGIN = 2 * MIB
MIN_CHUNK_BYTES = 4096  # an xz stream of one byte is about 60
DEFAULT_PRESET = 6  # measured against 0-9 and filter variants: bench/pack_compression.py, docs/data.md
PARTIAL = ".partial"  # suffix of every file while it is staged
CHUNK_KEYS = ("name", "bytes", "sha256", "start", "end", "raw_sha256", "covers")


def chunk_name(index: int) -> str:
    return f"chunk-{index:04d}.xz"


def _folder_files(folder: Path) -> list[Path]:
    """Every regular file below ``folder``, sorted by relative path: what a pack carries."""
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())


def _pieces(files: list[dict], start: int, end: int) -> list[dict]:
    """The file pieces ``{file, offset, bytes}`` that stream bytes ``[start, end)`` fall on, in order."""
    return [
        {
            "file": f["name"],
            "offset": max(start, f["offset"]) - f["offset"],
            "bytes": min(end, stop) - max(start, f["offset"]),
        }
        for f in files
        if (stop := f["offset"] + f["bytes"]) > start and f["offset"] < end
    ]


def _blocks(read: Callable[[int], bytes], count: int, short: str) -> Iterator[bytes]:
    """``count`` bytes from ``read``, at most ``BLOCK`` at a time; MeshLMError ``short`` if they run out."""
    while count:
        block = read(min(count, BLOCK))
        if not block:
            raise MeshLMError(short)
        count -= len(block)
        yield block


def _read(folder: Path, files: list[dict], start: int, end: int) -> Iterator[bytes]:
    """Stream bytes ``[start, end)`` of the pack, at most ``BLOCK`` at a time."""
    for piece in _pieces(files, start, end):
        with open(folder / piece["file"], "rb") as fh:
            fh.seek(piece["offset"])
            yield from _blocks(fh.read, piece["bytes"], f"{folder / piece['file']} shrank while it was packed.")


def _compress_chunk(
    folder: Path, files: list[dict], out: Path, name: str, start: int, end: int, limit: int, preset: int
) -> dict:
    """Compress stream bytes from ``start`` into ``out/name``: up to ``end``, or fewer once the
    compressed size is within ``MARGIN`` (at most half the limit) of ``limit``.

    Returns the chunk's manifest entry; its size may still exceed ``limit`` (the caller retries).
    """
    position, size, margin = start, 0, min(MARGIN, limit // 2)
    xz = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)
    digest, raw = hashlib.sha256(), hashlib.sha256()
    with open(out / name, "wb") as fh:

        def write(data: bytes) -> None:
            nonlocal size
            fh.write(data)
            digest.update(data)
            size += len(data)

        for block in _read(folder, files, start, end):
            raw.update(block)
            position += len(block)
            write(xz.compress(block))
            if size + margin >= limit:
                break
        write(xz.flush())
    return {
        "name": name,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "start": start,
        "end": position,
        "raw_sha256": raw.hexdigest(),
        "covers": _pieces(files, start, position),
    }


def _pack_segment(
    folder: Path, files: list[dict], out: Path, segment: int, start: int, end: int, limit: int, preset: int
) -> list[dict]:
    """Stream bytes ``[start, end)`` as consecutive chunks ``seg<segment>-<n>.xz``, each within ``limit``.

    A chunk over the limit is compressed again from fewer bytes, so this ends (a chunk of one
    byte is about 60 bytes of xz) and every chunk fits.
    """
    chunks, position, cap = [], start, end - start
    while position < end:
        name = f"seg{segment:03d}-{len(chunks):04d}.xz"
        chunk = _compress_chunk(folder, files, out, name, position, min(end, position + cap), limit, preset)
        if chunk["bytes"] > limit:
            raw = chunk["end"] - chunk["start"]
            cap = max(1, min(raw - 1, raw * limit // chunk["bytes"] * 9 // 10))
            continue
        chunks.append(chunk)
        position = chunk["end"]
    return chunks


def pack_shards(
    shard_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    chunk_mb: float = 48,
    preset: int = DEFAULT_PRESET,
    jobs: int = 1,
) -> Path:
    """Write the shard folder ``shard_dir`` as xz chunks of at most ``chunk_mb`` MiB plus ``pack.json``.

    Every shard file's sha256 is checked against the shard manifest first, so a corrupt folder
    is never packed. A chunk is closed once its compressed size comes within ``MARGIN`` of the
    limit; one that still ends up over it (with limits below a few MiB: liblzma emits output in
    pieces of up to 64 KiB) is compressed again from fewer bytes. ``preset`` is the xz preset.
    ``jobs`` > 1 cuts the stream into that many equal byte ranges compressed by as many
    processes, each range ending in a partly filled chunk (so up to ``jobs - 1`` more chunks).
    The pack is written to a temporary sibling of ``out_dir`` and renamed into place; an
    ``out_dir`` that exists and is not empty is refused.
    """
    shards = TokenShards(shard_dir)
    limit = int(chunk_mb * MIB)
    if limit < MIN_CHUNK_BYTES:
        raise MeshLMError(
            f"--chunk-mb must be at least {MIN_CHUNK_BYTES / MIB:.4f} ({MIN_CHUNK_BYTES} bytes), got {chunk_mb}."
        )
    if preset not in range(10):
        raise MeshLMError(f"--preset must be an xz preset 0..9, got {preset}.")
    if jobs < 1:
        raise MeshLMError(f"--jobs must be at least 1, got {jobs}.")
    out = Path(out_dir).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MeshLMError(f"{out} already exists and is not empty; choose another --out for the pack.")
    expected = {f["name"]: f["sha256"] for split in shards.manifest["splits"].values() for f in split["files"]}
    files, total = [], 0
    for path in _folder_files(shards.path):
        name = path.relative_to(shards.path).as_posix()
        files.append({"name": name, "bytes": path.stat().st_size, "offset": total, "sha256": sha256_file(path)})
        total += files[-1]["bytes"]
        if name in expected and files[-1]["sha256"] != expected[name]:
            raise MeshLMError(f"shard {path} does not match its manifest's sha256; not packing a corrupt folder.")
    tmp = temp_sibling(out)
    try:
        bounds = [total * j // jobs for j in range(jobs + 1)]
        segments = [(shards.path, files, tmp, j, bounds[j], bounds[j + 1], limit, preset) for j in range(jobs)]
        if jobs == 1:
            parts = [_pack_segment(*segments[0])]
        else:
            with ProcessPoolExecutor(jobs) as pool:
                parts = list(pool.map(_pack_segment, *zip(*segments, strict=True)))
        chunks = [chunk for part in parts for chunk in part]
        for i, chunk in enumerate(chunks):
            (tmp / chunk["name"]).rename(tmp / chunk_name(i))
            chunk["name"] = chunk_name(i)
        manifest = {
            "format": PACK_FORMAT,
            "version": PACK_VERSION,
            "compression": f"xz, LZMA2 preset {preset}, CRC64",
            "chunk_limit_bytes": limit,
            "stream_bytes": total,
            "tokens": sum(shards.num_tokens(split) for split in shards.splits),
            "shard_manifest": shards.manifest,
            "files": files,
            "chunks": chunks,
        }
        (tmp / PACK_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)
    return out


@dataclass(frozen=True)
class Pack:
    """A parsed, checked ``pack.json``: ``id`` is the sha256 of its bytes (16 hex)."""

    path: Path
    id: str
    files: list[dict]
    chunks: dict[str, dict]
    tokens: int

    @classmethod
    def load(cls, path: Path) -> Pack:
        if not path.is_file():
            raise MeshLMError(
                f"no pack manifest {path}; carry {PACK_MANIFEST} from `meshlm data pack` with the chunks."
            )
        data = path.read_bytes()
        try:
            m = json.loads(data)
            if (m["format"], m["version"]) != (PACK_FORMAT, PACK_VERSION):
                raise ValueError(f"not a {PACK_FORMAT} v{PACK_VERSION} manifest")
            files = [{k: f[k] for k in ("name", "bytes", "offset", "sha256")} for f in m["files"]]
            chunks = {c["name"]: {k: c[k] for k in CHUNK_KEYS} for c in m["chunks"]}
            offset = 0
            for f in files:
                name = PurePosixPath(f["name"])
                if (
                    name.is_absolute()
                    or ".." in name.parts
                    or "\\" in f["name"]
                    or f["offset"] != offset
                    or f["bytes"] < 0
                ):
                    raise ValueError(f"bad file entry {f['name']!r}")
                offset += f["bytes"]
            position = 0
            for i, c in enumerate(chunks.values()):
                if c["name"] != chunk_name(i) or c["start"] != position or c["end"] <= position:
                    raise ValueError(f"bad chunk entry {c['name']!r}")
                if c["covers"] != _pieces(files, position, c["end"]):
                    raise ValueError(f"{c['name']} covers other file pieces than its byte range")
                position = c["end"]
            if position != offset or SHARD_MANIFEST not in {f["name"] for f in files}:
                raise ValueError("its chunks do not cover its files")
        except (ValueError, KeyError, TypeError) as e:
            raise MeshLMError(
                f"{path} is not a valid pack manifest ({e}); copy it again from the packing machine."
            ) from None
        return cls(path, hashlib.sha256(data).hexdigest()[:16], files, chunks, int(m["tokens"]))

    def file(self, name: str) -> dict:
        return next(f for f in self.files if f["name"] == name)


@dataclass(frozen=True)
class UnpackStatus:
    """Where an unpack stands after one call."""

    out: Path
    added: list[str]
    present: int
    total: int
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing


def _inputs(paths: Sequence[str | os.PathLike], manifest: str | os.PathLike | None) -> tuple[Pack, list[Path]]:
    """The pack manifest and the chunk files named by ``paths`` (pack folders and/or chunk files)."""
    if not paths:
        raise MeshLMError("give a pack folder or chunk files to unpack.")
    chunks, folders = [], set()
    for p in map(Path, paths):
        if p.is_dir():
            folders.add(p)
            chunks += sorted(p.glob("chunk-*.xz"))
        elif p.is_file():
            folders.add(p.parent)
            chunks.append(p)
        else:
            raise MeshLMError(f"{p} does not exist; give a pack folder or chunk files.")
    if manifest is None:
        if len(folders) != 1:
            raise MeshLMError("chunks from several folders: name their pack manifest with --manifest.")
        manifest = next(iter(folders)) / PACK_MANIFEST
    pack = Pack.load(Path(manifest))
    for c in chunks:
        if c.name not in pack.chunks:
            last = chunk_name(len(pack.chunks) - 1)
            raise MeshLMError(f"{c} is not a chunk of the pack {pack.path} (it has {chunk_name(0)} .. {last}).")
    return pack, sorted(set(chunks), key=lambda c: c.name)


def _check_out(out: Path, pack: Pack) -> bool:
    """True if ``out`` already holds this pack's shard folder; error if it holds anything else."""
    if is_shard_dir(out):
        if sha256_file(out / SHARD_MANIFEST) == pack.file(SHARD_MANIFEST)["sha256"]:
            return True
        raise MeshLMError(f"{out} already holds a different shard folder; choose another --out.")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise MeshLMError(f"{out} already exists and is not a shard folder; choose another --out.")
    return False


def _stage_path(out: Path, pack: Pack) -> Path:
    return out.parent / f".{out.name}.unpack-{pack.id}"


def _staging(out: Path, pack: Pack) -> Path:
    """The hidden folder next to ``out`` where this pack's files are assembled (created on first use)."""
    stage = _stage_path(out, pack)
    if not (stage / "files").is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(stage)
        for f in pack.files:
            target = tmp / "files" / (f["name"] + PARTIAL)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.truncate(f["bytes"])
        (tmp / "done").mkdir()
        if not publish(tmp, stage):
            raise MeshLMError(f"{stage} was created concurrently; run one unpack at a time.")
    return stage


def _verify_chunk(pack: Pack, path: Path) -> dict:
    """The manifest entry of chunk ``path``, after checking the file's size and sha256 against it."""
    entry = pack.chunks[path.name]
    if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
        raise MeshLMError(f"checksum mismatch for {path}: it is not {entry['name']} of {pack.path}; copy it again.")
    return entry


def _add_chunk(stage: Path, pack: Pack, path: Path) -> None:
    """Verify chunk ``path`` and write its bytes, decompressed ``BLOCK`` at a time, into the staged files."""
    entry = _verify_chunk(pack, path)
    raw = hashlib.sha256()
    try:
        with lzma.open(path, "rb") as xz:
            for piece in entry["covers"]:
                with open(stage / "files" / (piece["file"] + PARTIAL), "r+b") as fh:
                    fh.seek(piece["offset"])
                    for data in _blocks(xz.read, piece["bytes"], f"{path} holds fewer bytes than {pack.path} says."):
                        raw.update(data)
                        fh.write(data)
            extra = xz.read(1)
    except (lzma.LZMAError, EOFError) as e:
        raise MeshLMError(f"{path} is not a valid xz chunk ({e}); copy it again.") from None
    if extra or raw.hexdigest() != entry["raw_sha256"]:
        raise MeshLMError(f"{path} decompressed to other bytes than {pack.path} says; copy it again.")
    (stage / "done" / entry["name"]).touch()


def _staged(files: Path, name: str) -> Path:
    """A staged file: ``NAME.partial``, or ``NAME`` when an interrupted finish already renamed it."""
    partial = files / (name + PARTIAL)
    return partial if partial.exists() or not (files / name).exists() else files / name


def _finish(stage: Path, pack: Pack, out: Path) -> None:
    """All chunks are in: check every file's sha256, drop the ``.partial`` suffixes, move into ``out``."""
    files = stage / "files"
    bad = [f["name"] for f in pack.files if sha256_file(_staged(files, f["name"])) != f["sha256"]]
    if bad:
        redo = sorted({c["name"] for c in pack.chunks.values() for p in c["covers"] if p["file"] in bad})
        for name in redo:
            (stage / "done" / name).unlink(missing_ok=True)
        raise MeshLMError(
            f"{bad[0]} does not match its sha256 after every chunk was added (the staging folder {stage} was "
            f"changed); unpack {', '.join(redo)} again."
        )
    for f in pack.files:
        _staged(files, f["name"]).rename(files / f["name"])
    if not publish(files, out):
        raise MeshLMError(f"{out} was written concurrently by another process; run one unpack at a time.")
    shutil.rmtree(stage)
    TokenShards(out)


def unpack_chunks(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, manifest: str | os.PathLike | None = None
) -> UnpackStatus:
    """Add the chunks in ``paths`` (pack folders and/or chunk files) to the shard folder ``out_dir``.

    Call it once per chunk, in any order; a chunk already added is verified and skipped. Until
    every chunk is in, the files wait in ``.<out>.unpack-<pack id>/`` next to ``out_dir`` as
    ``NAME.partial``, so ``out_dir`` never holds a partial shard folder; the call that adds the
    last chunk checks every file's sha256 and renames the folder to ``out_dir``.
    """
    pack, chunks = _inputs(paths, manifest)
    out = Path(out_dir).expanduser()
    names = sorted(pack.chunks)
    if _check_out(out, pack):
        shutil.rmtree(_stage_path(out, pack), ignore_errors=True)  # left by a call interrupted after publishing
        return UnpackStatus(out, [], len(names), len(names), [])
    stage = _staging(out, pack)
    added = []
    for chunk in chunks:
        if (stage / "done" / chunk.name).exists():
            _verify_chunk(pack, chunk)
        else:
            _add_chunk(stage, pack, chunk)
            added.append(chunk.name)
    missing = [n for n in names if not (stage / "done" / n).exists()]
    if not missing:
        _finish(stage, pack, out)
    return UnpackStatus(out, added, len(names) - len(missing), len(names), missing)
