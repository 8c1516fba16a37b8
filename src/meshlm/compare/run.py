"""Running a sweep: train every variant x seed (resuming), evaluate, probe, and write the report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from meshlm.compare.parallel import fit_parallel, train_parallel
from meshlm.compare.plan import Sweep, log, plan
from meshlm.compare.report import plot_loss_curves, report_markdown, summarize
from meshlm.data.shards import load_tokens
from meshlm.data.view import TokenView
from meshlm.errors import MeshLMError, read_json
from meshlm.train.hardware import resolve_device
from meshlm.train.logging import quiet_transformers
from meshlm.train.loop import load_run_data

RECOMPUTE = "delete it and run the same command to compute it again"


def _finished(run_dir: Path, steps: int) -> bool:
    state = run_dir / "model" / "trainer_state.json"
    return state.exists() and read_json(state).get("steps") == steps


def _has_weights(run_dir: Path) -> bool:
    return any((run_dir / "model").glob("*.safetensors"))


def _eval_tokens(shards, limit: int, held_out: bool) -> torch.Tensor:
    """The first ``limit`` tokens of ``shards``: its validation split, or all of it for an extra eval set."""
    import numpy as np

    splits = ["val"] if held_out else shards.splits
    tokens = TokenView([part for s in splits for part in shards.split(s).parts], dtype=shards.dtype)[:limit]
    if len(tokens) < 2:
        where = "in its val split" if held_out else "at all"
        raise MeshLMError(f"eval set {shards.path} has no tokens to evaluate {where}")
    return torch.from_numpy(tokens.astype(np.int64))


def _load_model(run_dir: Path):
    from transformers import AutoModelForCausalLM

    model_dir = run_dir / "model"
    if not _has_weights(run_dir):
        raise MeshLMError(
            f"{model_dir} has no weights (*.safetensors) to evaluate, and this sweep needs a result its "
            "eval.json / eval_loops.json do not hold; train that run again (delete its folder), or ask "
            "only for cached results (e.g. --eval-loops none)"
        )
    with quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(model_dir)


def _recursive(run_dir: Path) -> bool:
    """Whether the run's model has a shared core, from its saved config (no weights needed)."""
    from meshlm.config import parse_layout

    config = read_json(run_dir / "model" / "config.json")
    return bool(config.get("layout")) and parse_layout(config["layout"]).shared


def _score(sweep: Sweep, model, eval_sets: dict, num_loops: int | None = None) -> dict:
    """Loss/PPL of ``model`` on every eval set, in non-overlapping windows of the training length."""
    from meshlm.eval.perplexity import token_perplexity

    device = resolve_device(sweep.train.device)
    seq = sweep.train.seq_len
    return {
        name: token_perplexity(model, tokens, seq, seq, batch_size=16, device=device, num_loops=num_loops)
        for name, tokens in eval_sets.items()
    }


def evaluate_run(sweep: Sweep, run_dir: Path, eval_sets: dict) -> dict:
    """Held-out loss/PPL of one finished run on every eval set (cached in ``run_dir/eval.json``)."""
    cached = run_dir / "eval.json"
    if cached.exists():
        return read_json(cached, RECOMPUTE)
    result = _score(sweep, _load_model(run_dir), eval_sets)
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate_loops(sweep: Sweep, run_dir: Path, eval_sets: dict) -> dict[str, dict]:
    """Held-out loss/PPL at every ``sweep.eval_loops`` count, ``{k: {set: result}}`` (cached in ``eval_loops.json``).

    Only recursive (shared-core) runs have a loop count to vary; others give ``{}``. Counts already in
    the cache are not recomputed, so adding counts to a finished sweep evaluates only the new ones.
    """
    if not sweep.eval_loops or not _recursive(run_dir):
        return {}
    cached = run_dir / "eval_loops.json"
    done = read_json(cached, RECOMPUTE) if cached.exists() else {}
    missing = [k for k in sweep.eval_loops if str(k) not in done]
    if missing:
        model = _load_model(run_dir)
        for k in missing:
            done[str(k)] = _score(sweep, model, eval_sets, num_loops=k)
        cached.write_text(json.dumps(done, indent=2) + "\n")
    return {str(k): done[str(k)] for k in sweep.eval_loops}


def probe_variants(sweep: Sweep, seeds: dict[str, list[int]]) -> list[Path]:
    """Diagnostics of each variant's first-seed model on held-out windows, figures side by side.

    The first of ``seeds`` (the runs reported) whose weights are here: run folders gathered without
    their weights (``--report-only``) are skipped, and a variant with none is left out with a note.
    """
    if sweep.probe_samples < 1:
        return []
    from meshlm.probe.figures import write_figures
    from meshlm.probe.run import probe_dir

    results = {}
    for variant in sweep.variants:
        runs = [sweep.run_dir(variant, s) for s in seeds.get(variant.name, [])]
        run = next((r for r in runs if _has_weights(r)), None)
        if run is None:
            if runs:
                log(f"note: no probe of {variant.name}: none of its reported runs has its weights here")
            continue
        results[variant.name] = probe_dir(
            run / "model",
            sweep.train.data,
            samples=sweep.probe_samples,
            seq_len=sweep.train.seq_len,
            out_dir=run / "probe",
            cache_dir=sweep.train.cache_dir,
            device=sweep.train.device,
            progress=False,
        )
    return write_figures(results, sweep.out / "probe") if results else []


