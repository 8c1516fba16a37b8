"""``meshlm eval`` on a saved tiny model dir, and the Table 1 helpers."""

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from fixtures.eval_tiny import PARAGRAPHS, TASKS_DIR, run_eval_cli, save_model_dir, tiny_pair
from meshlm.errors import MeshLMError
from meshlm.eval.cli import parse_int_list, parse_named
from meshlm.eval.lambada import lambada
from meshlm.eval.perplexity import documents_to_stream, rolling_document_perplexity, token_perplexity
from meshlm.eval.tables import table1_markdown, table1_row

TOKENS_SEEN = 123456


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_dir(tmp_path_factory.mktemp("model"), TOKENS_SEEN)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(PARAGRAPHS):
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    return folder


def test_eval_report_holds_every_number_and_the_model_info(model_dir, corpus, tmp_path, capsys):
    lambada_file = TASKS_DIR / "lambada.jsonl"
    out_json, out_md = tmp_path / "r" / "eval.json", tmp_path / "eval.md"
    argv = ["eval", str(model_dir), "--ppl", f"pile={corpus}", "--rolling", f"wikitext={corpus}"]
    argv += ["--lambada", f"lambada_openai={lambada_file}", "--lambada", str(lambada_file)]
    argv += ["--context", "32", "--stride", "8", "--batch-size", "3", "--device", "cpu"]
    assert run_eval_cli([*argv, "--json", str(out_json), "--markdown", str(out_md)]) == 0
    report = json.loads(out_json.read_text())

    model, tokenizer = tiny_pair()
    docs = PARAGRAPHS  # the folder is read in file-name order: doc0.txt, doc1.txt, ...
    tokens, n_bytes = documents_to_stream(tokenizer, docs)
    ppl = token_perplexity(model, tokens, 32, 8, n_bytes=n_bytes, device="cpu")
    rolling = rolling_document_perplexity(model, tokenizer, docs, 32, device="cpu")
    lamb = lambada(model, tokenizer, lambada_file, device="cpu")
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert report["ppl"]["pile"][key] == pytest.approx(ppl[key], rel=1e-5)
    assert report["ppl"]["pile"]["tokens"] == ppl["tokens"] and report["ppl"]["pile"]["bytes"] == n_bytes
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert report["rolling"]["wikitext"][key] == pytest.approx(rolling[key], rel=1e-5)
    assert report["lambada"]["lambada_openai"]["acc"] == lamb["acc"]
    assert report["lambada"]["lambada"]["perplexity"] == pytest.approx(lamb["perplexity"], rel=1e-5)

    info = report["model"]
    assert info["model_type"] == "gpt_neox" and info["tokens_trained"] == TOKENS_SEEN
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert info["layout"] is None and info["max_position_embeddings"] == 64
    assert report["settings"]["context"] == 32 and report["settings"]["stride"] == 8

    row = report["table1"]
    assert row["ppl_pile"] == report["ppl"]["pile"]["perplexity"]
    assert row["ppl_wikitext"] == report["rolling"]["wikitext"]["word_perplexity"]
    assert row["ppl_lambada_openai"] == report["lambada"]["lambada_openai"]["perplexity"]
    assert row["ppl_lambada_standard"] is None and row["avg_0shot"] is None
    markdown = out_md.read_text()
    assert markdown == capsys.readouterr().out
    assert "| layout | variant | PPL Pile | PPL WikiText |" in markdown
    assert f"| {report['ppl']['pile']['perplexity']:.2f} |" in markdown


