"""The training loop: one process or many (DDP / FSDP2 under torchrun), CPU for tests.

What a run does, in order: read the token shards (tokenizing a raw source once, cached),
build the model from preset + overrides, restore the newest checkpoint on ``resume``, then for
every optimizer step take the step's global batch (a pure function of the step number, so a
resumed run sees exactly the data an uninterrupted one would), accumulate gradients over
micro-batches, clip, step AdamW on the cosine schedule, and log / evaluate / checkpoint on
their intervals. The loop never synchronises with the host except on logging, evaluation and
checkpoint steps; a non-finite loss or gradient norm is detected there and stops the run
without overwriting the last good checkpoint. SIGINT/SIGTERM save a checkpoint and exit.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from meshlm.accounting import count, expected_flops_per_token
from meshlm.config import MeshLMConfig
from meshlm.errors import MeshLMError
from meshlm.model import MeshLMForCausalLM
from meshlm.model.schemes import SchemeStatistics
from meshlm.train import checkpoint as ckpt
from meshlm.train.depth import LoopSchedule
from meshlm.train.distributed import Dist, setup_distributed, wrap_model
from meshlm.train.hardware import measure_bf16_peak
from meshlm.train.logging import RunLogger
from meshlm.train.optim import build_optimizer, lr_at

# model fields a run may override on top of the preset; all are MeshLMConfig fields
MODEL_FIELDS = (
    "layout",
    "scheme",
    "buffer_size",
    "router_init",
    "router_init_bias",
    "mesh_transition_input",
    "linear_init",
    "diagonal_decay_init",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "scale_embeddings",
    "rotary_pct",
    "initializer_range",
)


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags and ``--config`` YAML keys are these names."""

    data: str = ""
    out: str = ""
    tokenizer: str | None = None
    preset: str = "pythia-14m"
    layout: str | None = None
    scheme: str | None = None
    buffer_size: int | None = None
    router_init: str | None = None
    router_init_bias: float | None = None
    mesh_transition_input: str | None = None
    linear_init: str | None = None
    diagonal_decay_init: float | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int | None = None
    scale_embeddings: bool | None = None
    rotary_pct: float | None = None
    initializer_range: float | None = None
    train_loops: str = "fixed"
    backprop_loops: int | None = None
    seq_len: int = 256
    batch_tokens: int = 8192
    micro_batch: int | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    stop_after: int | None = None
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.01
    final_lr_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False
    compile: bool = False
    activation_checkpointing: str = "none"
    fsdp: bool = False
    device: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise MeshLMError(f"unknown training option(s) {unknown}; known: {sorted(names - {'extra'})}")
        return cls(**values)


ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "layout",
    "scheme",
    "buffer_size",
    "mesh_transition_input",
    "rotary_pct",
    "use_parallel_residual",
    "scale_embeddings",
)


def _architecture(config: MeshLMConfig) -> dict:
    """The config fields that decide the weights' shapes and meaning (what a resume must match)."""
    return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}


def _pad_vocab(n: int, multiple: int = 128) -> int:
    return multiple * math.ceil(n / multiple)


def build_model_config(cfg: TrainConfig, vocab_size: int) -> MeshLMConfig:
    """The model config of a run: preset, overridden by the run's model fields, vocab padded to 128."""
    overrides = {name: getattr(cfg, name) for name in MODEL_FIELDS}
    model_cfg = MeshLMConfig.from_preset(cfg.preset, vocab_size=_pad_vocab(vocab_size), **overrides)
    if cfg.seq_len > model_cfg.max_position_embeddings:
        raise MeshLMError(
            f"--seq-len {cfg.seq_len} exceeds max_position_embeddings {model_cfg.max_position_embeddings}; "
            "lower --seq-len or raise --max-position-embeddings"
        )
    return model_cfg


