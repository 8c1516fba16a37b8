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
import shutil
import signal
import statistics
import sys
import time
import typing
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
from meshlm.train import resume
from meshlm.train.depth import LoopSchedule
from meshlm.train.distributed import Dist, setup_distributed, wrap_model
from meshlm.train.hardware import cpu_threads, measure_bf16_peak, resolve_device
from meshlm.train.logging import RunLogger, import_wandb, quiet_transformers
from meshlm.train.optim import build_optimizer, lr_at

# a compiled run's last eval is scored again without the compile; more apart than this (nats) is
# warned about. bf16 kernels alone differ by about 1e-3; a compiled d=256 MeSH run on an H200 logged
# val losses up to 0.5 above those of an earlier run of the same seed and batches whose training loss
# it matched within 0.006 (docs/results/scaling-31m, 250M seed 2)
COMPILED_EVAL_TOLERANCE = 0.01

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
    scheme_weight_decay: float | None = None
    scheme_lr_scale: float | None = None
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
    wandb: str | None = None
    wandb_run_name: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise MeshLMError(f"unknown training option(s) {unknown}; known: {sorted(names - {'extra'})}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """MeshLMError naming the first option of the wrong type (e.g. YAML ``seq_len: "32"``) or out of range."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), _accepted_types(hints[f.name])
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join(k.__name__ for k in kinds if k is not type(None))
                raise MeshLMError(f"{_option(f.name)} must be a {names}, got {value!r}")
            rule = _RANGES.get(f.name)
            if rule is not None and value is not None and not rule[0](value):
                raise MeshLMError(f"{_option(f.name)} must be {rule[1]}, got {value!r}")


def _accepted_types(hint) -> tuple[type, ...]:
    """The runtime types a field's hint admits (a float field takes ints too)."""
    kinds = typing.get_args(hint) or (hint,)
    return tuple(dict.fromkeys(k for kind in kinds for k in ((float, int) if kind is float else (kind,))))


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')} ({name})"


# option -> (accepts the value, what it must be); None (unset) is always accepted
_RANGES = {
    **dict.fromkeys(
        (
            "seq_len",
            "batch_tokens",
            "micro_batch",
            "max_steps",
            "max_tokens",
            "stop_after",
            "eval_batches",
            "log_every",
        ),
        (lambda v: v >= 1, "at least 1"),
    ),
    **dict.fromkeys(("eval_every", "save_every"), (lambda v: v >= 0, "0 (only at the end) or more")),
    "keep_checkpoints": (lambda v: v >= 0, "0 (keep every checkpoint) or more"),
    "seed": (lambda v: v >= 0, "a non-negative integer"),
    **dict.fromkeys(("lr", "scheme_lr_scale"), (lambda v: 0 < v < math.inf, "a positive finite number")),
    **dict.fromkeys(
        ("weight_decay", "scheme_weight_decay"), (lambda v: 0 <= v < math.inf, "a non-negative finite number")
    ),
    **dict.fromkeys(("warmup_frac", "final_lr_frac"), (lambda v: 0 <= v <= 1, "between 0 and 1")),
    "grad_clip": (lambda v: v > 0, "positive (inf turns clipping off)"),
}


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


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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


class _Health:
    """Divergence checks and which checkpoint is known to be good.

    A checkpoint holds the weights after its step's update; it is *good* once a later check
    (the next log, eval or save step) has seen a healthy loss computed with them. A failed
    check stops the run: the checkpoints written since the last healthy check are moved aside
    (``suspect-step-N``, kept, never resumed from) and pruning never removes the good one.
    Healthy: finite loss, grad norm and (on save steps) parameters, and a loss window mean of
    at most ``max_loss`` (twice a uniform guess's loss, ln V).
    """

    def __init__(self, root: Path, good: Path | None, max_loss: float, dist: Dist) -> None:
        self.root, self.good, self.max_loss, self.dist = root, good, max_loss, dist
        self.pending: list[Path] = []

    def check(self, loss: float, grad_norm: float, step: int, params=None) -> None:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.fail(f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}")
        if loss > self.max_loss:
            self.fail(f"the loss diverged to {loss:.4g} at step {step} (above 2 ln(vocab) = {self.max_loss:.3g})")
        if self.pending:  # their weights gave this healthy loss
            self.good, self.pending = self.pending[-1], []
        if params is not None and not _all_finite(params, self.dist):
            self.fail(f"the update of step {step} made parameters non-finite")

    def fail(self, what: str) -> None:
        moved = []
        for path in self.pending if self.dist.is_main else []:
            aside = path.with_name(f"suspect-{path.name}")
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            moved.append(aside.name)
        where = f"the last good checkpoint is {self.good}" if self.good else "no good checkpoint was written"
        aside = f" (moved {', '.join(moved)} aside: saved after the last healthy check)" if moved else ""
        raise MeshLMError(f"{what}; stopped, {where}{aside}. Lower --lr or check the data, then --resume.")


def _all_finite(params, dist: Dist) -> bool:
    """Whether every parameter (every rank's local shard) is finite: one host sync."""
    bad = torch.zeros((), dtype=torch.float32, device=next(iter(params := list(params))).device)
    for p in params:
        local = p.to_local() if hasattr(p, "to_local") else p
        bad += (~torch.isfinite(local.detach())).any()
    dist.all_reduce(bad)
    return bad.item() == 0


@torch.no_grad()
def evaluate(
    model,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    dist: Dist,
    device,
    autocast,
    stats: SchemeStatistics,
    forward=None,
) -> float:
    """Mean held-out next-token loss; ranks share the batches and all-reduce the sums.

    ``stats`` (the scheme's :meth:`~meshlm.model.schemes.StateScheme.statistics`) collects the
    scheme's internals from the same forwards, so they cost no extra pass. ``forward`` replaces
    ``model(...)`` as the call that scores a batch (``model.forward`` skips a ``model.compile()``).
    """
    model.eval()
    call = model if forward is None else forward
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for i, (x, y) in enumerate(batches):
        if i % dist.world != dist.rank:
            continue
        record = stats.new_record()
        with autocast():
            logits = call(x.to(device), use_cache=False, record=record).logits
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
    from meshlm.data.sources import is_shard_dir, parse_source
    from meshlm.data.tokenizers import load_tokenizer, tokenizer_from_folder

    if not cfg.data:
        raise MeshLMError("give --data SOURCE")
    parse_source(cfg.data)  # a missing or unusable source is reported before any tokenizer problem
    if cfg.tokenizer is None and not is_shard_dir(cfg.data):
        raise MeshLMError("give --tokenizer (neox, bpe:N, a tokenizer.json or an HF name) for a raw text source")
    if cfg.tokenizer is None:  # a shard folder: its own tokenizer, whatever the folder is called
        tokenizer = tokenizer_from_folder(cfg.data)
    else:
        tokenizer = load_tokenizer(cfg.tokenizer, corpus=cfg.data, cache_dir=cfg.cache_dir)
    return tokenizer, load_tokens(cfg.data, tokenizer, cache_dir=cfg.cache_dir)


def check_token_ids(shards, vocab_size: int, source: str) -> None:
    """MeshLMError if a split holds an id outside the vocabulary (one vectorised pass per split, at start)."""
    for split in shards.splits:
        parts = shards.split(split).parts  # TokenView keeps no empty part
        if parts and (top := max(int(part.max()) for part in parts)) >= vocab_size:
            raise MeshLMError(
                f"{source}: the {split} split holds token id {top}, outside the tokenizer's {vocab_size} ids; "
                "prepare the shards again (meshlm data info --verify checks a folder)"
            )


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as configured; returns the final summary (also in ``out/summary.json``)."""
    from meshlm.data.shards import TokenBatchSampler, eval_batches
    from meshlm.data.sources import is_shard_dir

    if not cfg.data or not cfg.out:
        raise MeshLMError("give --data SOURCE and --out DIR")
    cfg.validate()
    if cfg.wandb:
        import_wandb()  # a missing package fails before any work, on every rank alike
    out = Path(cfg.out)
    dist = setup_distributed(cfg.fsdp)
    device = resolve_device(cfg.device) if dist.world == 1 else dist.device
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    torch.manual_seed(cfg.seed)

    tokenizer, shards = load_run_data(cfg)
    if is_shard_dir(cfg.data):  # shards meshlm tokenized into its cache hold the tokenizer's ids by construction
        check_token_ids(shards, tokenizer.vocab_size, cfg.data)
    model_cfg = build_model_config(cfg, tokenizer.vocab_size)
    global_seqs, micro, accum = _batch_shape(cfg, dist.world)
    max_steps = max_steps_of(cfg)
    sampler = TokenBatchSampler(
        shards.split("train"), cfg.seq_len, global_seqs, dist.world, dist.rank, cfg.seed, micro_batch=micro
    )
    val_tokens = shards.split("val")
    val = list(eval_batches(val_tokens, cfg.seq_len, micro, cfg.eval_batches)) if len(val_tokens) > cfg.seq_len else []

    current = resume.settings(sampler, max_steps)
    if cfg.resume and (finished := resume.finished_summary(out, current)) is not None:
        if dist.is_main:
            _note(f"the run in {out} is complete ({max_steps} steps); nothing to do")
        dist.close()
        return finished
    resume.check_out_folder(out, cfg.data, cfg.resume, current)
    checkpoints = out / "checkpoints"
    note = _note if dist.is_main else lambda text: None
    if dist.is_main:
        for leftover in ckpt.remove_temp_folders(checkpoints) + ckpt.remove_temp_folders(out):
            note(f"removed {leftover}, left by a save that was killed")
    start_step, tokens_seen, window = 0, 0, {"loss_sum": 0.0, "since": 0}
    schedule = LoopSchedule.parse(cfg.train_loops, model_cfg.parsed_layout)
    if cfg.backprop_loops is not None and cfg.backprop_loops < 1:
        raise MeshLMError(f"--backprop-loops must be >= 1, got {cfg.backprop_loops}")
    model = MeshLMForCausalLM(model_cfg)
    opt_state = rng = None
    resumed_from = ckpt.newest_intact(checkpoints, note) if cfg.resume else None
    if resumed_from is not None:
        state, opt_state, rng = ckpt.load_training_state(resumed_from, device)
        resume.check_model(MeshLMConfig.from_pretrained(resumed_from), model_cfg, resumed_from)
        resume.check_settings(state["run"]["settings"], current, resumed_from)
        resume.check_parameter_groups(state["run"]["train"], cfg, resumed_from)
        if changed := resume.changed_update_options(state["run"]["train"], cfg):
            note(f"note: resuming with {', '.join(changed)}; the run no longer matches an uninterrupted one")
        with quiet_transformers():
            model = MeshLMForCausalLM.from_pretrained(resumed_from)
        start_step, tokens_seen, window = state["step"], state["tokens_seen"], state["window"]
    model.to(device)
    model.set_activation_checkpointing(cfg.activation_checkpointing)
    # a step of fewer loops than K leaves later steps' routers/gates unused (and truncation the prelude of base)
    varying = schedule.is_random or cfg.backprop_loops is not None
    wrapped = wrap_model(model, dist, compile=cfg.compile, find_unused_parameters=varying)
    optimizer = build_optimizer(
        wrapped,
        cfg.lr,
        cfg.weight_decay,
        scheme_weight_decay=cfg.scheme_weight_decay,
        scheme_lr_scale=cfg.scheme_lr_scale,
    )
    if opt_state is not None:
        asked = [{k: g[k] for k in ("weight_decay", "lr_scale") if k in g} for g in optimizer.param_groups]
        dist.load_optimizer_state(wrapped, optimizer, opt_state)
        for group, values in zip(optimizer.param_groups, asked, strict=True):  # saved groups carry the old values
            group.update(values)
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
        "cpu_threads": torch.get_num_threads(),
        "peak_flops": peak,
        "epochs": max_steps / max(1, sampler.steps_per_epoch),
        "settings": current,
    }
    logger = RunLogger(out, dist.is_main, cfg, max_steps, window["since"], run_info, purge_after=start_step)
    health = _Health(checkpoints, resumed_from, 2 * math.log(model_cfg.vocab_size), dist)
    if cfg.compile:
        logger.message("torch.compile: compiling the model in the first step (a minute or more, longer on CPU)")

    def save(step: int) -> None:
        state = {"step": step, "tokens_seen": tokens_seen, "loss": last_loss, "window": window, "run": run_info}
        model_state, opt_full = dist.full_state(wrapped, optimizer)
        if dist.is_main:
            with quiet_transformers():
                path = ckpt.save_checkpoint(
                    checkpoints, step, model, tokenizer, opt_full, state, cfg.keep_checkpoints, model_state, health.good
                )
            health.pending.append(path)
        dist.barrier()

    wrapped.train()
    tokens_per_step = global_seqs * cfg.seq_len
    loss_sum = torch.tensor(window["loss_sum"], device=device)
    last_loss = None
    t_last, tokens_last = time.perf_counter(), tokens_seen
    done = start_step
    with _StopSignal() as stop:
        for step in range(start_step, max_steps):
            lr = lr_at(step, max_steps, cfg.lr, cfg.warmup_frac, cfg.final_lr_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batches = sampler.batches_for_step(step)
            loops = schedule.loops_at(cfg.seed, step)
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
            try:
                optimizer.step()
            except RuntimeError as err:  # an update too large for float32 (e.g. --lr 1e39)
                if "overflow" not in str(err):
                    raise
                health.fail(f"the update of step {step + 1} overflows float32 ({err})")
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += tokens_per_step
            done = step + 1
            is_last = done == max_steps
            log_now = done % cfg.log_every == 0 or is_last
            eval_now = bool(val) and ((cfg.eval_every and done % cfg.eval_every == 0) or is_last)
            pause = cfg.stop_after is not None and done == cfg.stop_after and not is_last
            # read the flag once: a signal that lands during this step's eval stops after the next step's save
            stopping = stop.hit is not None
            save_now = (cfg.save_every and done % cfg.save_every == 0) or is_last or pause or stopping
            if log_now or eval_now or save_now:
                window_sum = loss_sum.clone()
                dist.all_reduce(window_sum, average=True)
                window = {"loss_sum": window_sum.item(), "since": logger.last_logged_step}
                last_loss = window["loss_sum"] / (done - logger.last_logged_step)
                norm = grad_norm.item()
                health.check(last_loss, norm, done, params=wrapped.parameters() if save_now else None)
            if log_now or eval_now:
                window_start = logger.last_logged_step
                loss_sum.zero_()
                window = {"loss_sum": 0.0, "since": done}
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
                    "time": time.time(),  # wall clock, so runs side by side can be put on one time axis
                    "epoch": sampler.epoch_of(step),
                    # a pure function of (seed, step), so the window's mean needs no state across a resume
                    "loops": statistics.fmean(schedule.loops_at(cfg.seed, s) for s in range(window_start, done)),
                }
                if device.type == "cuda":  # what a run of this shape needs (compare --parallel, bench/)
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                if eval_now:
                    stats = model.model.scheme.statistics()
                    record["val_loss"] = evaluate(wrapped, val, dist, device, autocast, stats)
                    record["val_ppl"] = math.exp(min(record["val_loss"], 50))
                    record.update(stats.result())
                    if is_last and cfg.compile and not cfg.fsdp:
                        record["val_loss_eager"] = evaluate(
                            wrapped, val, dist, device, autocast, SchemeStatistics(), model.forward
                        )
                        if abs(record["val_loss_eager"] - record["val_loss"]) > COMPILED_EVAL_TOLERANCE:
                            logger.message(
                                f"warning: the compiled model's val loss {record['val_loss']:.4f} differs from the "
                                f"uncompiled forward's {record['val_loss_eager']:.4f} on the same batches and weights; "
                                "trust the uncompiled one (meshlm eval scores the saved model without compiling)"
                            )
                logger.log(record)
                t_last, tokens_last = time.perf_counter(), tokens_seen
            if save_now:
                save(done)
            if stopping or pause:
                why = f"signal {stop.hit}" if stopping else "--stop-after"
                logger.message(f"stopped by {why} after step {done}; checkpoint saved, continue with --resume")
                break
    summary = {**logger.finish(done, tokens_seen, resumed_from), "interrupted_by_signal": stop.hit}
    if done == max_steps:
        final_state, _ = dist.full_state(wrapped, None)
        if dist.is_main:
            with quiet_transformers():
                ckpt.save_atomically(out / "model", model, tokenizer, {**summary, "run": run_info}, final_state)
    logger.write_summary(summary)
    dist.barrier()
    dist.close()
    return summary
