"""Cached greedy decoding throughput: meshlm variants next to HF GPT-NeoX ``generate``, same weights shape.

Times ``generate(max_new_tokens=N, do_sample=False)`` after a warm-up call (CUDA events on GPU,
wall clock on CPU), median over ``--repeats``, and prints one table of new tokens/s: a row per
(model, cache), a column per batch size. ``--cache`` picks the KV caches: ``dynamic`` (the
default ``DynamicCache``) and ``static`` (``cache_implementation="static"``). With a static cache on
GPU, ``generate`` compiles the single-token decode step itself (inductor, ``reduce-overhead``:
CUDA graphs); the bench asks for ``fullgraph=True`` so a graph break fails loudly instead of
being timed, and ``dynamic=False`` so each batch size gets its own specialised graph (the warm-up
call compiles it). On CPU ``generate`` does not compile, and static runs eagerly.

    PYTHONPATH=src python bench/decode.py --preset pythia-160m --batch-sizes 1,16 --prompt-len 128 \
        --new-tokens 128 --variants 12:base,2+4R2+2:base,2+4R2+2:mesh --hf --cache dynamic,static --json decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import CompileConfig

from meshlm import MeshLMConfig, MeshLMForCausalLM
from meshlm.convert import to_gpt_neox


def _timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device``."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1000


CACHES = ("dynamic", "static")
# one object for every call: generate recompiles when the compile config differs from its last one
STATIC_COMPILE = CompileConfig(fullgraph=True, dynamic=False)


def cache_kwargs(cache: str, device: torch.device) -> dict:
    """``generate`` arguments selecting ``cache`` (and, for static on GPU, how its auto-compile runs)."""
    if cache == "dynamic":
        return {}
    if device.type != "cuda":
        return dict(cache_implementation="static")
    return dict(cache_implementation="static", compile_config=STATIC_COMPILE)


def bench_model(model, args, device: torch.device, cache: str) -> dict:
    """New tokens/s of greedy cached generation per batch size (EOS disabled, so every row runs to the end)."""
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = {}
    for batch in args.batch_sizes:
        ids = torch.randint(1, model.config.vocab_size, (batch, args.prompt_len), generator=gen).to(device)
        kwargs = dict(
            attention_mask=torch.ones_like(ids),
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            **cache_kwargs(cache, device),
        )

        def run(ids=ids, kwargs=kwargs):
            with torch.inference_mode():
                model.generate(ids, **kwargs)

        run()
        seconds = statistics.median(_timed(run, device) for _ in range(args.repeats))
        rows[batch] = batch * args.new_tokens / seconds
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-160m")
    parser.add_argument("--variants", default="12:base,2+4R2+2:base,2+4R2+2:mesh", help="layout:scheme,...")
    parser.add_argument("--hf", action="store_true", help="also time transformers GPTNeoXForCausalLM")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, help="override the preset width (tiny CPU checks)")
    parser.add_argument("--cache", default="dynamic", help=f"comma list of KV caches to time: {', '.join(CACHES)}")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.cache = args.cache.split(",")
    if unknown := set(args.cache) - set(CACHES):
        parser.error(f"unknown --cache {', '.join(sorted(unknown))}; choose from {', '.join(CACHES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    if args.hf:
        variants.append(("hf", "gpt-neox"))
    results = []
    for layout, scheme in variants:
        torch.manual_seed(0)
        overrides = dict(hidden_size=args.hidden_size, max_position_embeddings=args.prompt_len + args.new_tokens)
        if layout == "hf":
            cfg = MeshLMConfig.from_preset(args.preset, scale_embeddings=False, **overrides)
            model, name = to_gpt_neox(MeshLMForCausalLM(cfg)), f"HF GPTNeoX {cfg.layout}"
        else:
            cfg = MeshLMConfig.from_preset(args.preset, layout=layout, scheme=scheme, **overrides)
            model, name = MeshLMForCausalLM(cfg), f"meshlm {layout} {scheme}"
        model.to(device, dtype=torch.bfloat16 if device.type == "cuda" else None)  # bf16 weights: static caches
        for cache in args.cache:
            rows = bench_model(model, args, device, cache)
            results.append({"model": name, "cache": cache, "tokens_per_s": rows})
            print(json.dumps(results[-1]), flush=True)
    header = " | ".join(f"batch {b} tok/s" for b in args.batch_sizes)
    print(
        f"\ndevice: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
    )
    print(f"| model | cache | {header} |\n|---|---|" + "---|" * len(args.batch_sizes))
    for r in results:
        cells = " | ".join(f"{r['tokens_per_s'][b]:,.0f}" for b in args.batch_sizes)
        print(f"| {r['model']} | {r['cache']} | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