def _resolve_device(name: str | None) -> torch.device:
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MeshLMError(f"--device {name} asked for CUDA but no GPU is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _batch_shape(cfg: TrainConfig, world: int) -> tuple[int, int, int]:
    """(global batch in sequences, micro-batch size, accumulation steps) with clear errors."""
    if cfg.batch_tokens % cfg.seq_len:
        raise MeshLMError(f"--batch-tokens {cfg.batch_tokens} is not a multiple of --seq-len {cfg.seq_len}")
    global_seqs = cfg.batch_tokens // cfg.seq_len
    if global_seqs % world:
        raise MeshLMError(f"a global batch of {global_seqs} sequences does not split over {world} ranks")
    per_rank = global_seqs // world
    micro = min(cfg.micro_batch or per_rank, per_rank)
    if per_rank % micro:
        raise MeshLMError(f"--micro-batch {micro} does not divide the {per_rank} sequences per rank and step")
    return global_seqs, micro, per_rank // micro


def max_steps_of(cfg: TrainConfig) -> int:
    """Optimizer steps of a run: ``max_steps``, else ``max_tokens`` // global batch tokens."""
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.max_tokens:
        steps = cfg.max_tokens // cfg.batch_tokens
        if steps < 1:
            raise MeshLMError(f"--max-tokens {cfg.max_tokens} is less than one batch of {cfg.batch_tokens} tokens")
        return steps
    raise MeshLMError("give --max-steps or --max-tokens")


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.hit: int | None = None
        self._old = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.hit = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(
    model, batches: list[tuple[torch.Tensor, torch.Tensor]], dist: Dist, device, autocast, stats: SchemeStatistics
) -> float:
    """Mean held-out next-token loss; ranks share the batches and all-reduce the sums.

    ``stats`` (the scheme's :meth:`~meshlm.model.schemes.StateScheme.statistics`) collects the
    scheme's internals from the same forwards, so they cost no extra pass.
    """
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for i, (x, y) in enumerate(batches):
        if i % dist.world != dist.rank:
            continue
        record = stats.new_record()
        with autocast():
            logits = model(x.to(device), use_cache=False, record=record).logits
        stats.update(record)
        total[0] += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum")
        total[1] += y.numel()
    dist.all_reduce(total)
    stats.all_reduce(dist.all_reduce)
    model.train()
    return (total[0] / total[1]).item()


def load_run_data(cfg: TrainConfig):
    """The run's ``(tokenizer, token shards)``: a raw source is tokenized once and cached."""
    from meshlm.data.shards import load_tokens
    from meshlm.data.sources import is_shard_dir
    from meshlm.data.tokenizers import load_tokenizer

    if not cfg.data:
        raise MeshLMError("give --data SOURCE")
    if cfg.tokenizer is None and not is_shard_dir(cfg.data):
        raise MeshLMError("give --tokenizer (neox, bpe:N, a tokenizer.json or an HF name) for a raw text source")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.data, corpus=cfg.data, cache_dir=cfg.cache_dir)
    return tokenizer, load_tokens(cfg.data, tokenizer, cache_dir=cfg.cache_dir)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as configured; returns the final summary (also in ``out/summary.json``)."""
    from meshlm.data.shards import TokenBatchSampler, eval_batches

    if not cfg.data or not cfg.out:
        raise MeshLMError("give --data SOURCE and --out DIR")
    out = Path(cfg.out)
    dist = setup_distributed(cfg.fsdp)
    device = _resolve_device(cfg.device) if dist.world == 1 else dist.device
    torch.manual_seed(cfg.seed)

    tokenizer, shards = load_run_data(cfg)
    model_cfg = build_model_config(cfg, tokenizer.vocab_size)
    global_seqs, micro, accum = _batch_shape(cfg, dist.world)
    max_steps = max_steps_of(cfg)
    sampler = TokenBatchSampler(
        shards.split("train"), cfg.seq_len, global_seqs, dist.world, dist.rank, cfg.seed, micro_batch=micro
    )
    val_tokens = shards.split("val")
    val = list(eval_batches(val_tokens, cfg.seq_len, micro, cfg.eval_batches)) if len(val_tokens) > cfg.seq_len else []

    checkpoints = out / "checkpoints"
    start_step, tokens_seen, resumed_from = 0, 0, None
    existing = ckpt.list_checkpoints(checkpoints)
    if existing and not cfg.resume:
        raise MeshLMError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
    schedule = LoopSchedule.parse(cfg.train_loops, model_cfg.parsed_layout)
    if cfg.backprop_loops is not None and cfg.backprop_loops < 1:
        raise MeshLMError(f"--backprop-loops must be >= 1, got {cfg.backprop_loops}")
    model = MeshLMForCausalLM(model_cfg)
    opt_state = rng = None
    if cfg.resume and existing:
        resumed_from = existing[-1]
        state, opt_state, rng = ckpt.load_training_state(resumed_from, device)
        saved = MeshLMConfig.from_pretrained(resumed_from)
        if _architecture(saved) != _architecture(model_cfg):
            raise MeshLMError(
                f"cannot resume {resumed_from}: it holds a different model ({saved.layout}/{saved.scheme}, "
                f"d={saved.hidden_size}) than this run asks for ({model_cfg.layout}/{model_cfg.scheme}, "
                f"d={model_cfg.hidden_size})"
            )
        model = MeshLMForCausalLM.from_pretrained(resumed_from)
        start_step, tokens_seen = state["step"], state["tokens_seen"]
    model.to(device)
    model.set_activation_checkpointing(cfg.activation_checkpointing)
    # a step of fewer loops than K leaves later steps' routers/gates unused (and truncation the prelude of base)
    varying = schedule.is_random or cfg.backprop_loops is not None
    wrapped = wrap_model(model, dist, compile=cfg.compile, find_unused_parameters=varying)
    optimizer = build_optimizer(wrapped, cfg.lr, cfg.weight_decay)
    if opt_state is not None:
        dist.load_optimizer_state(wrapped, optimizer, opt_state)
        ckpt.set_rng_state(rng)

    counts = count(model_cfg, cfg.seq_len)
    # MFU and the run's FLOPs use the expected cost of a step under random depth / truncated backprop
    flops_per_token = expected_flops_per_token(model_cfg, cfg.seq_len, schedule.distribution(), cfg.backprop_loops)
    peak = measure_bf16_peak(device) if dist.is_main else 0.0
    use_bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    run_info = {
        "model": model_cfg.to_diff_dict(),
        "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"},
        "params": counts.as_dict(),
        "depth": {
            "train_loops": str(schedule),
            "expected_loops": schedule.mean,
            "backprop_loops": cfg.backprop_loops,
            "expected_flops_per_token": flops_per_token,
        },
        "tokenizer": tokenizer.name,
        "data": {"train_tokens": len(sampler.tokens), "val_tokens": len(val_tokens)},
        "world_size": dist.world,
        "global_batch_seqs": global_seqs,
        "micro_batch": micro,
        "grad_accum": accum,
        "max_steps": max_steps,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_flops": peak,
        "epochs": max_steps / max(1, sampler.steps_per_epoch),
    }
    logger = RunLogger(out, dist.is_main, cfg, max_steps, start_step, run_info)

    def save(step: int, loss_value: float | None) -> None:
        state = {"step": step, "tokens_seen": tokens_seen, "loss": loss_value, "run": run_info}
        model_state, opt_full = dist.full_state(wrapped, optimizer)
        if dist.is_main:
            ckpt.save_checkpoint(
                checkpoints, step, model, tokenizer, opt_full, state, cfg.keep_checkpoints, model_state
            )
        dist.barrier()

    def check_finite(loss_value: float, grad_norm: float, step: int) -> None:
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            last = ckpt.list_checkpoints(checkpoints)
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            raise MeshLMError(
                f"non-finite loss ({loss_value}) or gradient norm ({grad_norm}) at step {step}; stopped, {where}. "
                "Lower --lr or check the data."
            )

    wrapped.train()
    tokens_per_step = global_seqs * cfg.seq_len
    loss_sum = torch.zeros((), device=device)
    loops_sum = 0
    last_loss = None
    t_last, tokens_last = time.perf_counter(), tokens_seen
    done = start_step
    with _StopSignal() as stop:
        for step in range(start_step, max_steps):
            lr = lr_at(step, max_steps, cfg.lr, cfg.warmup_frac, cfg.final_lr_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = sampler.batches_for_step(step)
            loops = schedule.loops_at(cfg.seed, step)
            loops_sum += loops
            depth = {"num_loops": loops or None, "backprop_loops": cfg.backprop_loops}
            for i, (x, y) in enumerate(batches):
                sync = dist.no_sync(wrapped) if i < len(batches) - 1 else nullcontext()
                with sync:  # around backward too: FSDP2 reads the no-sync flag there (DDP in forward)
                    with autocast():
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                        loss = wrapped(x, targets=y, **depth).loss
                    (loss / accum).backward()
                loss_sum += loss.detach() / accum
            grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += tokens_per_step
            done = step + 1
            is_last = done == max_steps
            log_now = done % cfg.log_every == 0 or is_last or stop.hit is not None or done == cfg.stop_after
            eval_now = bool(val) and ((cfg.eval_every and done % cfg.eval_every == 0) or is_last)
            pause = cfg.stop_after is not None and done == cfg.stop_after and not is_last
            save_now = (cfg.save_every and done % cfg.save_every == 0) or is_last or pause or stop.hit is not None
            if log_now or eval_now or save_now:
                dist.all_reduce(loss_sum, average=True)
                steps_in_window = done - logger.last_logged_step
                last_loss = loss_sum.item() / steps_in_window
                norm = grad_norm.item()
                check_finite(last_loss, norm, done)
                loss_sum.zero_()
                elapsed = time.perf_counter() - t_last
                tok_s = (tokens_seen - tokens_last) / max(elapsed, 1e-9)
                mfu = tok_s * flops_per_token / peak if peak else None
                record = {
                    "step": done,
                    "loss": last_loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "tokens": tokens_seen,
                    "tokens_per_s": tok_s,
                    "mfu": mfu,
                    "epoch": sampler.epoch_of(step),
                    "loops": loops_sum / steps_in_window,
                }
                loops_sum = 0
                if device.type == "cuda":  # what a run of this shape needs (compare --parallel, bench/)
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                if eval_now:
                    stats = model.model.scheme.statistics()
                    record["val_loss"] = evaluate(wrapped, val, dist, device, autocast, stats)
                    record["val_ppl"] = math.exp(min(record["val_loss"], 50))
                    record.update(stats.result())
                logger.log(record)
                t_last, tokens_last = time.perf_counter(), tokens_seen
            if save_now:
                save(done, last_loss)
            if stop.hit is not None or pause:
                why = f"signal {stop.hit}" if stop.hit is not None else "--stop-after"
                logger.message(f"stopped by {why} after step {done}; checkpoint saved, continue with --resume")
                break
    summary = logger.finish(tokens_seen, resumed_from)
    if done == max_steps:
        final_state, _ = dist.full_state(wrapped, None)
        if dist.is_main:
            ckpt.save_model_dir(out / "model", model, tokenizer, {**summary, "run": run_info}, final_state)
    dist.barrier()
    dist.close()
    return summary
