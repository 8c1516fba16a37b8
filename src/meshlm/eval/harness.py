"""Bridge to the LM Evaluation Harness (``lm_eval``, extra ``meshlm[eval]``, imported lazily).

The model is wrapped as it is (``HFLM(pretrained=model, tokenizer=...)``), so any Hugging Face
causal LM works, meshlm's included. Forward passes use bf16 autocast on CUDA and fp32 elsewhere,
with log-softmax in fp32, as :mod:`meshlm.eval.scoring` does. Tasks are resolved by a
``TaskManager`` that also scans ``include_path`` for local task YAMLs. The harness's own logging
is left untouched.

Summary metric per task (the paper's choice): ``acc_norm`` (length-normalised) for
:data:`PRIMARY_METRICS`' multiple-choice tasks, ``acc`` for the others.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from meshlm.errors import MeshLMError
from meshlm.eval.scoring import prepare_model

LM_EVAL_PIN = "lm-eval==0.4.13"
PRIMARY_METRICS = {
    "piqa": "acc_norm",
    "hellaswag": "acc_norm",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "sciq": "acc_norm",
    "lambada_openai": "acc",
    "lambada_standard": "acc",
    "winogrande": "acc",
    "mmlu_continuation": "acc",
}
ACCURACY_METRICS = ("acc", "acc_norm")


def primary_metric(task: str) -> str:
    """The metric the summary reports for ``task`` (``acc`` unless listed in PRIMARY_METRICS)."""
    return PRIMARY_METRICS.get(task, "acc")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise MeshLMError(
            f"the LM Evaluation Harness is not importable ({e}); pip install 'meshlm[eval]' "
            f"(or pip install {LM_EVAL_PIN})."
        ) from None
    return lm_eval, HFLM, TaskManager, EvaluationTracker


@functools.cache
def _task_manager(include_path: str | None):
    """One lm-eval TaskManager per include path: indexing every task YAML takes ~10 s."""
    return _import_lm_eval()[2](include_path=include_path)


def _top_level(loaded: dict) -> dict:
    """Task and group objects of a ``TaskManager.load`` result that are nobody's child, by name."""
    children = {child for names in loaded["group_map"].values() for child in names}
    top = {name: g for name, g in loaded["groups"].items() if name not in children}
    top.update((name, t) for name, t in loaded["tasks"].items() if name not in children)
    return top


def load_tasks(task_manager, tasks: Sequence[str]) -> dict:
    """Build every task (loading its data) one by one, so a failure names the task at fault.

    Returns the top-level task and group objects by name (a tag expands to its tasks).
    """
    built: dict = {}
    for name in tasks:
        try:
            built.update(_top_level(task_manager.load([name])))
        except KeyError as e:
            raise MeshLMError(
                f"lm-eval task {name!r} could not be built ({e}); check the name (lm-eval ls tasks) or point "
                "--include-path at a folder holding its YAML."
            ) from None
        except OSError as e:
            raise MeshLMError(
                f"lm-eval task {name!r} could not load its data ({e}); run it once with network access so "
                "the Hugging Face datasets cache (HF_DATASETS_CACHE) holds it, or give a local task YAML "
                "whose dataset_kwargs.data_files name local files through --include-path."
            ) from e
    return built


def _metrics(raw: dict) -> dict:
    """``{"acc,none": v, "acc_stderr,none": s}`` -> ``{"acc": v, "acc_stderr": s}`` (other filters kept)."""
    out = {}
    for key, value in raw.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else key] = value
    return out


def summarize(results: dict, tasks: Sequence[str]) -> dict:
    """Per task: the selected metric, its value and stderr (``acc``, else the first metric, if absent)."""
    summary = {}
    for name in tasks:
        metrics = results.get(name, {})
        if not metrics:
            continue
        metric = primary_metric(name)
        if metric not in metrics:
            metric = "acc" if "acc" in metrics else next(k for k in metrics if not k.endswith("_stderr"))
        stderr = metrics.get(f"{metric}_stderr")
        summary[name] = {
            "metric": metric,
            "value": metrics[metric],
            "stderr": stderr if isinstance(stderr, int | float) else None,
        }
    return summary


def average_accuracy(summary: dict) -> float | None:
    """Mean of the summary values whose metric is an accuracy (None if there is none)."""
    values = [s["value"] for s in summary.values() if s["metric"] in ACCURACY_METRICS]
    return sum(values) / len(values) if values else None


