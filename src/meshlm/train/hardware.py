"""Device facts the loop and the benchmarks report against: the measured bf16 matmul peak."""

from __future__ import annotations

import torch


def measure_bf16_peak(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """Achieved FLOP/s of a large bf16 matmul on ``device`` (CUDA events, after warm-up); 0 on CPU.

    MFU is reported against this number (spec section 8) rather than a datasheet figure.
    """
    if device.type != "cuda":
        return 0.0
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=gen)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000 / repeats
    return 2 * size**3 / seconds
