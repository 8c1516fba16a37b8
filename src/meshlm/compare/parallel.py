"""Several runs of a sweep at once on one device: ``meshlm train`` subprocesses with a memory check first.

A small model leaves most of a GPU idle, so ``meshlm compare --parallel N`` trains up to N runs
side by side. Each run is its own ``meshlm train --config runs/<run>/train_config.yaml`` process
(the same TrainConfig as a sequential run, so the same result on the same device; bitwise on
CPU, see the tests), logging to its own folder and ``train.log``. Before starting on CUDA, one
training step of every variant and one evaluation batch are measured in this process, and N is
lowered (with a message) to what fits in the free GPU memory. A run that fails stops the sweep
with its one error line; the others get SIGTERM, which makes them save a checkpoint, so running
the same command again resumes every run. Ctrl-C or SIGTERM to the sweep stops the runs the same way.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from meshlm.compare.plan import Sweep, Variant, log
from meshlm.errors import MeshLMError
from meshlm.train.hardware import resolve_device
from meshlm.train.loop import TrainConfig

GIB = 2**30
# per process on top of the measured peak: CUDA context, allocator slack, compile workspace (an estimate)
PROCESS_OVERHEAD = int(1.5 * GIB)
ALLOCATOR_SLACK = 1.25
# torch.compile's peak over the eager peak that is measured here: d=256 runs measured 10.3 GiB eager,
# 16.0 GiB allocated once compiled, and up to 34.5 GiB per process while 8 compiled at once
# (docs/results/scaling-31m/parallel8-oom.log); compiling in the parent to measure it would cost a minute
COMPILE_PEAK_FACTOR = 3.4
POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def runs_that_fit(
    requested: int, free: int, per_run: int, eval_reserve: int, compiled: bool = False
) -> tuple[int, str]:
    """How many runs of ``per_run`` bytes (eager peak) fit in ``free`` bytes next to the evaluation, and why."""
    factor = COMPILE_PEAK_FACTOR if compiled else 1.0
    need = int(per_run * factor * ALLOCATOR_SLACK) + PROCESS_OVERHEAD
    fits = max(1, int((free - eval_reserve) // need))
    peak = f"measured peak {per_run / GIB:.1f} GiB" + (f" x {factor} for torch.compile" if compiled else "")
    text = (
        f"each run needs about {need / GIB:.1f} GiB ({peak} x {ALLOCATOR_SLACK} "
        f"+ {PROCESS_OVERHEAD / GIB:.1f} GiB per process), evaluation {eval_reserve / GIB:.1f} GiB, "
        f"{free / GIB:.1f} GiB free"
    )
    if fits < requested:
        return fits, f"--parallel {requested} lowered to {fits}: {text}; a smaller --micro-batch fits more runs"
    return requested, f"--parallel {requested} fits: {text}"


def _measure(cfg: TrainConfig, vocab_size: int, device: torch.device) -> tuple[int, int]:
    """Peak bytes of two training steps (optimizer state included) and of one evaluation batch of ``cfg``.

    A random-depth run is measured at its deep end (the 99.9% quantile of its loop count).
    """
    from meshlm.eval.perplexity import token_perplexity
    from meshlm.model import MeshLMForCausalLM
    from meshlm.train.depth import LoopSchedule
    from meshlm.train.loop import build_model_config
    from meshlm.train.optim import build_optimizer

    model_cfg = build_model_config(cfg, vocab_size)
    deepest = LoopSchedule.parse(cfg.train_loops, model_cfg.parsed_layout).quantile(0.999)
    depth = {"num_loops": deepest or None, "backprop_loops": cfg.backprop_loops}
    model = MeshLMForCausalLM(model_cfg).to(device)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    per_step = cfg.batch_tokens // cfg.seq_len
    micro = min(cfg.micro_batch or per_step, per_step)
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, vocab_size, (micro, cfg.seq_len + 1), device=device, generator=gen)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(tokens[:, :-1], targets=tokens[:, 1:], **depth).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    train_peak = torch.cuda.max_memory_allocated(device)
    del optimizer, loss
    torch.cuda.reset_peak_memory_stats(device)
    stream = torch.randint(0, vocab_size, (16 * cfg.seq_len + 1,), generator=torch.Generator().manual_seed(0))
    token_perplexity(model, stream, context=cfg.seq_len, batch_size=16, device=device)
    eval_peak = torch.cuda.max_memory_allocated(device)
    del model
    torch.cuda.empty_cache()
    return train_peak, eval_peak


def fit_parallel(sweep: Sweep, pending: list[tuple[Variant, int]], vocab_size: int) -> int:
    """``sweep.parallel`` lowered to the pending runs and, on CUDA, to what fits in free GPU memory."""
    requested = min(sweep.parallel, len(pending))
    device = resolve_device(sweep.train.device)
    if requested <= 1 or device.type != "cuda":
        return max(1, requested)
    variants = {v.name: v for v, _ in pending}.values()
    peaks = [_measure(sweep.run_config(v, pending[0][1]), vocab_size, device) for v in variants]
    free, _ = torch.cuda.mem_get_info(device)
    n, message = runs_that_fit(
        requested, free, max(p[0] for p in peaks), max(p[1] for p in peaks), compiled=sweep.train.compile
    )
    log(message)
    return n


def _package_root() -> str:
    import meshlm

    return str(Path(meshlm.__file__).resolve().parents[1])


def launch(cfg: TrainConfig) -> tuple[subprocess.Popen, Path]:
    """Start ``meshlm train`` on ``cfg`` (written to the run folder) with its output in ``train.log``."""
    import yaml

    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "train_config.yaml"
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}
    config.write_text(yaml.safe_dump({**values, "progress": False}, sort_keys=False))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    log_path = run_dir / "train.log"
    with open(log_path, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshlm.cli", "train", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc, log_path


def error_line(log_path: Path) -> str:
    """The run's ``error: ...`` line, else the last line it wrote (a traceback's last line)."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    return errors[-1].removeprefix("error: ") if errors else (lines[-1] if lines else "no output")


