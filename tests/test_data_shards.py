"""Token shards and batches: round trip, val split rule, integrity checks, caching, sampler order."""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from meshlm.data import shards as shards_module
from meshlm.data.cli import add_subcommand
from meshlm.data.shards import (
    TokenBatchSampler,
    TokenShards,
    eval_batches,
    is_val_document,
    load_tokens,
    prepare_shards,
    token_dtype,
)
from meshlm.data.tokenizers import load_tokenizer
from meshlm.data.view import TokenView
from meshlm.errors import MeshLMError

WORDS = ("alpha", "beta", "gamma", "delta", "loop", "memory", "router", "state", "token", "layer", "read", "write")


def make_docs(seed, count=200):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) + "." for _ in range(count)]


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


@pytest.fixture(scope="module")
def docs():
    return make_docs(0)


@pytest.fixture(scope="module")
def corpus(docs, tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", docs)


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return load_tokenizer("bpe:280", corpus=corpus, cache_dir=tmp_path_factory.mktemp("tok"))


def expected_split(docs, tok, split, val_fraction):
    """Reference: tokenize each document directly, append EOS, keep those of ``split``."""
    ids = []
    for d in docs:
        if is_val_document(d, val_fraction) == (split == "val"):
            ids += [*tok.encode(d), tok.eos_id]
    return np.array(ids)


def split_documents(tokens, eos):
    """Token sequences between EOS separators."""
    cuts = np.flatnonzero(tokens == eos)
    return [tuple(part) for part in np.split(tokens, cuts + 1)[:-1]]


def test_a_shard_folder_named_neox_reads_its_own_tokenizer(corpus, tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shards = TokenShards(prepare_shards(corpus, tok, Path("neox"), val_fraction=0.2))
    assert shards.tokenizer().fingerprint == tok.fingerprint  # not the NeoX tokenizer the spec "neox" names


def test_round_trip_equals_direct_tokenization(docs, corpus, tok, tmp_path):
    out = prepare_shards(corpus, tok, tmp_path / "s", val_fraction=0.2)
    shards = TokenShards(out, verify=True)
    for split in ("train", "val"):
        expected = expected_split(docs, tok, split, 0.2)
        assert np.array_equal(shards.split(split), expected)
        assert shards.num_tokens(split) == len(expected)
        assert shards.num_documents(split) == int((expected == tok.eos_id).sum())
    assert 0 < shards.num_documents("val") < shards.num_documents("train")
    assert shards.num_documents("train") + shards.num_documents("val") == len(docs)
    assert shards.split("train").dtype == np.uint16 and shards.split("train")[-1] == tok.eos_id
    manifest = shards.manifest
    assert manifest["tokenizer"] == {
        "name": tok.name,
        "fingerprint": tok.fingerprint,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
    }
    assert manifest["source"] == corpus and manifest["dtype"] == "uint16"
    assert shards.tokenizer().fingerprint == tok.fingerprint  # saved next to the shards
    assert load_tokenizer("bpe:280", corpus=str(out)).name == tok.name


def test_val_split_ignores_document_order(docs, tok, tmp_path):
    forward = TokenShards(prepare_shards(write_jsonl(tmp_path / "f.jsonl", docs), tok, tmp_path / "f", 0.3))
    backward = TokenShards(prepare_shards(write_jsonl(tmp_path / "b.jsonl", docs[::-1]), tok, tmp_path / "b", 0.3))
    for split in ("train", "val"):
        got_f = split_documents(np.asarray(forward.split(split)), tok.eos_id)
        got_b = split_documents(np.asarray(backward.split(split)), tok.eos_id)
        assert sorted(got_f) == sorted(got_b) and got_f == got_b[::-1]


def test_val_rule_is_a_fraction_of_documents():
    texts = [f"document {i}" for i in range(20000)]
    share = sum(is_val_document(t, 0.05) for t in texts) / len(texts)
    assert 0.04 < share < 0.06
    assert not any(is_val_document(t, 0.0) for t in texts)
    assert all(is_val_document(t, 0.05) <= is_val_document(t, 0.1) for t in texts)  # nested fractions


def test_many_small_shard_files_read_back_as_one(docs, corpus, tok, tmp_path):
    out = prepare_shards(corpus, tok, tmp_path / "s", val_fraction=0.2, shard_tokens=500)
    shards = TokenShards(out, verify=True)
    files = shards.manifest["splits"]["train"]["files"]
    assert len(files) > 3 and all(f["tokens"] <= 500 for f in files)
    assert np.array_equal(shards.split("train"), expected_split(docs, tok, "train", 0.2))


def concatenated(shards, split):
    """The reader before TokenView (the reference): every file of the split read and concatenated in RAM."""
    files = shards.manifest["splits"][split]["files"]
    return np.concatenate([np.fromfile(shards.path / f["name"], dtype=shards.dtype) for f in files])


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (gx, gy), (ex, ey) in zip(got, expected, strict=True):
        assert gx.dtype == ex.dtype == torch.int64 and torch.equal(gx, ex) and torch.equal(gy, ey)


def test_multi_file_split_gives_the_batches_of_the_concatenated_split(corpus, tok, tmp_path):
    shards = TokenShards(prepare_shards(corpus, tok, tmp_path / "s", val_fraction=0.2, shard_tokens=97))
    for split in ("train", "val"):
        view, reference = shards.split(split), concatenated(shards, split)
        assert len(view.parts) == len(shards.manifest["splits"][split]["files"]) > 3
        assert all(isinstance(part, np.memmap) for part in view.parts)  # mapped, never copied
        assert len(view) == len(reference) and np.array_equal(np.asarray(view), reference)
    train, reference = shards.split("train"), concatenated(shards, "train")
    seq, batch = 16, 8  # windows of 17 tokens straddle the 97-token files
    for world, micro in ((1, None), (1, 2), (2, 2), (4, 1)):
        for rank in range(world):
            new = TokenBatchSampler(train, seq, batch, world, rank, seed=5, micro_batch=micro)
            old = TokenBatchSampler(reference, seq, batch, world, rank, seed=5, micro_batch=micro)
            assert new.state_dict() == old.state_dict()
            for step in range(2 * new.steps_per_epoch + 3):  # two epochs and a bit
                assert_same_batches(new.batches_for_step(step), old.batches_for_step(step))
    val, reference = shards.split("val"), concatenated(shards, "val")
    for size, cap in ((3, None), (4, 2), (5, 1000)):
        assert_same_batches(list(eval_batches(val, seq, size, cap)), list(eval_batches(reference, seq, size, cap)))


def test_token_view_reads_like_the_concatenated_array():
    rng = np.random.default_rng(0)
    lengths = [5, 0, 1, 13, 0, 7, 2]
    parts = [rng.integers(0, 60000, n).astype(np.uint16) for n in lengths]
    view, reference = TokenView(parts), np.concatenate(parts)
    assert len(view) == 28 and len(view.parts) == 5 and view.dtype == np.uint16
    assert [view[i] for i in range(-28, 28)] == [reference[i] for i in range(-28, 28)]
    for i in (-29, 28):
        with pytest.raises(IndexError, match="out of range"):
            view[i]
    for a in range(-30, 31):
        for b in (None, -31, -3, 0, 1, 5, 6, 19, 20, 27, 28, 40):
            assert np.array_equal(view[a:b], reference[a:b]) and view[a:b].dtype == np.uint16
    assert np.shares_memory(view[6:19], parts[3])  # a range inside one part is a view, not a copy
    starts = rng.integers(0, 28 - 6 + 1, 50)
    assert np.array_equal(view.windows(starts, 6), reference[starts[:, None] + np.arange(6)])
    assert np.array_equal(view.windows(np.array([22]), 6), reference[None, 22:28])
    with pytest.raises(IndexError, match="exceed 28 tokens"):
        view.windows(np.array([23]), 6)
    with pytest.raises(IndexError, match="no step"):
        view[::2]
    with pytest.raises(TypeError):
        view[np.arange(3)]
    empty = TokenView([], dtype=np.uint32)
    assert len(empty) == 0 and empty[:].dtype == np.uint32 and len(empty[3:9]) == 0
    assert TokenView.of(view) is view and np.shares_memory(TokenView.of(reference)[:], reference)


def test_several_sources_are_counted_apart(tok, tmp_path):
    first, second = make_docs(1, 30), make_docs(2, 50)
    a, b = write_jsonl(tmp_path / "a.jsonl", first), write_jsonl(tmp_path / "b.jsonl", second)
    shards = TokenShards(prepare_shards([a, b], tok, tmp_path / "s", val_fraction=0.0))
    per_source = shards.manifest["sources"]
    assert [s["spec"] for s in per_source] == [a, b]
    assert [s["train"]["documents"] for s in per_source] == [30, 50]
    assert per_source[0]["train"]["tokens"] == len(expected_split(first, tok, "train", 0.0))
    assert sum(s["train"]["tokens"] for s in per_source) == shards.num_tokens("train")
    assert shards.num_tokens("val") == 0 and len(shards.split("val")) == 0


def test_token_dtype():
    assert token_dtype(50277) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_integrity_errors(corpus, tok, tmp_path):
    out = prepare_shards(corpus, tok, tmp_path / "s", val_fraction=0.2)
    shard = out / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    TokenShards(out)  # sizes still match: only the checksum can tell
    with pytest.raises(MeshLMError, match=r"checksum mismatch for shard .*train-00000\.bin"):
        TokenShards(out, verify=True)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(MeshLMError, match="missing or truncated"):
        TokenShards(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(MeshLMError, match=r"manifest\.json is corrupt"):
        TokenShards(out)
    (out / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(MeshLMError, match="corrupt"):
        TokenShards(out)
    with pytest.raises(MeshLMError, match="not a shard folder"):
        TokenShards(tmp_path)


def test_existing_output_folder_rules(docs, corpus, tok, tmp_path):
    out = prepare_shards(corpus, tok, tmp_path / "s", val_fraction=0.2)
    assert prepare_shards(corpus, tok, out, val_fraction=0.2) == out  # same set: reused
    other = write_jsonl(tmp_path / "other.jsonl", make_docs(5, 20))
    with pytest.raises(MeshLMError, match="already holds something other than these shards"):
        prepare_shards(other, tok, out, val_fraction=0.2)
    with pytest.raises(MeshLMError, match="already holds"):
        prepare_shards(corpus, tok, out, val_fraction=0.1)
    prepare_shards(other, tok, out, val_fraction=0.2, overwrite=True)
    assert TokenShards(out).num_documents("train") + TokenShards(out).num_documents("val") == 20
    (tmp_path / "empty").mkdir()
    assert TokenShards(prepare_shards(corpus, tok, tmp_path / "empty")).num_tokens("train") > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_failed_preparation_leaves_nothing(tok, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(MeshLMError, match=r"bad\.jsonl:2"):
        prepare_shards(str(tmp_path / "bad.jsonl"), tok, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_load_tokens_prepares_once_and_follows_content(docs, tok, tmp_path, monkeypatch):
    src = tmp_path / "data.jsonl"
    write_jsonl(src, docs)
    first = load_tokens(str(src), tok, cache_dir=tmp_path / "cache")
    assert np.array_equal(first.split("val"), expected_split(docs, tok, "val", 0.01))

    def no_preparation(*args, **kwargs):
        raise AssertionError("tokenized again although the shards are cached")

    monkeypatch.setattr(shards_module, "prepare_shards", no_preparation)
    assert load_tokens(str(src), tok, cache_dir=tmp_path / "cache").path == first.path
    monkeypatch.undo()
    write_jsonl(src, docs[:50])
    changed = load_tokens(str(src), tok, cache_dir=tmp_path / "cache")
    assert changed.path != first.path
    assert changed.num_documents("train") + changed.num_documents("val") == 50
    assert load_tokens(str(first.path), tok).path == first.path  # a shard folder is opened as is


def test_load_tokens_rejects_another_tokenizer(corpus, tok, tmp_path):
    out = prepare_shards(corpus, tok, tmp_path / "s")
    other = load_tokenizer("bpe:270", corpus=corpus, cache_dir=tmp_path / "tok")
    with pytest.raises(MeshLMError, match=f"tokenized with {tok.name}, not {other.name}"):
        load_tokens(str(out), other)


# ---- batches ----

SEQ, WINDOW = 7, 8


def tokens(n_windows):
    return np.arange(n_windows * WINDOW + 3, dtype=np.uint16)  # 3 trailing tokens fit no window


def all_steps(sampler, steps):
    return [sampler.batches_for_step(s) for s in range(steps)]


def window_starts(x):
    return (x[:, 0] // WINDOW).tolist()


def test_batches_are_shifted_windows():
    sampler = TokenBatchSampler(tokens(40), SEQ, 8, seed=3)
    ((x, y),) = sampler.batches_for_step(0)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (8, SEQ)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x[:, 0] % WINDOW, torch.zeros(8, dtype=torch.int64))  # windows start on multiples of 8
    assert torch.equal(y[:, -1], x[:, 0] + SEQ)


def test_an_epoch_visits_disjoint_windows_and_epochs_reshuffle():
    sampler = TokenBatchSampler(tokens(42), SEQ, 8, seed=0)
    assert sampler.steps_per_epoch == 5 and sampler.num_windows == 42
    epoch0 = [w for s in range(5) for w in window_starts(sampler.batches_for_step(s)[0][0])]
    epoch1 = [w for s in range(5, 10) for w in window_starts(sampler.batches_for_step(s)[0][0])]
    assert len(set(epoch0)) == len(set(epoch1)) == 40
    assert epoch0 != epoch1
    assert (sampler.epoch_of(4), sampler.epoch_of(5), sampler.epoch_of(12)) == (0, 1, 2)
    assert np.array_equal(sampler.order(1), np.random.Generator(np.random.PCG64([0, 1])).permutation(42))


def test_same_seed_same_batches_other_seed_other_batches():
    a, b = TokenBatchSampler(tokens(40), SEQ, 4, seed=1), TokenBatchSampler(tokens(40), SEQ, 4, seed=1)
    c = TokenBatchSampler(tokens(40), SEQ, 4, seed=2)
    for s in (0, 3, 17):
        assert torch.equal(a.batches_for_step(s)[0][0], b.batches_for_step(s)[0][0])
    assert not torch.equal(a.batches_for_step(0)[0][0], c.batches_for_step(0)[0][0])


def test_ranks_split_the_global_batch_disjointly():
    data = tokens(50)
    single = TokenBatchSampler(data, SEQ, 12, seed=4)
    ranks = [TokenBatchSampler(data, SEQ, 12, world_size=3, rank=r, seed=4, micro_batch=2) for r in range(3)]
    for step in (0, 1, 5):
        ((full_x, full_y),) = single.batches_for_step(step)
        parts = [b for r in ranks for b in r.batches_for_step(step)]
        assert len(parts) == 6 and all(x.shape == (2, SEQ) for x, _ in parts)
        assert torch.equal(torch.cat([x for x, _ in parts]), full_x)
        assert torch.equal(torch.cat([y for _, y in parts]), full_y)
        per_rank = [set(r.windows_for_step(step).tolist()) for r in ranks]
        assert set.union(*per_rank) == set(single.windows_for_step(step).tolist())
        assert sum(map(len, per_rank)) == 12


def test_resume_from_step_equals_uninterrupted():
    data = tokens(30)
    uninterrupted = TokenBatchSampler(data, SEQ, 4, seed=9, micro_batch=2)
    reference = all_steps(uninterrupted, 20)
    resumed = TokenBatchSampler(data, SEQ, 4, seed=123, micro_batch=2)
    resumed.load_state_dict(json.loads(json.dumps(uninterrupted.state_dict())))
    for step in range(11, 20):
        got = resumed.batches_for_step(step)
        assert all(
            torch.equal(g[0], r[0]) and torch.equal(g[1], r[1]) for g, r in zip(got, reference[step], strict=True)
        )


def test_resume_with_other_data_or_shape_is_refused():
    state = TokenBatchSampler(tokens(30), SEQ, 4).state_dict()
    with pytest.raises(MeshLMError, match=r"cannot resume: .*num_windows=30"):
        TokenBatchSampler(tokens(31), SEQ, 4).load_state_dict(state)
    with pytest.raises(MeshLMError, match="global_batch=4"):
        TokenBatchSampler(tokens(30), SEQ, 2).load_state_dict(state)


@pytest.mark.parametrize(
    ("n_tokens", "kwargs", "match"),
    [
        (5, {}, "has 5 tokens = 0 windows of seq_len\\+1 = 8, fewer than one global batch of 4"),
        (30, {}, "30 tokens = 3 windows .* fewer than one global batch of 4"),
        (400, {"world_size": 3}, "not divisible by world size 3"),
        (400, {"micro_batch": 3}, "micro-batch 3 does not divide the per-rank batch 4"),
        (400, {"world_size": 2, "rank": 2}, "rank 2 is outside world size 2"),
    ],
)
def test_sampler_bad_inputs(n_tokens, kwargs, match):
    with pytest.raises(MeshLMError, match=match):
        TokenBatchSampler(np.arange(n_tokens), SEQ, 4, **kwargs)


def test_eval_batches_are_deterministic_and_spread():
    data = tokens(20)
    batches = list(eval_batches(data, SEQ, 3))
    assert [x.shape[0] for x, _ in batches] == [3] * 6 + [2]
    assert [w for x, _ in batches for w in window_starts(x)] == list(range(20))
    capped = list(eval_batches(data, SEQ, 2, max_batches=2))
    assert [w for x, _ in capped for w in window_starts(x)] == [0, 5, 10, 15]
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in capped)
    with pytest.raises(MeshLMError, match="has 7 tokens, fewer than one window of seq_len\\+1 = 8"):
        eval_batches(np.arange(7), SEQ, 2)


def test_end_to_end_on_real_prepared_shards(corpus, tok, tmp_path):
    shards = TokenShards(prepare_shards(corpus, tok, tmp_path / "s", val_fraction=0.2))
    train = shards.split("train")
    sampler = TokenBatchSampler(train, 16, 4, world_size=2, rank=1, seed=0)
    ((x, _),) = sampler.batches_for_step(2)
    starts = sampler.windows_for_step(2) * 17
    assert torch.equal(x, torch.from_numpy(np.stack([train[s : s + 16] for s in starts]).astype(np.int64)))
    assert int(x.max()) < tok.vocab_size


def test_cli_prepare_and_info(corpus, tok, tmp_path, capsys):
    tok.save(tmp_path / "tok")
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers(dest="command"))
    out = tmp_path / "shards"
    args = parser.parse_args(
        ["data", "prepare", "--data", corpus, "--tokenizer", str(tmp_path / "tok"), "--out", str(out)]
    )
    assert args.func(args) == 0
    assert TokenShards(out, verify=True).tokenizer_name == tok.name
    args = parser.parse_args(["data", "info", str(out), "--verify"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"tokenizer  {tok.name}" in printed and "checksums  ok" in printed
