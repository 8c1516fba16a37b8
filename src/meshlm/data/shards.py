"""Token shards: a corpus tokenized once into flat ``.bin`` files, and the batches cut from them.

A shard folder holds ``manifest.json``, the tokenizer it was made with (``tokenizer.json``
and friends) and ``train-00000.bin``, ``val-00000.bin``... : every document's token ids
followed by EOS, concatenated, as uint16 (vocab <= 65,536) or uint32. The format, the
validation split rule and the batch order are described in docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from meshlm.data.cache import cache_dir as default_cache_dir
from meshlm.data.cache import publish, sha256_file, temp_sibling
from meshlm.data.sources import SHARD_MANIFEST, describe_source, is_shard_dir, iter_documents, source_fingerprint
from meshlm.data.tokenizers import Tokenizer, tokenizer_from_folder
from meshlm.data.view import TokenView
from meshlm.errors import MeshLMError

FORMAT = "meshlm-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 27  # 128 Mi tokens: 256 MiB per uint16 file
ENCODE_BATCH_DOCS = 512
ENCODE_BATCH_BYTES = 4 << 20
VAL_RULE = "blake2b(utf-8 text, digest_size=8) as big-endian integer < val_fraction * 2**64"


def is_val_document(text: str, val_fraction: float) -> bool:
    """The validation split rule: a hash of the document text alone, so it never depends on order."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < val_fraction * 2**64


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class _SplitWriter:
    """Appends token arrays to ``{split}-NNNNN.bin`` files of at most ``shard_tokens`` tokens each."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.files: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self._file = None
        self._sha = hashlib.sha256()
        self._count = 0

    def add(self, tokens: np.ndarray, documents: int) -> None:
        self.documents += documents
        self.tokens += len(tokens)
        while len(tokens):
            if self._file is None:
                name = f"{self.split}-{len(self.files):05d}.bin"
                self._file = open(self.folder / name, "wb")  # noqa: SIM115 (kept open across calls)
                self.files.append({"name": name})
                self._sha, self._count = hashlib.sha256(), 0
            part, tokens = tokens[: self.shard_tokens - self._count], tokens[self.shard_tokens - self._count :]
            data = part.tobytes()
            self._file.write(data)
            self._sha.update(data)
            self._count += len(part)
            if self._count == self.shard_tokens:
                self._finish_file()

    def _finish_file(self) -> None:
        self._file.close()
        self._file = None
        self.files[-1].update(tokens=self._count, sha256=self._sha.hexdigest())

    def close(self) -> dict:
        if self._file is not None:
            self._finish_file()
        return {"tokens": self.tokens, "documents": self.documents, "files": self.files}


def _doc_batches(docs: Iterator[str]) -> Iterator[list[str]]:
    """Group documents for ``encode_batch``: at most ENCODE_BATCH_DOCS docs or ENCODE_BATCH_BYTES chars."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if len(batch) >= ENCODE_BATCH_DOCS or size >= ENCODE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize_source(spec: str, tokenizer: Tokenizer, writers: dict[str, _SplitWriter], val_fraction: float) -> dict:
    """Tokenize every document of ``spec`` into the split writers; returns this source's counts."""
    counts = {split: {"documents": 0, "tokens": 0} for split in SPLITS}
    dtype = token_dtype(tokenizer.vocab_size)
    eos = (tokenizer.eos_id,)
    for batch in _doc_batches(tqdm(iter_documents(spec), desc=spec, unit="doc", disable=None)):
        groups: dict[str, list[list[int]]] = {split: [] for split in SPLITS}
        for text, ids in zip(batch, tokenizer.encode_batch(batch), strict=True):
            groups["val" if is_val_document(text, val_fraction) else "train"].append(ids)
        for split, docs in groups.items():
            if docs:
                tokens = np.fromiter(chain.from_iterable(chain(ids, eos) for ids in docs), dtype=dtype)
                writers[split].add(tokens, len(docs))
                counts[split]["documents"] += len(docs)
                counts[split]["tokens"] += len(tokens)
    return counts