def test_eval_reads_tokens_of_a_matching_shard_folder(model_dir, corpus, tmp_path):
    from meshlm.data.shards import TokenShards, prepare_shards
    from meshlm.data.tokenizers import load_tokenizer

    shards = prepare_shards(str(corpus), load_tokenizer(str(model_dir)), tmp_path / "shards", val_fraction=0.5)
    val = torch.from_numpy(TokenShards(shards).split("val")[:].astype("int64"))
    assert len(val) > 10
    out = tmp_path / "eval.json"
    assert run_eval_cli(["eval", str(model_dir), "--ppl", f"val={shards}", "--device", "cpu", "--json", str(out)]) == 0
    model, tokenizer = tiny_pair()
    n_bytes = len(tokenizer.decode(val[1:].tolist(), skip_special_tokens=True).encode())
    expected = token_perplexity(model, val, 64, n_bytes=n_bytes, device="cpu")
    result = json.loads(out.read_text())["ppl"]["val"]
    assert result["tokens"] == len(val) - 1 and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_eval_refuses_a_shard_folder_of_another_tokenizer(model_dir, corpus, tmp_path):
    from meshlm.data.shards import prepare_shards
    from meshlm.data.tokenizers import load_tokenizer

    other = tmp_path / "other.json"  # the same vocabulary plus one token: a different tokenizer
    vocab = tiny_pair()[1].get_vocab()
    word_level = Tokenizer(models.WordLevel({**vocab, "extra-token": len(vocab)}, unk_token="<|endoftext|>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.save(str(other))
    shards = prepare_shards(str(corpus), load_tokenizer(str(other)), tmp_path / "shards", val_fraction=0.5)
    with pytest.raises(MeshLMError, match="was tokenized with"):
        run_eval_cli(["eval", str(model_dir), "--ppl", f"val={shards}", "--device", "cpu"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "nothing to evaluate"),
        (["--ppl", "pile"], "NAME=SOURCE"),
        (["--ppl", "pile=/no/such/file.txt"], "does not exist"),
        (["--lambada", "/no/such.jsonl"], "does not exist"),
        (["--lambada", "x.jsonl", "--num-fewshot", "0,a"], "comma-separated integers"),
        (["--ppl", "p={corpus}", "--context", "65"], r"outside 1\.\.64"),
        (["--ppl", "p={corpus}", "--stride", "65"], "stride must be between 1 and the context"),
    ],
)
def test_eval_user_errors(model_dir, corpus, extra, message):
    argv = ["eval", str(model_dir), "--device", "cpu", *(arg.format(corpus=corpus) for arg in extra)]
    with pytest.raises(MeshLMError, match=message):
        run_eval_cli(argv)


def test_eval_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(MeshLMError, match="not a model folder"):
        run_eval_cli(["eval", str(tmp_path), "--lambada", "x.jsonl"])


def test_eval_accepts_a_training_run_folder(model_dir, tmp_path):
    """``meshlm eval RUN_DIR`` evaluates RUN_DIR/model, as ``meshlm probe RUN_DIR`` does."""
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    argv = ["--lambada", str(TASKS_DIR / "lambada.jsonl"), "--device", "cpu", "--json"]
    assert run_eval_cli(["eval", str(run), *argv, str(tmp_path / "run.json")]) == 0
    assert run_eval_cli(["eval", str(model_dir), *argv, str(tmp_path / "dir.json")]) == 0
    from_run, from_dir = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("run", "dir"))
    assert from_run["lambada"] == from_dir["lambada"]
    assert from_run["model"]["dir"] == str(run / "model") and from_run["model"]["tokens_trained"] == TOKENS_SEEN


