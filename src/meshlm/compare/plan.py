"""What a sweep is (variants x seeds on shared training options) and its plan: matched compute, one epoch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from meshlm.accounting import count
from meshlm.config import canonical_scheme, parse_layout
from meshlm.data.shards import TokenBatchSampler
from meshlm.errors import MeshLMError
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

    def layouts(self) -> tuple[str, str]:
        """(recursive layout, its vanilla twin of equal unrolled depth)."""
        layout = parse_layout(self.train.layout or "2+4R2+2")
        if layout.is_vanilla:
            raise MeshLMError(f"--layout {layout} is vanilla; give the recursive layout (e.g. 2+4R2+2)")
        return str(layout), str(layout.unrolled_layers)

    def run_config(self, variant: Variant, seed: int) -> TrainConfig:
        recursive, twin = self.layouts()
        overrides = {k: v for k, v in variant.overrides.items()}
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
        model_cfg = build_model_config(sweep.run_config(variant, sweep.seeds[0]), tokenizer.vocab_size)
        c = count(model_cfg, cfg.seq_len)
        rows[variant.name] = {
            "layout": model_cfg.layout,
            "scheme": model_cfg.scheme,
            "non_embedding": c.non_embedding,
            "total": c.total,
            "flops_per_token": c.flops_per_token,
            "total_flops": c.flops_per_token * steps * cfg.batch_tokens,
            "unrolled_layers": c.unrolled_layers,
        }
    depths = {r["unrolled_layers"] for r in rows.values()}
    if len(depths) != 1:
        raise MeshLMError(f"variants differ in unrolled depth {sorted(depths)}: compute is not matched")
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