def _identity(sources: list[str], tokenizer: Tokenizer, val_fraction: float) -> dict:
    """What makes two shard sets the same: format, sources and their content, tokenizer, split rule."""
    return {
        "format_version": FORMAT_VERSION,
        "sources": sources,
        "content_fingerprint": hashlib.sha256("\0".join(map(source_fingerprint, sources)).encode()).hexdigest(),
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "val_fraction": val_fraction,
    }


def _existing_identity(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SHARD_MANIFEST).read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_shards(
    source: str | Sequence[str],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
) -> Path:
    """Tokenize ``source`` (one spec or several, in order) once into a shard folder at ``out_dir``.

    Each document is followed by EOS; it goes to ``val`` iff :func:`is_val_document`. The folder
    is written to a temporary sibling and renamed into place. An existing identical set is reused;
    a different one is an error unless ``overwrite``.
    """
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise MeshLMError("no data source given to prepare shards from.")
    if not 0 <= val_fraction < 1:
        raise MeshLMError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if shard_tokens < 1:
        raise MeshLMError(f"shard_tokens must be positive, got {shard_tokens}.")
    out = Path(out_dir).expanduser()
    identity = _identity(sources, tokenizer, val_fraction)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        if _existing_identity(out) == identity:
            return out
        raise MeshLMError(
            f"{out} already holds something other than these shards (sources {sources}, tokenizer "
            f"{tokenizer.name}); choose another output folder or pass --overwrite."
        )
    tmp = temp_sibling(out)
    try:
        writers = {split: _SplitWriter(tmp, split, shard_tokens) for split in SPLITS}
        per_source = [
            {**describe_source(spec), **_tokenize_source(spec, tokenizer, writers, val_fraction)} for spec in sources
        ]
        splits = {split: writer.close() for split, writer in writers.items()}
        tokenizer.save(tmp)
        manifest = {
            "format": FORMAT,
            "identity": identity,
            "tokenizer": {
                "name": tokenizer.name,
                "fingerprint": tokenizer.fingerprint,
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
            },
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "source": sources[0] if len(sources) == 1 else sources,
            "val_fraction": val_fraction,
            "val_rule": VAL_RULE,
            "splits": splits,
            "sources": per_source,
        }
        (tmp / SHARD_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if overwrite and out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not publish(tmp, out) and _existing_identity(out) != identity:
        raise MeshLMError(f"{out} was written concurrently by another process with different shards.")
    return out


class TokenShards:
    """A prepared shard folder: manifest checked on open, splits memory-mapped on demand."""

    def __init__(self, path: str | os.PathLike, verify: bool = False):
        self.path = Path(path).expanduser()
        manifest_path = self.path / SHARD_MANIFEST
        if not manifest_path.is_file():
            raise MeshLMError(
                f"{self.path} is not a shard folder (no {SHARD_MANIFEST}); build one with `meshlm data prepare`."
            )
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            version = (self.manifest["format"], self.manifest["identity"]["format_version"])
            tokenizer = self.manifest["tokenizer"]
            self.tokenizer_name: str = tokenizer["name"]
            self.tokenizer_fingerprint: str = tokenizer["fingerprint"]
            self.vocab_size: int = int(tokenizer["vocab_size"])
            self.eos_id: int = int(tokenizer["eos_id"])
            self.dtype = np.dtype(self.manifest["dtype"])
            self._splits: dict[str, dict] = self.manifest["splits"]
            files = [(f["name"], int(f["tokens"]), f["sha256"]) for s in self._splits.values() for f in s["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise MeshLMError(
                f"{manifest_path} is corrupt ({type(e).__name__}: {e}); re-run `meshlm data prepare`."
            ) from None
        if version != (FORMAT, FORMAT_VERSION):
            raise MeshLMError(
                f"{manifest_path} is not a {FORMAT} v{FORMAT_VERSION} manifest; re-run `meshlm data prepare`."
            )
        for name, tokens, _ in files:
            file = self.path / name
            if not file.is_file() or file.stat().st_size != tokens * self.dtype.itemsize:
                raise MeshLMError(f"shard {file} is missing or truncated; re-run `meshlm data prepare`.")
        self._files = files
        if verify:
            self.verify()

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.num_tokens(s):,}" for s in self._splits)
        return f"TokenShards({str(self.path)!r}, tokenizer={self.tokenizer_name!r}, tokens: {counts})"

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest; MeshLMError naming the first mismatch."""
        for name, _, expected in self._files:
            if sha256_file(self.path / name) != expected:
                raise MeshLMError(
                    f"checksum mismatch for shard {self.path / name}; the file is corrupt, re-prepare it."
                )

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def _split_info(self, name: str) -> dict:
        if name not in self._splits:
            raise MeshLMError(f"shard folder {self.path} has no split {name!r}; splits: {', '.join(self._splits)}.")
        return self._splits[name]

    def num_tokens(self, split: str = "train") -> int:
        return int(self._split_info(split)["tokens"])

    def num_documents(self, split: str = "train") -> int:
        return int(self._split_info(split)["documents"])

    def split(self, name: str = "train") -> TokenView:
        """All tokens of a split as one read-only sequence over its memory-mapped files (nothing copied)."""
        return TokenView(
            (
                np.memmap(self.path / f["name"], dtype=self.dtype, mode="r", shape=(int(f["tokens"]),))
                for f in self._split_info(name)["files"]
                if int(f["tokens"])
            ),
            dtype=self.dtype,
        )

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved next to the shards."""
        return tokenizer_from_folder(self.path)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_.")[-48:] or "source"


def load_tokens(
    source: str,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.01,
) -> TokenShards:
    """Token shards for ``source``: a shard folder is opened as is; any other source is tokenized
    once into ``cache_dir`` (default ``$MESHLM_CACHE/shards`` or ``~/.cache/meshlm/shards``), keyed
    by spec, tokenizer and file contents, and reused from then on."""
    if is_shard_dir(source):
        shards = TokenShards(source)
        if shards.tokenizer_fingerprint != tokenizer.fingerprint:
            raise MeshLMError(
                f"{source} was tokenized with {shards.tokenizer_name}, not {tokenizer.name}; "
                f"use --tokenizer {source} (its saved tokenizer) or prepare the shards again."
            )
        return shards
    key = hashlib.sha256(json.dumps(_identity([source], tokenizer, val_fraction), sort_keys=True).encode())
    folder = default_cache_dir("shards", cache_dir) / f"{_slug(source)}-{key.hexdigest()[:16]}"
    if not is_shard_dir(folder):
        prepare_shards(source, tokenizer, folder, val_fraction=val_fraction)
    return TokenShards(folder)


def _windows(tokens: TokenView, indices: np.ndarray, window: int) -> torch.Tensor:
    """Windows ``indices`` (each ``window`` tokens, non-overlapping) of ``tokens`` as an int64 tensor."""
    return torch.from_numpy(tokens.windows(indices * window, window).astype(np.int64))


def _xy(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class TokenBatchSampler:
    """Deterministic, exactly resumable training batches; each step's batch is a pure function of the step.

    The train tokens are cut into non-overlapping windows of ``seq_len + 1`` tokens
    (x = w[:-1], y = w[1:]). Epoch e visits the windows in the order of a permutation drawn
    by numpy's PCG64 seeded with ``(seed, e)``; the last ``num_windows % global_batch`` windows
    of that order are skipped that epoch. Step s uses windows ``s*G .. s*G+G-1`` of its epoch's
    order; rank r of W takes the r-th contiguous block of G/W of them, cut into micro-batches.
    The global batch of a step does not depend on W, so a run can resume on another world size.
    """

    def __init__(
        self,
        tokens: TokenView | np.ndarray,
        seq_len: int,
        global_batch: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        micro_batch: int | None = None,
    ):
        if seq_len < 1 or global_batch < 1 or world_size < 1:
            raise MeshLMError("seq_len, global_batch and world_size must be positive.")
        if not 0 <= rank < world_size:
            raise MeshLMError(f"rank {rank} is outside world size {world_size}.")
        if global_batch % world_size:
            raise MeshLMError(f"global batch {global_batch} is not divisible by world size {world_size}.")
        self.per_rank = global_batch // world_size
        self.micro_batch = micro_batch or self.per_rank
        if self.micro_batch < 1 or self.per_rank % self.micro_batch:
            raise MeshLMError(
                f"micro-batch {self.micro_batch} does not divide the per-rank batch {self.per_rank} "
                f"(global batch {global_batch} / world size {world_size})."
            )
        self.tokens = tokens = TokenView.of(tokens)
        self.seq_len, self.global_batch = seq_len, global_batch
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.window = seq_len + 1
        self.num_windows = len(tokens) // self.window
        if self.num_windows < global_batch:
            raise MeshLMError(
                f"the training data has {len(tokens):,} tokens = {self.num_windows:,} windows of seq_len+1 = "
                f"{self.window}, fewer than one global batch of {global_batch}; use more data, a shorter "
                "--seq-len or a smaller batch."
            )
        self.steps_per_epoch = self.num_windows // global_batch
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_of(self, step: int) -> int:
        """The epoch that step ``step`` (0-based) belongs to."""
        if step < 0:
            raise MeshLMError(f"step must be >= 0, got {step}.")
        return step // self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The window visiting order of ``epoch`` (cached for the latest epoch asked)."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._order = (epoch, rng.permutation(self.num_windows))
        return self._order[1]

    def windows_for_step(self, step: int) -> np.ndarray:
        """Indices of the windows this rank reads at ``step``."""
        start = (step % self.steps_per_epoch) * self.global_batch + self.rank * self.per_rank
        return self.order(self.epoch_of(step))[start : start + self.per_rank]

    def batches_for_step(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches ``(x, y)`` of step ``step``, int64 tensors of shape (micro_batch, seq_len)."""
        windows = _windows(self.tokens, self.windows_for_step(step), self.window)
        return [_xy(chunk) for chunk in windows.split(self.micro_batch)]

    def state_dict(self) -> dict:
        """What defines the batch order (the step itself is the trainer's)."""
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.global_batch,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict) -> None:
        """Adopt a saved seed after checking the saved order was cut from the same windows and batch."""
        for key in ("seq_len", "global_batch", "num_windows"):
            if state[key] != getattr(self, key):
                raise MeshLMError(
                    f"cannot resume: the checkpoint's data order has {key}={state[key]}, this run has "
                    f"{getattr(self, key)}; resume with the same data, --seq-len and global batch."
                )
        self.seed = int(state["seed"])
        self._order = None


def eval_batches(
    tokens: TokenView | np.ndarray, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic validation batches ``(x, y)``: ``batch_size`` windows each, spread evenly.

    With ``max_batches``, its ``max_batches * batch_size`` windows are spaced evenly over the
    whole split (so a capped evaluation still sees all of it); the last batch may be smaller.
    """
    if seq_len < 1 or batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise MeshLMError("seq_len, batch_size and max_batches must be positive.")
    tokens = TokenView.of(tokens)
    window = seq_len + 1
    num_windows = len(tokens) // window
    if num_windows == 0:
        raise MeshLMError(
            f"the evaluation data has {len(tokens):,} tokens, fewer than one window of seq_len+1 = {window}."
        )
    count = num_windows if max_batches is None else min(num_windows, max_batches * batch_size)
    indices = np.arange(count) * num_windows // count

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, count, batch_size):
            yield _xy(_windows(tokens, indices[start : start + batch_size], window))

    return batches()
