"""Throughput of small-model sweeps on one GPU: eager vs compiled single runs, and N compiled runs at once.

Every row runs real ``meshlm train`` processes (the ones ``meshlm compare --parallel N`` starts,
same configs) for ``--steps`` steps and reads their ``log.jsonl``: steady tokens/s is the median
over the log windows after the first two (compile and warm-up), aggregate tokens/s the sum over
the runs that ran at once, measured over the window in which all of them were past their warm-up and
still training (``time`` of the log records; a row whose runs never overlapped reports none and asks
for more ``--steps``), end-to-end tokens/s all tokens over the row's wall time (start-up and
compilation included), peak memory the largest ``max_memory_gib`` a run logged. The N-run rows
cycle through ``--variants`` like a sweep does; the single-run rows train ``--single`` (default
mesh, the most expensive). Data: a shard folder (``--data``) or ``--random-tokens N`` uniform token
ids over a 50,277-word vocabulary (the NeoX size), built into a shard folder under ``--work``.

    PYTHONPATH=src python bench/sweep_throughput.py --random-tokens 4000000 --preset pythia-31m \
        --parallel 4,8 --json sweep_throughput.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from meshlm.compare.parallel import error_line, launch
from meshlm.compare.plan import Sweep, Variant
from meshlm.train.loop import TrainConfig

NEOX_VOCAB = 50_277


def random_shards(work: Path, n_tokens: int) -> Path:
    """A shard folder of ``n_tokens`` uniform random ids (a word-level tokenizer over t0 ... t50276)."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    from meshlm.data.shards import prepare_shards
    from meshlm.data.tokenizers import Tokenizer

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, NEOX_VOCAB)}}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = Tokenizer(backend, name="random-wordlevel", eos_token="<|endoftext|>")
    corpus = work / "random.jsonl"
    rng = np.random.default_rng(0)
    with open(corpus, "w") as f:
        for _ in range(n_tokens // 2048):
            f.write(json.dumps({"text": " ".join(f"t{i}" for i in rng.integers(1, NEOX_VOCAB, 2047))}) + "\n")
    return prepare_shards(str(corpus), tokenizer, work / "shards", val_fraction=0.01)


def shared_window_rate(logs: list[list[dict]], skip: int = 2) -> tuple[float | None, float]:
    """Tokens/s of runs side by side, summed over the time all of them were steady: (rate, window seconds).

    Each log's first ``skip`` records (compilation, warm-up) are left out; a run's tokens at the
    window's ends are interpolated between its records. Summing each run's own steady rate instead
    overcounts when the runs' steady windows do not overlap (staggered compilation). ``None`` when
    they do not overlap at all.
    """
    steady = [records[skip:] if len(records) > skip + 1 else records for records in logs]
    start = max(r[0]["time"] for r in steady)
    end = min(r[-1]["time"] for r in steady)
    if end <= start:
        return None, 0.0
    gained = 0.0
    for records in steady:
        times = [r["time"] for r in records]
        tokens = [r["tokens"] for r in records]
        gained += float(np.interp(end, times, tokens) - np.interp(start, times, tokens))
    return gained / (end - start), end - start


def run_group(configs: list[TrainConfig]) -> dict:
    """Start every config at once, wait for all, and read each run's log."""
    start = time.perf_counter()
    procs = [launch(cfg) for cfg in configs]
    for proc, _ in procs:
        proc.wait()
    wall = time.perf_counter() - start
    runs, logs = [], []
    for (proc, log_path), cfg in zip(procs, configs, strict=True):
        if proc.returncode != 0:
            runs.append({"run": cfg.out, "error": error_line(log_path)})
            continue
        records = [json.loads(x) for x in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
        logs.append(records)
        steady = [r["tokens_per_s"] for r in records[2:]] or [records[-1]["tokens_per_s"]]
        runs.append(
            {
                "run": cfg.out,
                "layout": cfg.layout,
                "scheme": cfg.scheme,
                "steady_tokens_per_s": statistics.median(steady),
                "tokens": records[-1]["tokens"],
                "peak_mem_gib": max((r["max_memory_gib"] for r in records if "max_memory_gib" in r), default=None),
            }
        )
    ok = [r for r in runs if "error" not in r]
    aggregate, window = shared_window_rate(logs) if logs else (None, 0.0)
    return {
        "runs": runs,
        "failed": len(runs) - len(ok),
        "aggregate_tokens_per_s": aggregate,
        "shared_window_s": window,
        "end_to_end_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "wall_s": wall,
        "peak_mem_gib_per_process": max((r["peak_mem_gib"] for r in ok if r["peak_mem_gib"] is not None), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a shard folder (meshlm data prepare)")
    source.add_argument("--random-tokens", type=int, help="build a shard folder of this many random tokens")
    parser.add_argument("--work", help="folder for runs and random shards (default: a temporary folder)")
    parser.add_argument("--preset", default="pythia-31m")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--layout", default="2+4R2+2", help="the recursive layout; vanilla runs use its twin")
    parser.add_argument("--variants", default="vanilla,base,anchor,mesh")
    parser.add_argument("--single", default="mesh", help="variant of the single-run rows")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=32 * 1024)
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--parallel", default="4,8", help="comma list of N for the N-runs-at-once rows")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager single-run row")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script on tiny sizes")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="sweep-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or str(random_shards(work, args.random_tokens))
    train = TrainConfig(
        data=data,
        preset=args.preset,
        hidden_size=args.hidden_size,
        layout=args.layout,
        seq_len=args.seq_len,
        batch_tokens=args.batch_tokens,
        micro_batch=args.micro_batch,
        max_steps=args.steps,
        log_every=args.log_every,
        eval_batches=2,
        device=args.device,
        tensorboard=False,
        progress=False,
        cache_dir=str(work / "cache"),
    )
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    rows = []

    def row(name: str, compile_: bool, picks: list[tuple[Variant, int]]) -> None:
        train.compile = compile_
        sweep = Sweep(train=train, variants=variants, seeds=[0], out=work / name.replace(" ", "-"))
        shutil.rmtree(sweep.out, ignore_errors=True)  # every row trains from scratch
        result = run_group([sweep.run_config(v, seed) for v, seed in picks])
        rows.append({"row": name, "compile": compile_, "n": len(picks), **result})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)

    single = Variant.parse(args.single)
    if not args.no_eager:
        row("eager x1", False, [(single, 0)])
    row("compiled x1", True, [(single, 0)])
    for n in (int(x) for x in args.parallel.split(",") if x):
        row(f"compiled x{n}", True, [(variants[i % len(variants)], i // len(variants)) for i in range(n)])

    import torch

    meta = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "preset": args.preset,
        "hidden_size": args.hidden_size,
        "layout": args.layout,
        "seq_len": args.seq_len,
        "batch_tokens": args.batch_tokens,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "data": data,
    }
    print(f"\n{meta}")
    print("| row | runs | steady tokens/s per run | aggregate tokens/s | end-to-end tokens/s | peak GiB/process |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        per_run = ", ".join(f"{x['steady_tokens_per_s']:,.0f}" if "error" not in x else "failed" for x in r["runs"])
        peak = "-" if r["peak_mem_gib_per_process"] is None else f"{r['peak_mem_gib_per_process']:.1f}"
        agg = r["aggregate_tokens_per_s"]
        agg = "no overlap: more --steps" if agg is None else f"{agg:,.0f} ({r['shared_window_s']:.0f} s shared)"
        print(f"| {r['row']} | {r['n']} | {per_run} | {agg} | {r['end_to_end_tokens_per_s']:,.0f} | {peak} |")
    for r in rows:
        for x in r["runs"]:
            if "error" in x:
                print(f"{r['row']}: {x['run']} failed: {x['error']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