def check_optional_dependencies(sweep: Sweep) -> None:
    """Refuse a sweep before any training when a package its last step needs is missing."""
    if sweep.probe_samples > 0 and importlib.util.find_spec("matplotlib") is None:
        raise MeshLMError(
            "the probe figures of the sweep need matplotlib: pip install 'meshlm[plot]' "
            "(or pass --probe-samples 0 to skip probing)"
        )


def _unreportable(run_dir: Path, steps: int) -> str | None:
    """Why a run cannot be reported without training it (``None`` when it can)."""
    if not run_dir.is_dir():
        return "no run folder"
    if not _finished(run_dir, steps):
        return "no finished model (model/trainer_state.json at the last step)"
    if not (run_dir / "eval.json").exists() and not _has_weights(run_dir):
        return "no eval.json and no weights"
    return None


def run_sweep(sweep: Sweep, report_only: bool = False) -> dict:
    """Train, evaluate, probe and report every variant x seed; skips what is already done.

    ``report_only`` trains nothing: it reports the runs that finished (with their eval.json or weights)
    and lists the others, so a sweep stopped partway, or run folders gathered from several machines,
    can be reported as they are.
    """
    from meshlm.train.loop import train

    check_optional_dependencies(sweep)
    tokenizer, shards = load_run_data(sweep.train)
    planned = plan(sweep, (tokenizer, shards))
    sweep.out.mkdir(parents=True, exist_ok=True)
    width = max(12, *(len(name) for name in planned["variants"]))
    log(f"{'variant':<{width}} layout      loops         non-emb params   FLOPs/token   total FLOPs")
    for name, row in planned["variants"].items():
        log(
            f"{name:<{width}} {row['layout']:<11} {row['train_loops']:<13} {row['non_embedding']:>14,}   "
            f"{row['flops_per_token']:.3e}   {row['total_flops']:.3e}"
        )
    eval_sets = {"held-out": _eval_tokens(shards, sweep.eval_tokens, held_out=True)}
    for name, source in sweep.evals.items():
        extra = load_tokens(source, tokenizer, cache_dir=sweep.train.cache_dir)
        eval_sets[name] = _eval_tokens(extra, sweep.eval_tokens, held_out=False)
    cells = [(variant, seed) for seed in sweep.seeds for variant in sweep.variants]
    done, missing = cells, []
    if report_only:
        done = []
        for variant, seed in cells:
            if reason := _unreportable(sweep.run_dir(variant, seed), planned["steps"]):
                missing.append({"variant": variant.name, "seed": seed, "reason": reason})
                log(f"[left out] {variant.name} seed {seed}: {reason}")
            else:
                done.append((variant, seed))
        if not done:
            raise MeshLMError(f"--report-only: no run of {sweep.out} is finished and evaluable, so there is no report")
    else:
        _train_pending(sweep, cells, planned, eval_sets, tokenizer.vocab_size, train)
    evals, loops = {}, {}
    for variant, seed in done:
        run_dir = sweep.run_dir(variant, seed)
        evals.setdefault(variant.name, {})[seed] = evaluate_run(sweep, run_dir, eval_sets)
        if sweep.eval_loops:
            loops.setdefault(variant.name, {})[seed] = evaluate_loops(sweep, run_dir, eval_sets)
    summary = summarize(sweep, planned, evals, loops, missing)
    seeds = {name: row["seeds"] for name, row in summary["variants"].items()}
    figures = probe_variants(sweep, seeds)
    curves = plot_loss_curves(sweep, sweep.out / "loss_curves.png", seeds)
    summary["figures"] = [str(p.relative_to(sweep.out)) for p in [*figures, *([curves] if curves else [])]]
    (sweep.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (sweep.out / "report.md").write_text(report_markdown(summary, sweep))
    return summary


def _train_pending(sweep: Sweep, cells: list, planned: dict, eval_sets: dict, vocab_size: int, train) -> None:
    """Train every run of ``cells`` not finished yet (resuming), evaluating each as soon as it is done;
    one error line if any is still unfinished afterwards (a signal, a time limit)."""
    pending = []
    for variant, seed in cells:
        if _finished(sweep.run_dir(variant, seed), planned["steps"]):
            log(f"[skip] {variant.name} seed {seed}: already trained")
        else:
            pending.append((variant, seed))

    def evaluate_finished(variant, seed) -> None:
        """Evaluate a run as soon as it is done, at every ``eval_loops`` count too: a sweep stopped later
        (a time limit, a released machine) keeps the held-out results of every run it finished, and
        parallel runs get no serial tail."""
        run_dir = sweep.run_dir(variant, seed)
        if _finished(run_dir, planned["steps"]):
            evaluate_run(sweep, run_dir, eval_sets)
            evaluate_loops(sweep, run_dir, eval_sets)

    n = fit_parallel(sweep, pending, vocab_size) if sweep.parallel > 1 else 1
    if n > 1:
        train_parallel(sweep, pending, n, evaluate_finished)
    else:
        for variant, seed in pending:
            log(f"[train] {variant.name} seed {seed} -> {sweep.run_dir(variant, seed)}")
            if train(sweep.run_config(variant, seed)).get("interrupted_by_signal"):
                break  # Ctrl-C / SIGTERM stops the sweep, not just this run; the unfinished check below says so
            evaluate_finished(variant, seed)
    unfinished = [str(sweep.run_dir(v, s)) for v, s in cells if not _finished(sweep.run_dir(v, s), planned["steps"])]
    if unfinished:
        raise MeshLMError(
            f"{len(unfinished)} run(s) stopped before the end ({', '.join(unfinished)}); "
            "run the same command again to continue them (or --report-only to report those that finished)"
        )
