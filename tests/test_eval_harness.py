"""The lm-eval bridge end to end (``meshlm eval --tasks``), offline, on local task YAMLs.

The tasks and their data live in tests/fixtures/eval_tasks/. Each harness number is checked
against the same log-likelihoods computed directly with the tiny model (and against meshlm's
own rolling perplexity and LAMBADA, which must agree with it).
"""

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.eval_tiny import (
    TASKS_DIR,
    brute_force_logprobs,
    next_token_logprobs,
    run_eval_cli,
    save_model_dir,
    tiny_pair,
)
from meshlm.errors import MeshLMError
from meshlm.eval.harness import load_tasks, primary_metric, run_harness
from meshlm.eval.lambada import lambada
from meshlm.eval.perplexity import rolling_document_perplexity

pytest.importorskip("lm_eval")

TASKS = ["meshlm_tiny_mc", "meshlm_tiny_rolling", "meshlm_tiny_lambada"]


def go_offline(mp: pytest.MonkeyPatch, cache) -> None:
    """HF datasets offline with a private cache (config is read at import, so patch it too)."""
    import datasets
    import huggingface_hub

    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The JSON report of ``meshlm eval MODEL_DIR --tasks ...`` on the saved tiny model."""
    model_dir = save_model_dir(tmp_path_factory.mktemp("model"), tokens_seen=1000)
    out = model_dir / "eval.json"
    argv = ["eval", str(model_dir), "--tasks", ",".join(TASKS), "--include-path", str(TASKS_DIR), "--num-fewshot", "0"]
    argv += ["--batch-size", "4", "--device", "cpu", "--bootstrap-iters", "0", "--json", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp, tmp_path_factory.mktemp("hf_datasets"))
        mp.chdir(TASKS_DIR)  # the YAMLs name their data files relative to the working directory
        assert run_eval_cli(argv) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(full_report):
    return full_report["harness"]["0"]


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / name).read_text().splitlines()]


def test_multiple_choice_accuracy_equals_argmax_of_summed_continuation_logprobs(report):
    model, tokenizer = tiny_pair()
    hits = hits_norm = 0
    docs = records("mc.jsonl")
    for doc in docs:
        n_context = len(tokenizer.encode(doc["question"]))
        lls = []
        for choice in doc["choices"]:
            whole = tokenizer.encode(doc["question"] + " " + choice)
            assert len(whole) <= 64
            lls.append(float(next_token_logprobs(model, whole)[n_context - 1 :].sum()))
        hits += int(np.argmax(lls)) == doc["label"]
        hits_norm += int(np.argmax([ll / len(c) for ll, c in zip(lls, doc["choices"], strict=True)])) == doc["label"]
    results = report["results"]["meshlm_tiny_mc"]
    assert results["acc"] == pytest.approx(hits / len(docs))
    assert results["acc_norm"] == pytest.approx(hits_norm / len(docs))
    assert report["summary"]["meshlm_tiny_mc"] == {"metric": "acc", "value": results["acc"], "stderr": None}


def test_rolling_task_equals_direct_windowed_loglikelihood(report):
    model, tokenizer = tiny_pair()
    docs = [r["text"] for r in records("docs.jsonl")]
    encoded = [[tokenizer.eos_token_id, *tokenizer.encode(d)] for d in docs]
    assert max(len(ids) for ids in encoded) > 2 * 64  # several rolling windows
    loglikelihood = sum(sum(brute_force_logprobs(model, ids, 64, 64)) for ids in encoded)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    n_bytes = sum(len(d.encode()) for d in docs)
    results = report["results"]["meshlm_tiny_rolling"]
    assert results["word_perplexity"] == pytest.approx(math.exp(-loglikelihood / words), rel=1e-4)
    assert results["byte_perplexity"] == pytest.approx(math.exp(-loglikelihood / n_bytes), rel=1e-4)
    assert results["bits_per_byte"] == pytest.approx(-loglikelihood / n_bytes / math.log(2), rel=1e-4)
    ours = rolling_document_perplexity(model, tokenizer, docs, context=64, device="cpu")
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[key] == pytest.approx(results[key], rel=1e-4)


def test_lambada_task_equals_meshlm_lambada(report):
    model, tokenizer = tiny_pair()
    ours = lambada(model, tokenizer, TASKS_DIR / "lambada.jsonl", device="cpu")
    results = report["results"]["meshlm_tiny_lambada"]
    assert results["acc"] == pytest.approx(ours["acc"])
    assert results["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-4)


def test_summary_average_counts_accuracy_metrics_only(report):
    assert report["num_fewshot"] == 0 and report["n_samples"]["meshlm_tiny_mc"] == 10
    assert report["summary"]["meshlm_tiny_rolling"]["metric"] == "word_perplexity"
    accuracies = [report["results"][t]["acc"] for t in ("meshlm_tiny_mc", "meshlm_tiny_lambada")]
    assert report["average_accuracy"] == pytest.approx(sum(accuracies) / 2)


def test_report_table_row_uses_the_harness_average(full_report):
    assert full_report["table1"]["avg_0shot"] == pytest.approx(100 * full_report["harness"]["0"]["average_accuracy"])
    assert full_report["table1"]["avg_5shot"] is None
    assert [primary_metric(t) for t in ("piqa", "sciq", "winogrande", "mmlu_continuation", "boolq")] == [
        "acc_norm",
        "acc_norm",
        "acc",
        "acc",
        "acc",
    ]


def test_unavailable_data_and_unknown_tasks_name_the_task(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    go_offline(monkeypatch, tmp_path / "hf_datasets")
    hub = "task: hub_only\ndataset_path: no-org/no-data\noutput_type: multiple_choice\ntest_split: test\n"
    hub += "doc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
    (tmp_path / "hub_only.yaml").write_text(hub)
    local = (TASKS_DIR / "meshlm_tiny_mc.yaml").read_text().replace("meshlm_tiny_mc", "missing_file")
    (tmp_path / "missing_file.yaml").write_text(local.replace("mc.jsonl", str(tmp_path / "absent.jsonl")))
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    for task in ("hub_only", "missing_file"):
        with pytest.raises(MeshLMError, match=f"task '{task}' could not load its data .*--include-path"):
            load_tasks(manager, [task])
    with pytest.raises(MeshLMError, match=r"task 'no_such_task' could not be built .*not a registered task"):
        load_tasks(manager, ["no_such_task"])


def test_groups_stay_whole_and_tags_expand_to_their_tasks(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    go_offline(monkeypatch, tmp_path / "hf_datasets")
    mc = (TASKS_DIR / "meshlm_tiny_mc.yaml").read_text().replace("mc.jsonl", str(TASKS_DIR / "mc.jsonl"))
    for name in ("tagged_a", "tagged_b"):
        (tmp_path / f"{name}.yaml").write_text(mc.replace("meshlm_tiny_mc", name) + "tag: tiny_tag\n")
    (tmp_path / "group.yaml").write_text("group: tiny_group\ntask:\n  - tagged_a\n  - tagged_b\n")
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert list(load_tasks(manager, ["tiny_group"])) == ["tiny_group"]
    assert sorted(load_tasks(manager, ["tiny_tag"])) == ["tagged_a", "tagged_b"]


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    model, tokenizer = tiny_pair()
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(MeshLMError, match=r"pip install 'meshlm\[eval\]'"):
        run_harness(model, tokenizer, ["piqa"], 0, 1, "cpu")
    with pytest.raises(MeshLMError, match="not a folder"):
        run_harness(model, tokenizer, ["piqa"], 0, 1, "cpu", include_path="/no/such/dir")


@pytest.mark.parametrize("target", ["results", "out.json"])
def test_output_path_writes_lm_evals_results_json_and_samples(tmp_path, monkeypatch, capsys, target):
    """lm-eval's spellings work, and --output_path/--log_samples write the files lm_eval itself writes."""
    model_dir = save_model_dir(tmp_path / "model", tokens_seen=1000)
    output, report_file = tmp_path / target, tmp_path / "eval.json"
    argv = ["eval", str(model_dir), "--tasks", "meshlm_tiny_mc,meshlm_tiny_lambada", "--include-path", str(TASKS_DIR)]
    argv += ["--num_fewshot", "0", "--batch_size", "3", "--limit", "4", "--device", "cpu", "--bootstrap-iters", "0"]
    argv += ["--output_path", str(output), "--log_samples", "--json", str(report_file)]
    go_offline(monkeypatch, tmp_path / "hf_datasets")
    monkeypatch.chdir(TASKS_DIR)
    assert run_eval_cli(argv) == 0
    report = json.loads(report_file.read_text())
    assert report["settings"]["batch_size"] == 3
    run = report["harness"]["0"]
    results_file, *sample_files = map(Path, run["lm_eval_files"])
    if target == "out.json":
        assert results_file.parent == tmp_path and re.fullmatch(r"out_.+\.json", results_file.name)
    else:  # lm_eval's DIR/<model name sanitized>/results_<date>.json
        assert results_file.parent.parent == output and re.fullmatch(r"results_.+\.json", results_file.name)
    dated = re.compile(r"_\d{4}-\d\d-\d\dT[\d.-]+\.jsonl?$")  # lm-eval's <date> suffix
    assert sorted(str(p) for p in results_file.parent.iterdir() if dated.search(p.name)) == sorted(run["lm_eval_files"])
    written = json.loads(results_file.read_text())
    for task in ("meshlm_tiny_mc", "meshlm_tiny_lambada"):
        assert written["results"][task]["acc,none"] == run["results"][task]["acc"]
        assert written["n-shot"][task] == 0 and written["versions"][task] == 1.0
        assert written["configs"][task]["task"] == task
        assert written["n-samples"][task]["effective"] == 4
    assert written["config"]["model_args"] == {"pretrained": str(model_dir), "dtype": "float32", "max_length": 64}
    assert (written["config"]["batch_size"], written["config"]["limit"]) == (3, 4)
    assert set(written["task_hashes"]) == {"meshlm_tiny_mc", "meshlm_tiny_lambada"}
    assert sorted(dated.sub("", p.name) for p in sample_files) == [
        "samples_meshlm_tiny_lambada",
        "samples_meshlm_tiny_mc",
    ]
    for path in sample_files:
        task = dated.sub("", path.name).removeprefix("samples_")
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        assert [s["doc_id"] for s in samples] == [0, 1, 2, 3]
        assert sum(s["acc"] for s in samples) / 4 == pytest.approx(written["results"][task]["acc,none"])
        if task == "meshlm_tiny_mc":
            assert [s["doc"] for s in samples] == records("mc.jsonl")[:4]
    assert f"lm-eval wrote {results_file}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ppl", "x=y", "--output-path", "o"], "give --tasks"),
        (["--tasks", "meshlm_tiny_mc", "--log_samples"], "give --output-path too"),
    ],
)
def test_lm_eval_output_options_are_checked_before_the_model_loads(tmp_path, extra, message):
    with pytest.raises(MeshLMError, match=message):
        run_eval_cli(["eval", str(tmp_path / "no-model"), *extra])
