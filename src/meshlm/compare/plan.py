"""What a sweep is (variants x seeds on shared training options) and its plan: matched compute, one epoch.

Compute is matched on the *expected* training FLOPs per token of the backbone (layers and head,
:func:`meshlm.accounting.expected_flops_per_token` over each run's ``--train-loops`` distribution, the
no-grad iterations of ``--backprop-loops`` at their forward cost): they must be equal across variants,
so a random-depth run is compared only with runs of the same expected depth and truncation. What a
scheme adds on top (MeSH routers, gates, the linear adapter: about 3% at 2+4R2+2) is not held equal,
as in the paper, but reported: the plan's ``flops_per_token`` includes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from meshlm.accounting import count, expected_flops_per_token
from meshlm.config import canonical_scheme, parse_layout
from meshlm.data.shards import TokenBatchSampler
from meshlm.errors import MeshLMError
from meshlm.train.depth import LoopSchedule
from meshlm.train.loop import TrainConfig, build_model_config, load_run_data, max_steps_of


@dataclass
class Variant:
    """One model of the comparison: ``vanilla`` (the twin layout) or a scheme on the recursive layout."""

    name: str
    scheme: str = "base"
    vanilla: bool = False
    overrides: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | dict) -> Variant:
        """``"mesh"`` / ``"vanilla"`` / ``"anchor*"``, or a dict ``{name, scheme, **model overrides}`` from YAML."""
        if isinstance(spec, str):
            name = spec.strip()
            if name == "vanilla":
                return cls(name, vanilla=True)
            return cls(name, scheme=canonical_scheme(name))
        values = dict(spec)
        name = str(values.pop("name", values.get("scheme", "")))
        if not name:
            raise MeshLMError(f"a variant needs a name or a scheme: {spec}")
        if name == "vanilla" or values.pop("vanilla", False):
            return cls(name, vanilla=True, overrides=values)
        scheme = canonical_scheme(values.pop("scheme", name))
        return cls(name, scheme=scheme, overrides=values)

    @property
    def slug(self) -> str:
        return self.name.replace("*", "star").replace("+", "-").replace("/", "-")


@dataclass
class Sweep:
    """A comparison: the shared training options plus variants, seeds, eval sets and probing."""

    train: TrainConfig
    variants: list[Variant]
    seeds: list[int]
    out: Path
    evals: dict[str, str] = field(default_factory=dict)
    eval_tokens: int = 262_144
    probe_samples: int = 16
    allow_repeat: bool = False
    parallel: int = 1
    eval_loops: list[int] = field(default_factory=list)
    # the variants every other one is paired against in the report, those the sweep has
    references: tuple[str, ...] = ("anchor", "vanilla")

    def layouts(self) -> tuple[str, str]:
        """(recursive layout, its vanilla twin of equal unrolled depth)."""
        layout = parse_layout(self.train.layout or "2+4R2+2")
        if layout.is_vanilla:
            raise MeshLMError(f"--layout {layout} is vanilla; give the recursive layout (e.g. 2+4R2+2)")
        return str(layout), str(layout.unrolled_layers)

    def run_config(self, variant: Variant, seed: int) -> TrainConfig:
        recursive, twin = self.layouts()
        overrides = dict(variant.overrides)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise MeshLMError(f"variant {variant.name!r} sets unknown option(s) {sorted(unknown)}")
        return dataclasses.replace(
            self.train,
            out=str(self.run_dir(variant, seed)),
            seed=seed,
            layout=twin if variant.vanilla else recursive,
            scheme="base" if variant.vanilla else variant.scheme,
            resume=True,
            **overrides,
        )

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.out / "runs" / f"{variant.slug}-seed{seed}"


def log(text: str) -> None:
    """One progress line on stderr (stdout is kept for the report)."""
    print(text, file=sys.stderr, flush=True)


def plan(sweep: Sweep, data: tuple | None = None) -> dict:
    """Variants' parameters and FLOPs, the shared data order, and the epoch check; refuses unfair budgets.

    ``data`` is the ``(tokenizer, shards)`` pair of the sweep when the caller already has it.
    """
    tokenizer, shards = data or load_run_data(sweep.train)
    cfg = sweep.train
    steps = max_steps_of(cfg)
    global_seqs = cfg.batch_tokens // cfg.seq_len
    sampler = TokenBatchSampler(shards.split("train"), cfg.seq_len, global_seqs)  # the runs' own epoch arithmetic
    windows = sampler.num_windows
    epochs = steps / sampler.steps_per_epoch
    if epochs > 1 and not sweep.allow_repeat:
        raise MeshLMError(
            f"the budget of {steps} steps x {cfg.batch_tokens} tokens is {epochs:.2f} epochs of the "
            f"{windows * (cfg.seq_len + 1):,} training tokens; a fair comparison stays within one epoch. "
            "Lower --max-tokens, add data, or pass --allow-repeat"
        )
    rows = {}
    for variant in sweep.variants:
        run_cfg = sweep.run_config(variant, sweep.seeds[0])
        model_cfg = build_model_config(run_cfg, tokenizer.vocab_size)
        layout = model_cfg.parsed_layout
        schedule = LoopSchedule.parse(run_cfg.train_loops, layout)
        c = count(model_cfg, cfg.seq_len)
        loops = schedule.distribution()
        flops = expected_flops_per_token(model_cfg, cfg.seq_len, loops, run_cfg.backprop_loops)
        backbone = expected_flops_per_token(model_cfg, cfg.seq_len, loops, run_cfg.backprop_loops, scheme_work=False)
        rows[variant.name] = {
            "layout": model_cfg.layout,
            "scheme": model_cfg.scheme,
            "non_embedding": c.non_embedding,
            "total": c.total,
            "flops_per_token": flops,
            "backbone_flops_per_token": backbone,
            "total_flops": flops * steps * cfg.batch_tokens,
            "unrolled_layers": layout.prelude + layout.core * schedule.mean + layout.coda,
            "train_loops": str(schedule),
            "backprop_loops": run_cfg.backprop_loops,
        }
    backbone = {name: r["backbone_flops_per_token"] for name, r in rows.items()}
    if max(backbone.values()) - min(backbone.values()) > 1e-9 * max(backbone.values()):
        listed = ", ".join(f"{name} {value:.4e}" for name, value in backbone.items())
        raise MeshLMError(
            f"variants differ in expected backbone training FLOPs per token ({listed}): compute is not matched; "
            "give them layouts, --train-loops and --backprop-loops of the same expected depth and cost"
        )
    order = hashlib.sha256(
        json.dumps([cfg.seq_len, global_seqs, windows, sweep.seeds, shards.tokenizer_fingerprint]).encode()
    ).hexdigest()[:16]
    return {
        "variants": rows,
        "steps": steps,
        "epochs": epochs,
        "train_tokens": windows * (cfg.seq_len + 1),
        "tokenizer": tokenizer.name,
        "data_order": order,
    }
