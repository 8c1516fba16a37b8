"""Time the training step on 1-8 GPUs with DDP and FSDP2: tokens/s per GPU, MFU, scaling, memory.

Launch it with torchrun (one process per GPU; without torchrun it is the one-GPU baseline). Each
row is one (variant, activation checkpointing, strategy) built, wrapped and compiled exactly as
``meshlm train`` does (``wrap_model``), then timed over ``--steps`` optimizer steps of
``--accum`` micro-batches of random tokens after ``--warmup`` steps::

    python bench/multi_gpu.py --json ac_1gpu.json                               # 1 GPU, 1.4B, seq 4096
    torchrun --standalone --nproc-per-node 8 bench/multi_gpu.py --strategy ddp,fsdp --json ac_8gpu.json
    python bench/multi_gpu.py --table ac_1gpu.json ac_8gpu.json                 # merged table + scaling

Reported per row (the slowest rank's median step; memory is the largest rank's):
``tokens_per_s_per_gpu``; ``mfu`` (model FLOPs per token of :mod:`meshlm.accounting`, recompute
not counted, over the bf16 matmul peak measured in the run); ``peak_mem_gib``; ``activation_gib``
(memory the first micro-batch's forward adds and keeps for backward, i.e. saved activations);
``final_loss`` (rows over the same data must agree: a cheap check that the strategies and
checkpointing modes train the same model). ``--table`` adds ``efficiency``: tokens/s per GPU over
the one-GPU row of the same variant, checkpointing, micro-batch, accumulation and sequence length.
At one GPU no wrapper is used (strategy ``single``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from meshlm import MeshLMConfig, MeshLMForCausalLM
from meshlm.accounting import count
from meshlm.model.lm import CHECKPOINT_MODES
from meshlm.train.distributed import setup_distributed, wrap_model
from meshlm.train.hardware import measure_bf16_peak
from meshlm.train.optim import build_optimizer

STRATEGIES = ("ddp", "fsdp")
MATCH = ("model", "checkpointing", "micro_batch", "accum", "seq_len")  # what a scaling baseline must share


def _csv(choices: tuple[str, ...] | None = None):
    """argparse type: a comma-separated list, each item among ``choices`` when given."""

    def parse(text: str) -> list[str]:
        items = [t for t in text.split(",") if t]
        bad = [t for t in items if choices is not None and t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(choices or ())}")
        return items

    return parse


def _variant(text: str) -> tuple[str, str]:
    layout, sep, scheme = text.partition(":")
    if not sep or not layout or not scheme:
        raise argparse.ArgumentTypeError(f"{text!r}: a variant is LAYOUT:SCHEME, e.g. 4+8R2+4:mesh")
    return layout, scheme


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-1.4b")
    parser.add_argument(
        "--variants", default="4+8R2+4:mesh,24:base", help="LAYOUT:SCHEME,... (default: the paper's 1.4B pair)"
    )
    parser.add_argument("--strategy", type=_csv(STRATEGIES), default=["ddp", "fsdp"], help="ddp,fsdp (2+ ranks)")
    parser.add_argument(
        "--checkpointing", type=_csv(tuple(CHECKPOINT_MODES)), default=["none", "full"], help="none,full,selective"
    )
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per forward on one GPU")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step (one gradient sync)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu (gloo) only to test the script")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="only print the merged table of these row files")
    args = parser.parse_args(argv)
    if args.table:
        return args
    try:
        args.variants = [_variant(v) for v in args.variants.split(",")]
    except argparse.ArgumentTypeError as err:
        parser.error(f"--variants {err}")
    for name in ("seq_len", "micro_batch", "accum", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no GPU here; --device cpu runs the script on CPU (gloo) for testing only")
    return args


class StepTimer:
    """Step times: CUDA events on GPU (read after one synchronise at the end), wall clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: list = []

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self._begin = self._now()

    def stop(self) -> None:
        self.spans.append((self._begin, self._now()))

    def median_s(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return statistics.median(b.elapsed_time(e) / 1000 for b, e in self.spans)
        return statistics.median(e - b for b, e in self.spans)


def bench_row(args, dist, layout: str, scheme: str, mode: str, strategy: str, peak: float) -> dict:
    """Build, wrap and time one configuration; every rank returns the same (reduced) row."""
    dist = dataclasses.replace(dist, fsdp=strategy == "fsdp")  # what wrap_model and no_sync read
    device = dist.device
    torch.manual_seed(0)
    cfg = MeshLMConfig.from_preset(args.preset, layout=layout, scheme=scheme, max_position_embeddings=args.seq_len)
    model = MeshLMForCausalLM(cfg).to(device)
    model.set_activation_checkpointing(mode)
    wrapped = wrap_model(model, dist, compile=args.compile)
    opt = build_optimizer(wrapped, 3e-4)
    gen = torch.Generator(device=device).manual_seed(1000 + dist.rank)  # each rank its own data, same every row
    batches = [
        torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len + 1), device=device, generator=gen)
        for _ in range(args.accum)
    ]
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    allocated = torch.cuda.memory_allocated if cuda else (lambda *_: 0)

    def step(measure: bool = False) -> tuple[torch.Tensor, int]:
        saved = 0
        total = torch.zeros((), device=device)
        for i, w in enumerate(batches):
            sync = dist.no_sync(wrapped) if i < len(batches) - 1 else nullcontext()
            before = allocated(device)
            with sync:  # FSDP2 reads the flag in backward, DDP in forward
                with autocast():
                    loss = wrapped(w[:, :-1], targets=w[:, 1:]).loss
                if measure and i == 0:
                    saved = allocated(device) - before
                (loss / len(batches)).backward()
            total += loss.detach() / len(batches)
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total, saved

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    _, saved = step(measure=True)  # untimed: the allocator's view of one forward
    timer = StepTimer(device)
    for _ in range(args.steps):
        timer.start()
        loss, _ = step()
        timer.stop()
    step_s = timer.median_s()
    peak_mem = torch.cuda.max_memory_allocated(device) if cuda else 0
    stats = torch.tensor([step_s, peak_mem, saved], device=device, dtype=torch.float64)
    if dist.world > 1:
        torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.MAX)
    dist.all_reduce(loss, average=True)
    step_s = stats[0].item()
    tokens_per_gpu = args.micro_batch * args.accum * args.seq_len / step_s
    flops = count(cfg, args.seq_len).flops_per_token
    return {
        "model": f"{args.preset} {layout} {scheme}",
        "gpus": dist.world,
        "strategy": strategy,
        "checkpointing": mode,
        "micro_batch": args.micro_batch,
        "accum": args.accum,
        "seq_len": args.seq_len,
        "compile": args.compile,
        "step_s": step_s,
        "tokens_per_s_per_gpu": tokens_per_gpu,
        "mfu": tokens_per_gpu * flops / peak if peak else None,
        "peak_mem_gib": stats[1].item() / 2**30 if cuda else None,
        "activation_gib": stats[2].item() / 2**30 if cuda else None,
        "final_loss": loss.item(),
    }


