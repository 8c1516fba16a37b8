"""``meshlm convert from-neox|to-neox``: same logits both ways, recursive layouts, refusals as one line."""

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM

from fixtures.eval_tiny import tiny_tokenizer
from meshlm import MeshLMForCausalLM
from meshlm.cli import main
from meshlm.convert import from_gpt_neox
from meshlm.train.checkpoint import damage
from test_convert import random_neox

TEXT = "The river carried the little boat past the mill."
IDS = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory):
    """A random 6-layer GPT-NeoX saved with a 300-token tokenizer."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("neox")
    random_neox(layers=6, vocab_size=300).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def convert(*argv) -> int:
    return main(["convert", *map(str, argv)])


def test_from_neox_gives_the_sources_logits_and_tokenizer(neox_dir, tmp_path, capsys):
    out = tmp_path / "meshlm"
    assert convert("from-neox", neox_dir, "--out", out) == 0
    assert "layout 6, scheme base" in capsys.readouterr().out
    ours = MeshLMForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(ours), logits(GPTNeoXForCausalLM.from_pretrained(neox_dir)), atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(out)(TEXT).input_ids == AutoTokenizer.from_pretrained(neox_dir)(TEXT).input_ids
    assert damage(out) is None  # a meshlm folder with recorded checksums, as meshlm train writes


def test_to_neox_round_trip_gives_back_the_same_model(neox_dir, tmp_path):
    assert convert("from-neox", neox_dir, "--out", tmp_path / "meshlm") == 0
    assert convert("to-neox", tmp_path / "meshlm", "--out", tmp_path / "back") == 0
    source, back = (GPTNeoXForCausalLM.from_pretrained(d) for d in (neox_dir, tmp_path / "back"))
    torch.testing.assert_close(logits(back), logits(source), atol=1e-5, rtol=0)
    for key in ("bos_token_id", "eos_token_id", "num_hidden_layers", "use_parallel_residual"):
        assert getattr(back.config, key) == getattr(source.config, key), key
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "back")(TEXT).input_ids
        == AutoTokenizer.from_pretrained(neox_dir)(TEXT).input_ids
    )


def test_recursive_layout_conversion_loads_runs_and_matches_the_python_api(neox_dir, tmp_path, capsys):
    out = tmp_path / "avg"
    assert convert("from-neox", neox_dir, "--out", out, "--layout", "1+2R2+1", "--core-init", "average") == 0
    converted = AutoModelForCausalLM.from_pretrained(out)
    assert (converted.config.layout, converted.config.scheme) == ("1+2R2+1", "base")
    expected = from_gpt_neox(GPTNeoXForCausalLM.from_pretrained(neox_dir), layout="1+2R2+1", core_init="average")
    torch.testing.assert_close(logits(converted), logits(expected))
    mesh = tmp_path / "mesh"
    assert convert("from-neox", neox_dir, "--out", mesh, "--layout", "1+2R3+1", "--scheme", "mesh") == 0
    model = AutoModelForCausalLM.from_pretrained(mesh).eval()
    assert model.config.scheme == "mesh" and model.config.buffer_size is None
    assert torch.isfinite(logits(model)).all()
    generated = model.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 9)
    capsys.readouterr()
    assert convert("to-neox", mesh, "--out", tmp_path / "back") == 2
    assert "is not vanilla" in capsys.readouterr().err
    assert not (tmp_path / "back").exists()


def test_force_replaces_an_existing_out_and_only_then(neox_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("saved work")
    assert convert("from-neox", neox_dir, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds files" in err and "--force" in err
    assert (out / "notes.txt").read_text() == "saved work"
    assert convert("from-neox", neox_dir, "--out", out, "--layout", "3+2R2+3") == 2  # needs 8 source layers
    assert (out / "notes.txt").read_text() == "saved work"
    assert convert("from-neox", neox_dir, "--out", out, "--force") == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_hub_id_is_read_from_the_local_cache_only(neox_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert convert("from-neox", "acme/tiny-neox", "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "local Hugging Face cache" in err and "downloads nothing" in err
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-neox"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in neox_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    assert convert("from-neox", "acme/tiny-neox", "--out", tmp_path / "a") == 0
    torch.testing.assert_close(
        logits(MeshLMForCausalLM.from_pretrained(tmp_path / "a")),
        logits(GPTNeoXForCausalLM.from_pretrained(neox_dir)),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["from-neox", "{tmp}/missing", "--out", "{tmp}/o"], "does not exist"),
        (["from-neox", "{tmp}/file.txt", "--out", "{tmp}/o"], "is not a folder"),
        (["from-neox", "{tmp}/meshlm", "--out", "{tmp}/o"], "not a 'gpt_neox' one"),
        (["from-neox", "{tmp}", "--out", "{tmp}/o"], "holds no config.json"),
        (["from-neox", "{neox}", "--out", "{neox}/inside"], "overlaps the source folder"),
        (["from-neox", "{neox}", "--out", "{tmp}/file.txt", "--force"], "is a file, not a folder"),
        (["from-neox", "{neox}", "--out", "{tmp}/o", "--layout", "1+2R2+1", "--scheme", "nope"], "scheme"),
        (["from-neox", "{neox}", "--out", "{tmp}/o", "--layout", "2+2R2+2", "--core-init", "average"], "average"),
        (["to-neox", "{neox}", "--out", "{tmp}/o"], "not a 'meshlm' one"),
        (["to-neox", "{tmp}/missing", "--out", "{tmp}/o"], "is not a folder"),
    ],
)
def test_refusals_are_one_line(neox_dir, tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("x")
    from_gpt_neox(random_neox(layers=2, vocab_size=300)).save_pretrained(tmp_path / "meshlm")
    capsys.readouterr()
    assert convert(*(a.format(tmp=tmp_path, neox=neox_dir) for a in argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert not (tmp_path / "o").exists()
