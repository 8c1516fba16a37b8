"""Packing a shard folder into bounded xz chunks and unpacking it one chunk per call."""

import json
import random
import shutil

import numpy as np
import pytest

from meshlm.cli import main
from meshlm.data.cache import sha256_file
from meshlm.data.pack import MIB, PACK_MANIFEST, Pack, pack_shards, unpack_chunks
from meshlm.data.shards import TokenShards, prepare_shards
from meshlm.data.tokenizers import load_tokenizer
from meshlm.errors import MeshLMError

LIMIT = 4096  # bytes per chunk: several chunks from a tiny folder
CHUNK_MB = LIMIT / MIB


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(400)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 80))) for _ in range(150)]
    root = tmp_path_factory.mktemp("shards")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = load_tokenizer("bpe:300", corpus=str(corpus), cache_dir=root / "tok")
    return prepare_shards(str(corpus), tok, root / "s", val_fraction=0.2, shard_tokens=2000)


@pytest.fixture(scope="module")
def pack_dir(shard_dir, tmp_path_factory):
    return pack_shards(shard_dir, tmp_path_factory.mktemp("pack") / "p", chunk_mb=CHUNK_MB)


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def chunks_of(pack_dir):
    return sorted(pack_dir.glob("chunk-*.xz"))


def test_pack_manifest_describes_bounded_chunks(shard_dir, pack_dir):
    pack = json.loads((pack_dir / PACK_MANIFEST).read_text())
    chunks = chunks_of(pack_dir)
    assert [c.name for c in chunks] == [f"chunk-{i:04d}.xz" for i in range(len(chunks))] and len(chunks) >= 4
    assert sorted(p.name for p in pack_dir.iterdir()) == sorted([PACK_MANIFEST, *(c.name for c in chunks)])
    for chunk, entry in zip(chunks, pack["chunks"], strict=True):
        assert chunk.stat().st_size == entry["bytes"] <= LIMIT and sha256_file(chunk) == entry["sha256"]
    assert pack["shard_manifest"] == json.loads((shard_dir / "manifest.json").read_text())
    originals = folder_bytes(shard_dir)
    assert [f["name"] for f in pack["files"]] == list(originals)
    assert all(f["sha256"] == sha256_file(shard_dir / f["name"]) for f in pack["files"])
    assert any(len(c["covers"]) > 1 for c in pack["chunks"])  # some chunk straddles two files
    stream = b"".join(originals.values())
    for c in pack["chunks"]:  # each chunk's pieces are its byte range of the files laid end to end
        pieces = b"".join(originals[p["file"]][p["offset"] : p["offset"] + p["bytes"]] for p in c["covers"])
        assert pieces == stream[c["start"] : c["end"]]
    assert pack["chunks"][-1]["end"] == pack["stream_bytes"] == len(stream)
    assert pack["tokens"] == sum(f.stat().st_size for f in shard_dir.glob("*.bin")) // 2


def test_unpack_chunk_by_chunk_in_any_order_is_bitwise_and_idempotent(shard_dir, pack_dir, tmp_path):
    out = tmp_path / "gpu" / "shards"
    chunks = chunks_of(pack_dir)
    order = chunks[:]
    random.Random(1).shuffle(order)
    for i, chunk in enumerate(order[:-1]):
        status = unpack_chunks([chunk], out)
        assert status.added == [chunk.name] and status.present == i + 1 and not status.complete
        again = unpack_chunks([chunk], out)  # the same chunk once more: nothing changes
        assert again.added == [] and again.present == i + 1
        assert not out.exists()  # nothing under the final name until every chunk is in
        with pytest.raises(MeshLMError, match="not a shard folder"):
            TokenShards(out)
    assert status.missing == [order[-1].name]
    assert unpack_chunks([order[-1]], out).complete
    assert folder_bytes(out) == folder_bytes(shard_dir)
    TokenShards(out, verify=True)
    assert [p.name for p in out.parent.iterdir()] == ["shards"]  # staging folder gone
    assert unpack_chunks([order[0]], out).complete  # unpacking into the finished folder is a no-op
    assert folder_bytes(out) == folder_bytes(shard_dir)


