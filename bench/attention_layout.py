"""Which memory layout SDPA writes its output in, and what the q/k/v layout costs in fwd + bwd.

q, k and v are cut from one fused (batch, seq, heads, 3 x head_dim) projection, as in
``meshlm.model.layers.Attention``, and handed to ``F.scaled_dot_product_attention`` either as
contiguous (batch, heads, seq, head_dim) copies or as transposed views of the projection's
(batch, seq, heads, head_dim) layout. For each it prints the output's strides, the wall time of
a causal forward + backward including the reshape back to (batch, seq, hidden), and on GPU the
summed CUDA kernel time of one such pass and its top kernels. The output layout decides
whether ``out.transpose(1, 2).reshape(...)`` and its gradient need a copy. ``--backends``
repeats every layout under each named SDPA backend (``default`` lets SDPA choose), to see
whether the one SDPA picks for meshlm's causal, mask-free call is the fastest.

    PYTHONPATH=src python bench/attention_layout.py --batch 8 --seq-len 2048 --heads 16 --head-dim 64 \
        --backends default,cudnn,flash,efficient
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bhsd-contiguous": lambda t: t.transpose(1, 2).contiguous(),
    "bshd-views": lambda t: t.transpose(1, 2),
}

BACKENDS: dict[str, list[SDPBackend] | None] = {
    "default": None,
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}


def pinned(backend: str) -> contextlib.AbstractContextManager:
    """A context pinning SDPA to the backend named in ``BACKENDS`` (``default``: SDPA's own choice)."""
    kernels = BACKENDS[backend]
    return sdpa_kernel(kernels) if kernels else contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--backends", default="default", help=f"comma-separated, from {', '.join(BACKENDS)}")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown --backends {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    b, n, h, d = args.batch, args.seq_len, args.heads, args.head_dim
    qkv = torch.randn(b, n, h, 3 * d, device=device, dtype=dtype, requires_grad=True)
    print(f"device {device}, torch {torch.__version__}; BSHD-contiguous strides are {(n * h * d, d, h * d, 1)}")
    for (layout, make), backend in itertools.product(LAYOUTS.items(), backends):
        name = f"{layout} {backend}"

        def run(make=make) -> torch.Tensor:
            q, k, v = (make(x) for x in qkv.split(d, dim=-1))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.transpose(1, 2).reshape(b, n, h * d).sum().backward()
            return out

        with pinned(backend):
            try:
                _time(name, run, args.iters, device)
            except RuntimeError as err:  # a backend that cannot take this shape, dtype or device
                print(f"{name}: not available here ({str(err).splitlines()[0]})")


def _time(name: str, run: Callable[[], torch.Tensor], iters: int, device: torch.device) -> None:
    """Print the output strides, the wall time and (on GPU) the CUDA kernel time of ``run``."""
    for _ in range(3):
        out = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / iters * 1e3
    print(f"{name}: output strides {out.stride()}; forward + backward {ms:.3f} ms wall")
    if device.type == "cuda":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        kernels_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
        print(f"{name}: {kernels_ms:.3f} ms of CUDA kernels per forward + backward (wall time can be host-bound)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70))


if __name__ == "__main__":
    main()
