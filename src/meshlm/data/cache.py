"""Where derived data (trained tokenizers, token shards) is cached, and how it is published.

Everything derived from a corpus is written into a temporary sibling folder and
renamed into place at the end, so a crash or a concurrent writer (several ranks
of one job) never leaves a half-written folder under the final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

CACHE_ENV = "MESHLM_CACHE"


def cache_dir(kind: str, override: str | os.PathLike | None = None) -> Path:
    """Folder for cached ``kind`` data: ``override``, else ``$MESHLM_CACHE/kind``, else ``~/.cache/meshlm/kind``."""
    if override is not None:
        return Path(override).expanduser()
    root = os.environ.get(CACHE_ENV) or "~/.cache/meshlm"
    return Path(root).expanduser() / kind


def temp_sibling(final: Path) -> Path:
    """A fresh, empty temporary folder next to ``final`` (same filesystem, so renaming it is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, final: Path) -> bool:
    """Rename the finished folder ``tmp`` to ``final``; False (and ``tmp`` removed) if another writer won."""
    try:
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
