"""Time full training steps (forward, backward, clip, fused AdamW) of meshlm variants and HF GPT-NeoX.

Prints one table: median step time over ``--steps`` timed steps after ``--warmup`` (CUDA
events), tokens/s, MFU against a bf16 matmul peak measured in the same run, peak memory, and
whether ``torch.compile(fullgraph=True)`` traced the model without a graph break.

    PYTHONPATH=src python bench/train_step.py --preset pythia-160m --micro-batch 16 --seq-len 2048 \
        --variants 12:base,2+4R2+2:base,2+4R2+2:mesh --hf --compile --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from meshlm import MeshLMConfig, MeshLMForCausalLM
from meshlm.accounting import count
from meshlm.convert import to_gpt_neox
from meshlm.train.hardware import measure_bf16_peak
from meshlm.train.optim import build_optimizer


def _step_fn(model, hf: bool):
    def step(ids, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if hf:
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            else:
                loss = model(ids, targets=targets, use_cache=False).loss
        loss.backward()
        return loss

    return step


def bench_one(model, flops_per_token: int, args, peak: float, hf: bool) -> dict:
    """Median step time and derived numbers of one model (already on the GPU)."""
    device = torch.device("cuda")
    model.train()
    compiled_ok = None
    eager_forward = model.forward
    if args.compile:
        try:
            model.forward = torch.compile(eager_forward, fullgraph=True)
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
    step = _step_fn(model, hf)
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        end.record()
        if i >= args.warmup:
            times.append((start, end))
    torch.cuda.synchronize(device)
    ms = statistics.median(s.elapsed_time(e) for s, e in times)
    tokens = args.micro_batch * args.seq_len
    tok_s = tokens / (ms / 1000)
    return {
        "step_ms": ms,
        "tokens_per_s": tok_s,
        "mfu": tok_s * flops_per_token / peak,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
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
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    peak = measure_bf16_peak(device)
    rows = []
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    if args.hf:
        variants.append(("hf", "gpt-neox"))
    for layout, scheme in variants:
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
            name = f"meshlm {layout} {scheme}"
        flops = count(cfg, args.seq_len).flops_per_token
        row = {
            "model": name,
            "preset": args.preset,
            "flops_per_token": flops,
            **bench_one(model, flops, args, peak, hf=layout == "hf"),
        }
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