def _stop(running: dict) -> None:
    """SIGTERM every running run (each saves a checkpoint) and wait for all of them."""
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in running:
        proc.wait()


def train_parallel(
    sweep: Sweep, pending: list[tuple[Variant, int]], n: int, on_done: Callable[[Variant, int], None]
) -> None:
    """Train ``pending`` runs, ``n`` at a time; ``on_done(variant, seed)`` after each that exits cleanly.

    A finished run's slot is refilled before ``on_done`` evaluates it, so the next run compiles and
    trains while this process scores the last one. Scoring a d=256 run at 8 loop counts took 30-60 s
    on an H200, and its slot stood idle for that long (docs/results/depth-31m, second lease).
    """
    queue = list(pending)
    running: dict[subprocess.Popen, tuple[Variant, int, Path]] = {}

    def refill() -> None:
        while queue and len(running) < n:
            variant, seed = queue.pop(0)
            proc, log_path = launch(sweep.run_config(variant, seed))
            log(f"[train] {variant.name} seed {seed} -> {log_path.parent} (pid {proc.pid}, log {log_path.name})")
            running[proc] = (variant, seed, log_path)

    # Ctrl-C or SIGTERM (e.g. `timeout`) stops the runs with checkpoints; GNU timeout signals the sweep
    # twice (itself, then its process group), so the handler ignores every later signal while they stop
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        refill()
        while running:
            time.sleep(POLL_SECONDS)
            finished = [(proc, *running.pop(proc)) for proc in [p for p in running if p.poll() is not None]]
            for proc, variant, seed, log_path in finished:
                if proc.returncode != 0:
                    _stop(running)
                    raise MeshLMError(
                        f"run {variant.name} seed {seed} failed: {error_line(log_path)} (log {log_path}); "
                        "the other runs saved checkpoints, run the same command again to continue them"
                    )
            refill()
            for _, variant, seed, _ in finished:
                on_done(variant, seed)
    except KeyboardInterrupt:
        _stop(running)
        raise MeshLMError("interrupted; the runs saved checkpoints, run the same command again to continue") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt
