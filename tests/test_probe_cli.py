"""``meshlm probe`` end to end on tiny saved models: probe.json, figures, --compare, user errors."""

import json
import random
import shutil
import struct

import pytest
import torch

import meshlm.cli
from conftest import randomize_scheme, tiny_config
from meshlm import MeshLMForCausalLM
from meshlm.data.tokenizers import load_tokenizer
from meshlm.probe.aggregate import FORMAT

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = ("loop", "memory", "router", "state", "token", "layer", "read", "write", "slot", "buffer", "core", "coda")
SEQ = 16


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the file is a non-trivial PNG."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + "." for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def models(corpus, cache, tmp_path_factory):
    """Two saved model folders with a bpe:300 tokenizer: a MeSH 1+2R2+1 and a vanilla 6-layer model."""
    tokenizer = load_tokenizer("bpe:300", corpus=corpus, cache_dir=cache)
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, scheme, layout in (("mesh", "mesh", "1+2R2+1"), ("vanilla", "base", "6")):
        torch.manual_seed(0)
        model = MeshLMForCausalLM(tiny_config(layout=layout, scheme=scheme, vocab_size=tokenizer.vocab_size))
        randomize_scheme(model)
        model.save_pretrained(root / name)
        tokenizer.save(root / name)
        folders[name] = root / name
    return folders


def meshlm_main(argv) -> int:
    """``meshlm.cli.main`` on ``argv`` made strings."""
    return meshlm.cli.main([str(a) for a in argv])


def probe(model_dir, out, corpus, cache, *extra) -> int:
    args = ["probe", model_dir, "--data", corpus, "--samples", 6, "--seq-len", SEQ, "--batch-size", 4]
    return meshlm_main([*args, "--out", out, "--cache-dir", cache, "--spectrum-k", 8, *extra])


@pytest.fixture(scope="module")
def probed(models, corpus, cache, tmp_path_factory):
    """Probe outputs of both models, made once for the tests that read them."""
    out = tmp_path_factory.mktemp("probes")
    assert probe(models["mesh"], out / "mesh", corpus, cache) == 0
    extra = ("--split", "1+1+1+1+1+1", "--linear-cka")
    assert probe(models["vanilla"], out / "vanilla", corpus, cache, *extra) == 0
    return {name: out / name for name in ("mesh", "vanilla")}


def test_probe_writes_json_and_the_figures_of_a_mesh_model(probed):
    result = json.loads((probed["mesh"] / "probe.json").read_text())
    assert result["format"] == FORMAT and result["label"] == "mesh 1+2R2+1"
    assert (result["num_samples"], result["seq_len"], result["hidden_size"]) == (6, SEQ, 32)
    assert result["states"] == ["emb", "h0", "h1", "h2", "out"]
    assert result["core_outputs"] == ["core_out1", "core_out2"]
    assert result["data"]["split"] == "val" and result["data"]["tokenizer"].startswith("bpe:300:")
    assert (result["router"]["steps"], result["router"]["slots"]) == (3, 5)
    assert result["cka"]["kernel"] == "rbf" and len(result["cka"]["mean"]) == 7
    assert len(result["spectrum"]["mean"][0]) == 8
    assert all(0 <= m <= 2 for m in result["update_magnitude"]["mean"])
    names = ["update_magnitude.png", "cka.png", "spectra.png", "cka_core_outputs.png", "routers.png"]
    assert sorted(p.name for p in probed["mesh"].glob("*.png")) == sorted(names)
    for name in names:
        png_size(probed["mesh"] / name)


def test_probe_of_a_vanilla_model_uses_the_split_and_linear_cka(probed):
    result = json.loads((probed["vanilla"] / "probe.json").read_text())
    assert result["label"] == "vanilla 6" and result["model"]["probed_as"] == "1+1+1+1+1+1"
    assert result["states"] == ["emb", "h0", "h1", "h2", "h3", "h4", "out"]
    assert result["router"] is None and result["core_outputs"] == []
    assert result["cka_linear"]["kernel"] == "linear"
    names = ["update_magnitude.png", "cka.png", "spectra.png", "cka_linear.png"]
    assert sorted(p.name for p in probed["vanilla"].glob("*.png")) == sorted(names)


def test_probe_prints_a_summary(models, corpus, cache, tmp_path, capsys):
    assert probe(models["mesh"], tmp_path, corpus, cache, "--no-figures", "--kernel", "linear") == 0
    out = capsys.readouterr().out
    assert "mesh 1+2R2+1 (n=6, seq 16)" in out and "update magnitude  prelude" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.json"]
    assert json.loads((tmp_path / "probe.json").read_text())["cka"]["sigma_frac"] is None


def test_compare_of_probe_outputs_puts_models_side_by_side(probed, tmp_path):
    out = tmp_path / "both"
    argv = ["probe", "--compare", probed["vanilla"], probed["mesh"], "--labels", "base,MeSH", "--out", out]
    assert meshlm_main(argv) == 0
    listing = json.loads((out / "compare.json").read_text())
    assert [m["label"] for m in listing["models"]] == ["base", "MeSH"]
    names = ["update_magnitude.png", "cka.png", "spectra.png", "cka_core_outputs.png", "routers.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in ("cka.png", "spectra.png"):  # one panel per model: twice as wide as one model's figure
        assert png_size(out / name)[0] > 1.6 * png_size(probed["mesh"] / name)[0]


def test_compare_probes_model_folders_it_is_given(models, corpus, cache, tmp_path):
    run_dir = tmp_path / "run"  # a training run folder: the model lives in run/model
    shutil.copytree(models["mesh"], run_dir / "model")
    argv = ["probe", "--compare", run_dir, models["vanilla"], "--out", tmp_path / "cmp", "--data", corpus]
    argv += ["--samples", 3, "--seq-len", SEQ, "--cache-dir", cache, "--split", "3+1+1+1", "--no-figures"]
    assert meshlm_main(argv) == 0
    mesh = json.loads((tmp_path / "cmp" / "01-run" / "probe.json").read_text())
    vanilla = json.loads((tmp_path / "cmp" / "02-vanilla" / "probe.json").read_text())
    assert mesh["model"]["probed_as"] == "1+2R2+1" and mesh["model"]["dir"] == str(run_dir / "model")
    assert vanilla["num_samples"] == 3 and vanilla["model"]["probed_as"] == "3+1+1+1"
    listing = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [m["label"] for m in listing["models"]] == ["mesh 1+2R2+1", "vanilla 6"]
    assert listing["models"][1]["result"] == str(tmp_path / "cmp" / "02-vanilla" / "probe.json")


def test_too_small_val_split_falls_back_to_train(models, corpus, cache, tmp_path, capsys):
    assert probe(models["vanilla"], tmp_path, corpus, cache, "--samples", 30, "--no-figures") == 0
    assert json.loads((tmp_path / "probe.json").read_text())["data"]["split"] == "train"
    assert "note: the val split" in capsys.readouterr().err


def error_line(capsys) -> str:
    """The one ``error:`` line on stderr, its last line (progress bars of model loading may precede it)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.startswith("error: ") for line in err].count(True) == 1 and err[-1].startswith("error: ")
    return err[-1]


def test_bad_inputs_give_exit_2_and_one_error_line(probed, models, corpus, cache, tmp_path, capsys):
    foreign = tmp_path / "gpt2"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    bad_json = tmp_path / "bad"
    bad_json.mkdir()
    (bad_json / "probe.json").write_text(json.dumps({"format": "other"}))
    out = tmp_path / "out"
    cases = [
        (["probe", tmp_path / "missing", "--data", corpus, "--out", out], "is not a folder"),
        (["probe", tmp_path, "--data", corpus, "--out", out], "not a model folder"),
        (["probe", foreign, "--data", corpus, "--out", out], "'gpt2' model, not a meshlm one"),
        (["probe", models["mesh"], "--out", out], "needs --data"),
        (["probe", models["mesh"], "--compare", probed["mesh"], "--out", out], "either one MODEL_DIR or --compare"),
        (["probe", "--compare", probed["mesh"], models["mesh"], "--out", out], "give --data to probe it"),
        (["probe", "--compare", probed["mesh"], probed["vanilla"], "--labels", "a", "--out", out], "2 distinct labels"),
        (["probe", "--compare", bad_json, "--out", out], "not a meshlm probe result"),
        (["probe", models["mesh"], "--labels", "a", "--data", corpus, "--out", out], "use it with --compare"),
    ]
    for argv, message in cases:
        assert meshlm_main(argv) == 2, argv
        assert message in error_line(capsys), argv
    data_cases = [
        (["--samples", 100000], "too few windows"),
        (["--seq-len", 65], "--seq-len must be in 2..64"),
        (["--split", "1+1+1+1+1+1"], "only applies to vanilla"),
        (["--sigma-frac", 0], "sigma_frac must be a positive"),
    ]
    for extra, message in data_cases:
        assert probe(models["mesh"], out, corpus, cache, *extra) == 2, extra
        assert message in error_line(capsys), extra
    assert not out.exists()
