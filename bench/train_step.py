"""Time full training steps (forward, backward, clip, fused AdamW) of meshlm variants and HF GPT-NeoX.

Prints one table: median step time over ``--steps`` timed steps after ``--warmup`` (CUDA
events), tokens/s, MFU against a bf16 matmul peak measured in the same run, peak memory, and
whether ``torch.compile(fullgraph=True)`` traced the model without a graph break.
``--loss fused,plain`` times meshlm both with its fused head + cross-entropy and with full
logits + ``F.cross_entropy`` (the before/after of the fused loss); ``--profile DIR`` writes the
top CUDA kernels of a few profiled steps per model (evidence for where the time goes);
``--sdpa-backend`` pins the attention kernel of the meshlm rows (HF's keep SDPA's own choice).

    PYTHONPATH=src python bench/train_step.py --preset pythia-160m --micro-batch 16 --seq-len 2048 \
        --variants 12:base,2+4R2+2:base,2+4R2+2:mesh --hf --compile --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

import torch
import torch.nn.functional as F
import transformers
from attention_layout import BACKENDS, pinned  # the sibling bench script; run this file as bench/train_step.py

from meshlm import MeshLMConfig, MeshLMForCausalLM
from meshlm.accounting import count
from meshlm.convert import to_gpt_neox
from meshlm.train.hardware import measure_bf16_peak
from meshlm.train.optim import build_optimizer


def _step_fn(model, loss_kind: str):
    """Forward + backward of one micro-batch; ``loss_kind`` is hf, fused or plain."""

    def step(ids, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if loss_kind == "hf":
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            elif loss_kind == "fused":
                loss = model(ids, targets=targets, use_cache=False).loss
            else:
                logits = model(ids, use_cache=False).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        return loss

    return step


def _profile(full_step, path: str, rows: int) -> None:
    """Write the top ``rows`` CUDA kernels of three profiled calls of ``full_step`` to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            full_step()
        torch.cuda.synchronize()
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=90))


def bench_one(model, flops_per_token: int, args, peak: float, loss_kind: str, profile_path: str | None) -> dict:
    """Median step time and derived numbers of one model (already on the GPU)."""
    device = torch.device("cuda")
    model.train()
    compiled_ok = None
    eager_forward = model.forward
    if args.compile:
        try:
            model.forward = torch.compile(eager_forward, fullgraph=True, mode=args.compile_mode)
            compiled_ok = True
        except Exception as err:  # report and fall back rather than abort the whole table
            print(f"compile failed: {err}", file=sys.stderr)
            compiled_ok = False
    opt = build_optimizer(model, 3e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    batches = [
        torch.randint(0, vocab, (args.micro_batch, args.seq_len + 1), device=device, generator=gen) for _ in range(4)
    ]
    step = _step_fn(model, loss_kind)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        w = batches[i % len(batches)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            step(w[:, :-1], w[:, 1:])
        except Exception as err:
            if compiled_ok:
                print(f"compiled step failed ({err}); graph break or unsupported op", file=sys.stderr)
                compiled_ok = False
                model.forward = eager_forward
                step(w[:, :-1], w[:, 1:])
            else:
                raise
        update()
        end.record()
        if i >= args.warmup:
            times.append((start, end))
    torch.cuda.synchronize(device)
    peak_mem = torch.cuda.max_memory_allocated(device)
    if profile_path:
        w = batches[0]
        _profile(lambda: (step(w[:, :-1], w[:, 1:]), update()), profile_path, args.profile_rows)
    ms = statistics.median(s.elapsed_time(e) for s, e in times)
    tokens = args.micro_batch * args.seq_len
    tok_s = tokens / (ms / 1000)
    return {
        "step_ms": ms,
        "tokens_per_s": tok_s,
        "mfu": tok_s * flops_per_token / peak,
        "peak_mem_gib": peak_mem / 2**30,
        "fullgraph": compiled_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-160m")
    parser.add_argument("--variants", default="12:base,2+4R2+2:base,2+4R2+2:mesh", help="layout:scheme,...")
    parser.add_argument("--hf", action="store_true", help="also time transformers GPTNeoXForCausalLM (vanilla)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        default="default",
        help="torch.compile mode for every model, HF's too (default: default); reduce-overhead adds CUDA graphs",
    )
    parser.add_argument("--loss", default="fused", help="meshlm loss path(s): fused, plain or fused,plain")
    parser.add_argument("--profile", metavar="DIR", help="write a kernel profile per model into DIR")
    parser.add_argument("--profile-rows", type=int, default=40, help="kernels per profile table (default: 40)")
    parser.add_argument(
        "--sdpa-backend",
        choices=tuple(BACKENDS),
        default="default",
        help="attention kernel for the meshlm rows (default: SDPA's choice); HF's rows are left to SDPA",
    )
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    losses = args.loss.split(",")
    if unknown := set(losses) - {"fused", "plain"}:
        parser.error(f"unknown --loss {', '.join(sorted(unknown))}; choose from fused, plain")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    peak = measure_bf16_peak(device)
    rows = []
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    runs = [(layout, scheme, kind) for layout, scheme in variants for kind in losses]
    if args.hf:
        runs.append(("hf", "gpt-neox", "hf"))
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    for layout, scheme, loss_kind in runs:
        torch.manual_seed(0)
        if layout == "hf":
            cfg = MeshLMConfig.from_preset(args.preset, scale_embeddings=False, max_position_embeddings=args.seq_len)
            model = to_gpt_neox(MeshLMForCausalLM(cfg)).to(device)
            name = f"HF GPTNeoX {cfg.layout}"
        else:
            cfg = MeshLMConfig.from_preset(
                args.preset, layout=layout, scheme=scheme, max_position_embeddings=args.seq_len
            )
            model = MeshLMForCausalLM(cfg).to(device)
            attention = "" if args.sdpa_backend == "default" else f", {args.sdpa_backend} attention"
            name = f"meshlm {layout} {scheme} ({loss_kind} loss{attention})"
        flops = count(cfg, args.seq_len).flops_per_token
        profile_path = None
        if args.profile:
            profile_path = os.path.join(args.profile, re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_") + ".txt")
        with pinned(args.sdpa_backend if layout != "hf" else "default"):
            timed = bench_one(model, flops, args, peak, loss_kind, profile_path)
        row = {"model": name, "preset": args.preset, "flops_per_token": flops, **timed}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    meta = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "peak_tflops": peak / 1e12,
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "sdpa_backend_meshlm": args.sdpa_backend,
        "transformers": transformers.__version__,
    }
    print(f"\n{meta}")
    print("| model | step ms | tokens/s | MFU | peak GiB | fullgraph |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | "
            f"{r['peak_mem_gib']:.1f} | {r['fullgraph']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