def test_unpack_of_a_whole_pack_folder_and_through_the_cli(shard_dir, pack_dir, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(pack_dir / PACK_MANIFEST, half)
    shutil.copy(chunks_of(pack_dir)[1], half)
    assert main(["data", "unpack", str(half), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "added      chunk-0001.xz" in printed and f"partial    1/{len(chunks_of(pack_dir))}" in printed
    assert main(["data", "unpack", str(pack_dir), "--out", str(tmp_path / "out")]) == 0
    assert "complete" in capsys.readouterr().out
    assert folder_bytes(tmp_path / "out") == folder_bytes(shard_dir)
    assert (
        main(["data", "pack", str(shard_dir), "--out", str(tmp_path / "p2"), "--chunk-mb", "1", "--preset", "1"]) == 0
    )
    assert "1 chunk(s)" in capsys.readouterr().out and len(chunks_of(tmp_path / "p2")) == 1
    assert json.loads((tmp_path / "p2" / PACK_MANIFEST).read_text())["compression"] == "xz, LZMA2 preset 1, CRC64"
    assert unpack_chunks([tmp_path / "p2"], tmp_path / "out2").complete
    assert folder_bytes(tmp_path / "out2") == folder_bytes(shard_dir)


def test_parallel_pack_cuts_the_stream_into_ranges_and_round_trips(shard_dir, pack_dir, tmp_path):
    two = pack_shards(shard_dir, tmp_path / "two", chunk_mb=CHUNK_MB, jobs=2)
    manifest = json.loads((two / PACK_MANIFEST).read_text())
    half = manifest["stream_bytes"] // 2
    assert [c["name"] for c in manifest["chunks"]] == [c.name for c in chunks_of(two)]
    assert half in [c["end"] for c in manifest["chunks"]]  # the first process's last chunk ends at its range
    assert all(c.stat().st_size <= LIMIT for c in chunks_of(two))
    assert sorted(p.name for p in two.iterdir()) == sorted([PACK_MANIFEST, *(c.name for c in chunks_of(two))])
    assert manifest["files"] == json.loads((pack_dir / PACK_MANIFEST).read_text())["files"]
    assert unpack_chunks([two], tmp_path / "out").complete
    assert folder_bytes(tmp_path / "out") == folder_bytes(shard_dir)


def test_a_damaged_or_foreign_chunk_is_refused(shard_dir, pack_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(pack_dir, copy)
    chunk = chunks_of(copy)[2]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["data", "unpack", str(chunk), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: checksum mismatch for {chunk}: it is not chunk-0002.xz of {copy / PACK_MANIFEST}; copy it again."
    ]
    chunks_of(copy)[3].rename(tmp_path / "chunk-0002.xz")  # another chunk under that name
    with pytest.raises(MeshLMError, match="checksum mismatch"):
        unpack_chunks([tmp_path / "chunk-0002.xz"], out, manifest=copy / PACK_MANIFEST)
    (copy / "chunk-0099.xz").write_bytes(b"")
    with pytest.raises(MeshLMError, match=r"not a chunk of the pack .* \(it has chunk-0000\.xz \.\. chunk-"):
        unpack_chunks([copy / "chunk-0099.xz"], out)
    assert not out.exists()
    unpack_chunks([pack_dir], out)  # the good chunks still make the folder
    assert folder_bytes(out) == folder_bytes(shard_dir)


def test_staged_files_are_checked_before_the_folder_is_finished(shard_dir, pack_dir, tmp_path):
    out = tmp_path / "out"
    first, *rest = chunks_of(pack_dir)
    unpack_chunks(rest, out)
    (stage,) = tmp_path.glob(".out.unpack-*")
    last = Pack.load(pack_dir / PACK_MANIFEST).files[-1]["name"]
    with open(stage / "files" / f"{last}.partial", "r+b") as fh:  # damage bytes that finished chunks wrote
        fh.write(b"XY")
    pack = json.loads((pack_dir / PACK_MANIFEST).read_text())
    redo = [c["name"] for c in pack["chunks"] if any(p["file"] == last for p in c["covers"])]
    assert first.name not in redo
    with pytest.raises(MeshLMError, match=rf"{last} does not match its sha256 .* unpack {', '.join(redo)} again"):
        unpack_chunks([first], out)
    assert not out.exists()
    status = unpack_chunks([first], out)
    assert status.added == [] and status.missing == redo
    assert unpack_chunks([pack_dir / name for name in redo], out).complete
    assert folder_bytes(out) == folder_bytes(shard_dir)


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("no-manifest", "no pack manifest .*pack.json; carry pack.json"),
        ("bad-manifest", r"pack\.json is not a valid pack manifest"),
        ("other-shards", "already holds a different shard folder"),
        ("other-files", "already exists and is not a shard folder"),
        ("missing", "does not exist"),
    ],
)
def test_unpack_bad_inputs(shard_dir, pack_dir, tmp_path, setup, match):
    chunk, out = chunks_of(pack_dir)[0], tmp_path / "out"
    if setup == "no-manifest":
        shutil.copy(chunk, tmp_path)
        chunk = tmp_path / chunk.name
    elif setup == "bad-manifest":
        shutil.copytree(pack_dir, tmp_path / "p")
        manifest = json.loads((tmp_path / "p" / PACK_MANIFEST).read_text())
        manifest["files"][0]["name"] = "../escape"
        (tmp_path / "p" / PACK_MANIFEST).write_text(json.dumps(manifest))
        chunk = tmp_path / "p" / chunk.name
    elif setup == "other-shards":
        shutil.copytree(shard_dir, out)
        manifest = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps({**manifest, "val_fraction": 0.5}))
    elif setup == "other-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        chunk = tmp_path / "nowhere.xz"
    with pytest.raises(MeshLMError, match=match):
        unpack_chunks([chunk], out)
    assert not list(tmp_path.glob(".out.unpack-*"))  # nothing staged for a refused call
    if setup == "other-files":
        assert (out / "notes.txt").read_text() == "mine"


def test_pack_bad_inputs(shard_dir, pack_dir, tmp_path):
    with pytest.raises(MeshLMError, match="already exists and is not empty"):
        pack_shards(shard_dir, pack_dir)
    with pytest.raises(MeshLMError, match="--chunk-mb must be at least"):
        pack_shards(shard_dir, tmp_path / "p", chunk_mb=0.001)
    with pytest.raises(MeshLMError, match=r"--preset must be an xz preset 0\.\.9, got 10"):
        pack_shards(shard_dir, tmp_path / "p", preset=10)
    with pytest.raises(MeshLMError, match="--jobs must be at least 1, got 0"):
        pack_shards(shard_dir, tmp_path / "p", jobs=0)
    with pytest.raises(MeshLMError, match="not a shard folder"):
        pack_shards(tmp_path, tmp_path / "p")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(shard_dir, corrupt)
    tokens = np.fromfile(corrupt / "train-00001.bin", dtype=np.uint16)
    tokens[3] ^= 1
    tokens.tofile(corrupt / "train-00001.bin")
    with pytest.raises(MeshLMError, match=r"train-00001\.bin does not match its manifest's sha256"):
        pack_shards(corrupt, tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]  # no pack, no temp folder
    assert Pack.load(pack_dir / PACK_MANIFEST).tokens > 0
