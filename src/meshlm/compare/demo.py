"""``meshlm demo``: the embedded default comparison, the real pipeline at a size two CPU cores finish in minutes."""

from __future__ import annotations

from pathlib import Path

from meshlm.compare.plan import Sweep, Variant, log
from meshlm.compare.report import print_report
from meshlm.compare.run import run_sweep
from meshlm.train.loop import TrainConfig

DEMO = dict(
    data="builtin:wiki",
    tokenizer="bpe:2048",
    preset="pythia-14m",
    hidden_size=64,
    num_attention_heads=4,
    layout="1+2R2+1",
    seq_len=128,
    batch_tokens=4096,
    max_steps=100,
    lr=3e-3,
    eval_every=50,
    eval_batches=8,
    log_every=10,
    device="cpu",
)
DEMO_VARIANTS = ("vanilla", "base", "anchor", "mesh")


def run_demo(args) -> int:
    """Run the embedded demo sweep into ``args.out`` and print its report."""
    out = Path(args.out)
    train_cfg = TrainConfig(**DEMO, out=str(out), progress=False, tensorboard=False, cache_dir=args.cache_dir)
    if args.max_steps:
        train_cfg.max_steps = args.max_steps
    sweep = Sweep(
        train=train_cfg,
        variants=[Variant.parse(v) for v in DEMO_VARIANTS],
        seeds=[0],
        out=out,
        eval_tokens=65_536,
        probe_samples=8,
    )
    log(
        f"meshlm demo: {', '.join(DEMO_VARIANTS)} on {DEMO['data']} ({DEMO['tokenizer']}), layout "
        f"{DEMO['layout']} vs its vanilla twin, d={DEMO['hidden_size']}, {train_cfg.max_steps} steps each, CPU"
    )
    run_sweep(sweep)
    print_report(out)
    return 0
