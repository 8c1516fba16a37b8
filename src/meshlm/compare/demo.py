"""``meshlm demo``: the embedded default comparison, the real pipeline at a size two CPU cores finish in minutes."""

from __future__ import annotations

import sys
from pathlib import Path

from meshlm.compare.plan import Sweep, Variant, log
from meshlm.compare.report import print_report
from meshlm.compare.run import run_sweep
from meshlm.train.hardware import cpu_threads
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


def _disk_usage(folder: Path) -> str:
    files = [f for f in folder.rglob("*") if f.is_file()]
    return f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {len(files)} files"


def run_demo(args) -> int:
    """Run the embedded demo sweep into ``args.out`` and print its report.

    Training shows a progress bar per variant on a terminal, plain log lines otherwise (a log file, CI).
    """
    out = Path(args.out)
    log(f"meshlm demo writes its runs, report and figures into {out.resolve()}/ (delete it when done)")
    train_cfg = TrainConfig(
        **DEMO, out=str(out), progress=sys.stderr.isatty(), tensorboard=False, cache_dir=args.cache_dir
    )
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
        f"{DEMO['layout']} vs its vanilla twin, d={DEMO['hidden_size']}, {train_cfg.max_steps} steps each, "
        f"CPU with {cpu_threads()} thread(s) (MESHLM_THREADS=N to choose)"
    )
    run_sweep(sweep)
    print_report(out)
    log(f"{out}/ holds {_disk_usage(out)}")
    return 0
