"""The matched-compute comparison (the paper's experiment) and the embedded demo.

``run_sweep`` trains every variant x seed through :func:`meshlm.train.loop.train` on the same
token stream (same data, tokenizer, sequence length, global batch and seed, so the sampler hands
every variant identical batches in identical order), evaluates held-out loss on each eval set,
probes one model per variant, and writes ``report.md``, ``report.json``, ``loss_curves.png`` and the
probe figures side by side. The vanilla twin of a recursive layout has the same unrolled depth,
so the same FLOPs per token; runs of random depth (``--train-loops``) are matched on their expected
backbone FLOPs (:mod:`meshlm.compare.plan`), and ``eval_loops`` evaluates every shared-core run at
several loop counts. Finished runs are skipped and interrupted ones resumed, so an
interrupted sweep continues where it stopped; ``report_only`` trains nothing and reports the runs
that finished, each variant over the seeds it has. A budget that would repeat training data is
refused unless ``allow_repeat`` is set (a fair comparison stays within one epoch).

Modules by idea: ``plan`` (what a sweep is, matched compute), ``run`` (train, evaluate, probe),
``report`` (numbers over seeds, report.md, figures), ``demo`` (``meshlm demo``), ``cli`` (flags).
"""

from meshlm.compare.cli import add_subcommand, sweep_from_args
from meshlm.compare.demo import DEMO, DEMO_VARIANTS
from meshlm.compare.plan import Sweep, Variant, plan
from meshlm.compare.report import report_markdown, summarize
from meshlm.compare.run import evaluate_run, run_sweep

__all__ = [
    "DEMO",
    "DEMO_VARIANTS",
    "Sweep",
    "Variant",
    "add_subcommand",
    "evaluate_run",
    "plan",
    "report_markdown",
    "run_sweep",
    "summarize",
    "sweep_from_args",
]
