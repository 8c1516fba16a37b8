"""Device facts the loop and the benchmarks use: the measured bf16 matmul peak, the CPU thread count."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch

from meshlm.errors import MeshLMError

THREADS_ENV = "MESHLM_THREADS"


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


def _physical_cores() -> int:
    """Distinct (socket, core) pairs in /proc/cpuinfo; the logical CPU count where that is unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.cpu_count() or 1
    pairs, socket = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            socket = value.strip()
        elif key.strip() == "core id":
            pairs.add((socket, value.strip()))
    return len(pairs) or os.cpu_count() or 1


def _cgroup_cpus() -> int | None:
    """The CPU quota of a container (cgroup v2 ``cpu.max``), rounded up; None when there is none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


@functools.cache
def _load_of_others() -> float:
    """The machine's 1-minute load average, read once per process (before this process computes much)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def cpu_threads() -> int:
    """Threads for CPU compute: ``$MESHLM_THREADS``, else ``$OMP_NUM_THREADS``, else the free usable cores.

    Usable cores are the physical ones this process may run on (CPU affinity, container quota),
    split over the ranks torchrun starts on this machine; free ones are those the machine's load
    average leaves idle. More threads than that only make OpenMP threads wait on each other: on
    2 cores with load 13, the demo model's training step took 3.9-5.8 s with 2 threads and
    1.0-1.1 s with 1. The count can change the order of CPU reductions, so a run that must repeat
    bit for bit on a busy machine fixes it with MESHLM_THREADS.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise MeshLMError(f"{THREADS_ENV}={value!r} is not a positive number of threads (e.g. {THREADS_ENV}=1)")
        return int(value)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:  # a nested list such as "4,2" is OpenMP's own business
        return int(omp)
    logical = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    cores = min(_physical_cores(), allowed, _cgroup_cpus() or allowed)
    busy = round(_load_of_others() * cores / logical)  # the load's share on the cores this process may use
    return max(1, (cores - busy) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``--device``: the GPU when there is one and none is named, else the named device, checked.

    A name torch does not know, or CUDA asked for on a machine without it, is one clear error."""
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MeshLMError(f"--device {name} is not a device torch knows; give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeshLMError(f"--device {name} asked for CUDA but no GPU is available; give --device cpu")
    return device