def with_efficiency(rows: list[dict]) -> list[dict]:
    """Each row plus ``efficiency``: its tokens/s per GPU over the matching one-GPU row's (None without one)."""
    base = {tuple(r[k] for k in MATCH): r["tokens_per_s_per_gpu"] for r in rows if r["gpus"] == 1}
    out = []
    for r in rows:
        one = base.get(tuple(r[k] for k in MATCH))
        out.append({**r, "efficiency": r["tokens_per_s_per_gpu"] / one if one else None})
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(rows: list[dict]) -> str:
    """A markdown table of the rows, with scaling efficiency against their one-GPU rows."""
    lines = [
        "| model | GPUs | strategy | checkpointing | micro x accum | tokens/s/GPU | MFU | efficiency | peak GiB "
        "| activations GiB | loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(with_efficiency(rows), key=lambda r: (r["model"], r["checkpointing"], r["gpus"], r["strategy"])):
        lines.append(
            f"| {r['model']} | {r['gpus']} | {r['strategy']} | {r['checkpointing']} | {r['micro_batch']} x "
            f"{r['accum']} | {r['tokens_per_s_per_gpu']:,.0f} | {_pct(r['mfu'])} | {_pct(r['efficiency'])} | "
            f"{_gib(r['peak_mem_gib'])} | {_gib(r['activation_gib'])} | {r['final_loss']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table:
        rows = []
        for path in args.table:
            with open(path) as f:
                rows += json.load(f)["rows"]
        print(table(rows))
        return
    dist = setup_distributed()
    if dist.device is None:  # one process: the one-GPU baseline (or CPU when testing)
        dist = dataclasses.replace(dist, device=torch.device(args.device))
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = measure_bf16_peak(dist.device)
    strategies = args.strategy if dist.world > 1 else ["single"]
    rows = []
    for layout, scheme in args.variants:
        for mode in args.checkpointing:
            for strategy in strategies:
                row = bench_row(args, dist, layout, scheme, mode, strategy, peak)
                rows.append(row)
                if dist.is_main:
                    print(json.dumps(row), file=sys.stderr, flush=True)
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    if dist.is_main:
        meta = {
            "device": torch.cuda.get_device_name(dist.device) if args.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "peak_tflops": peak / 1e12,
            "world": dist.world,
        }
        print(f"{meta}\n{table(rows)}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=2)
    dist.close()


if __name__ == "__main__":
    main()