def check_output_options(output_path: str | Path | None, log_samples: bool) -> None:
    """Refuse ``log_samples`` without ``output_path``; create the folder lm-eval's files go to.

    That folder is a ``.json`` path's parent, else the path itself. Called before any evaluation,
    so an unwritable ``--output-path`` fails first (lm-eval only logs a warning when it cannot write).
    """
    if log_samples and output_path is None:
        raise MeshLMError("--log-samples writes the records beside --output-path's results; give --output-path too.")
    if output_path is None:
        return
    path = Path(output_path).expanduser()
    try:
        (path.parent if path.suffix == ".json" else path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MeshLMError(f"cannot write --output-path {output_path}: {e}") from None


def _save_lm_eval_files(tracker, out: dict, samples: dict | None) -> list[str]:
    """Write lm-eval's results JSON (and per-task samples) through its own tracker; the paths written.

    The names are lm-eval's: ``DIR/<model>/results_<date>.json`` (``FILE_<date>.json`` for a
    ``.json`` path) and ``samples_<task>_<date>.jsonl`` beside it.
    """
    tracker.save_results_aggregated(results=out, samples=samples)
    path = Path(tracker.output_path)
    if path.suffix == ".json":
        results = path.with_name(f"{path.stem}_{tracker.date_id}.json")
    else:
        results = path / str(tracker.general_config_tracker.model_name_sanitized) / f"results_{tracker.date_id}.json"
    written = [results]
    for task in out["configs"] if samples is not None else []:
        tracker.save_results_samples(task_name=task, samples=samples[task])
        written.append(results.parent / f"samples_{task}_{tracker.date_id}.jsonl")
    missing = [str(p) for p in written if not p.is_file()]
    if missing:
        raise MeshLMError(f"lm-eval could not write {', '.join(missing)} (its log says why).")
    return [str(p) for p in written]


def run_harness(
    model: nn.Module,
    tokenizer,
    tasks: list[str],
    num_fewshot: int,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    *,
    max_length: int | None = None,
    bootstrap_iters: int = 100000,
    model_args: dict | None = None,
    output_path: str | Path | None = None,
    log_samples: bool = False,
) -> dict:
    """Evaluate ``model`` on lm-eval ``tasks`` with ``num_fewshot`` examples; numbers plus a summary.

    ``max_length`` (default: from the model config) bounds the harness's context windows;
    ``bootstrap_iters`` = 0 skips the bootstrap stderr of perplexity-type metrics. ``model_args``
    (e.g. ``{"pretrained": MODEL_DIR}``) is recorded in lm-eval's config and names the results folder.
    ``output_path`` writes lm-eval's own results JSON there, as ``lm_eval --output_path`` does, and
    ``log_samples`` its per-sample records beside it.
    Returns ``{"num_fewshot", "results": {task: {metric: value}}, "n_samples", "versions",
    "summary": {task: {"metric", "value", "stderr"}}, "average_accuracy", "lm_eval_version"}``,
    plus ``"lm_eval_files"`` (the paths written) with ``output_path``.
    """
    if not tasks:
        raise MeshLMError("no lm-eval task given; pass e.g. --tasks piqa,arc_easy.")
    if include_path is not None and not Path(include_path).is_dir():
        raise MeshLMError(f"--include-path {include_path} is not a folder of task YAMLs.")
    check_output_options(output_path, log_samples)
    lm_eval, hflm, _, tracker_class = _import_lm_eval()
    tracker = tracker_class(output_path=str(Path(output_path).expanduser())) if output_path is not None else None
    run_on = prepare_model(model, device)
    lm = hflm(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        backend="causal",
        max_length=max_length,
        mixed_precision_dtype=torch.bfloat16 if run_on.type == "cuda" else None,
        softmax_dtype=torch.float32,
    )
    task_manager = _task_manager(str(Path(include_path).resolve()) if include_path is not None else None)
    built = load_tasks(task_manager, tasks)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(built.values()),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=log_samples,
        model_args=model_args,
        batch_size=batch_size,  # recorded in lm-eval's config, as its CLI records it
        device=str(run_on),
        evaluation_tracker=tracker,
    )
    samples = out.pop("samples", None) if log_samples else None
    results = {name: _metrics(raw) for name, raw in out["results"].items()}
    summary = summarize(results, list(built))
    report = {
        "num_fewshot": num_fewshot,
        "results": results,
        "n_samples": {name: n.get("effective") for name, n in out.get("n-samples", {}).items()},
        "versions": out.get("versions", {}),
        "summary": summary,
        "average_accuracy": average_accuracy(summary),
        "lm_eval_version": lm_eval.__version__,
    }
    if tracker is not None:
        report["lm_eval_files"] = _save_lm_eval_files(tracker, out, samples)
    return report