def test_lambada_takes_any_data_source(model_dir, tmp_path):
    """--lambada NAME=SOURCE reads one passage per document, e.g. a folder of .txt files or hf:DATASET."""
    jsonl = TASKS_DIR / "lambada.jsonl"
    folder = tmp_path / "passages"
    folder.mkdir()
    for i, line in enumerate(jsonl.read_text().splitlines()):
        (folder / f"{i:02d}.txt").write_text(json.loads(line)["text"])
    argv = ["eval", str(model_dir), "--lambada", str(jsonl), "--lambada", f"txt={folder}", "--device", "cpu"]
    assert run_eval_cli([*argv, "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())["lambada"]
    assert result["txt"]["examples"] == result["lambada"]["examples"] == 10
    assert result["txt"]["perplexity"] == pytest.approx(result["lambada"]["perplexity"], rel=1e-6)


def test_argument_parsers():
    assert parse_named("wiki=hf:wikitext:wikitext-2-raw-v1:test", "--ppl") == (
        "wiki",
        "hf:wikitext:wikitext-2-raw-v1:test",
    )
    assert parse_int_list("0, 5", "--num-fewshot") == [0, 5]
    with pytest.raises(MeshLMError):
        parse_named("=x", "--ppl")
    with pytest.raises(MeshLMError):
        parse_int_list("-1", "--num-fewshot")


def test_table1_markdown_column_order_and_missing_values():
    rows = [
        {"layout": "24", "variant": "vanilla", "ppl_pile": 9.07, "ppl_wikitext": 21.79, "avg_0shot": 43.871},
        {"model": "410M", "layout": "4+8R2+4", "variant": "mesh", "ppl_lambada_standard": 42.51, "avg_5shot": 45.6},
    ]
    lines = table1_markdown(rows).splitlines()
    assert lines[0] == (
        "| model | layout | variant | PPL Pile | PPL WikiText | PPL LAMBADA-O | PPL LAMBADA-S "
        "| 0-shot avg | 5-shot avg |"
    )
    assert lines[2] == "| - | 24 | vanilla | 9.07 | 21.79 | - | - | 43.87 | - |"
    assert lines[3] == "| 410M | 4+8R2+4 | mesh | - | - | - | 42.51 | - | 45.60 |"
    assert table1_markdown(rows[:1]).splitlines()[0].startswith("| layout | variant |")


def test_table1_row_reads_harness_results_when_native_ones_are_absent():
    summary = {"piqa": {"metric": "acc_norm", "value": 0.6, "stderr": None}}
    report = {
        "model": {"layout": "2+4R2+2", "scheme": "mesh"},
        "harness": {
            "0": {"results": {"lambada_standard": {"perplexity": 50.0}}, "summary": summary, "average_accuracy": 0.5},
            "5": {"results": {}, "summary": summary, "average_accuracy": 0.55},
        },
    }
    row = table1_row(report)
    assert row["variant"] == "mesh" and row["ppl_lambada_standard"] == 50.0 and row["ppl_lambada_openai"] is None
    assert row["avg_0shot"] == pytest.approx(50.0) and row["avg_5shot"] == pytest.approx(55.0)
    assert table1_row({"model": {"layout": "12", "scheme": "base"}})["variant"] == "vanilla"


@pytest.fixture(scope="module")
def recursive_dir(tmp_path_factory):
    """A tiny (untrained) recursive meshlm model saved with the fixtures' tokenizer."""
    from conftest import save_recursive_model

    return save_recursive_model(tmp_path_factory.mktemp("recursive"), tiny_pair()[1])


def test_eval_reports_perplexity_per_loop_count(recursive_dir, corpus, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out_json = tmp_path / "eval.json"
    argv = ["eval", str(recursive_dir), "--ppl", f"pile={corpus}", "--rolling", f"wikitext={corpus}"]
    argv += ["--context", "32", "--device", "cpu", "--loops", "1,2,4", "--json", str(out_json)]
    assert run_eval_cli(argv) == 0
    report = json.loads(out_json.read_text())
    assert list(report["loops"]) == ["1", "2", "4"]
    assert report["loops"]["2"]["ppl"]["pile"] == report["ppl"]["pile"]  # the trained K is the default forward
    assert report["loops"]["2"]["rolling"]["wikitext"] == report["rolling"]["wikitext"]
    model = AutoModelForCausalLM.from_pretrained(recursive_dir)
    _, tokenizer = tiny_pair()
    tokens, _ = documents_to_stream(tokenizer, PARAGRAPHS)
    for k in (1, 4):
        direct = token_perplexity(model, tokens, 32, device="cpu", num_loops=k)
        assert report["loops"][str(k)]["ppl"]["pile"]["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
        assert direct["perplexity"] != pytest.approx(report["ppl"]["pile"]["perplexity"], rel=1e-4)
    markdown = capsys.readouterr().out
    assert "## Perplexity by loop count" in markdown and "| loops | pile ppl | wikitext word ppl |" in markdown


@pytest.mark.parametrize(
    ("which", "extra", "message"),
    [
        ("neox", ["--ppl", "p={corpus}", "--loops", "2"], "needs a recursive meshlm model"),
        ("recursive", ["--ppl", "p={corpus}", "--loops", "0,2"], "num_loops must be an integer >= 1"),
        ("recursive", ["--ppl", "p={corpus}", "--loops", "two"], "comma-separated integers"),
        ("recursive", ["--lambada", str(TASKS_DIR / "lambada.jsonl"), "--loops", "2"], "give --ppl or --rolling"),
    ],
)
def test_eval_loops_user_errors(model_dir, recursive_dir, corpus, which, extra, message):
    folder = model_dir if which == "neox" else recursive_dir
    argv = ["eval", str(folder), "--device", "cpu", *(arg.format(corpus=corpus) for arg in extra)]
    with pytest.raises(MeshLMError, match=message):
        run_eval_cli(argv)
