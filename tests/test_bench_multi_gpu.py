"""bench/multi_gpu.py on CPU (gloo): its arguments, the scaling arithmetic, and a tiny two-rank run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "multi_gpu.py"
spec = importlib.util.spec_from_file_location("multi_gpu", SCRIPT)
multi_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(multi_gpu)

TINY = [
    "--device", "cpu", "--preset", "pythia-14m", "--variants", "1+2R2+1:mesh", "--seq-len", "16",
    "--micro-batch", "2", "--accum", "2", "--steps", "1", "--warmup", "1", "--no-compile",
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "ddp,zero3"], "--strategy"),
        (["--checkpointing", "mlp"], "--checkpointing"),
        (["--variants", "4+8R2+4"], "LAYOUT:SCHEME"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--accum", "0"], "--accum must be at least 1"),
    ],
)
def test_bad_arguments_give_one_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        multi_gpu.parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and message in error


def row(gpus, strategy, tok_s, checkpointing="none", model="m"):
    return dict(
        model=model, gpus=gpus, strategy=strategy, checkpointing=checkpointing, micro_batch=4, accum=1,
        seq_len=4096, tokens_per_s_per_gpu=tok_s, mfu=None, peak_mem_gib=None, activation_gib=None, final_loss=1.0,
    )  # fmt: skip


def test_efficiency_is_per_gpu_throughput_over_the_matching_one_gpu_row():
    rows = [row(1, "single", 100.0), row(4, "ddp", 90.0), row(4, "fsdp", 80.0, "full"), row(8, "ddp", 50.0, model="x")]
    eff = {(r["gpus"], r["strategy"]): r["efficiency"] for r in multi_gpu.with_efficiency(rows)}
    assert eff == {(1, "single"): 1.0, (4, "ddp"): 0.9, (4, "fsdp"): None, (8, "ddp"): None}
    assert "| 90.0% |" in multi_gpu.table(rows) and "| n/a |" in multi_gpu.table(rows)


def test_tiny_gloo_run_rows_and_merged_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run = dict(env=env, capture_output=True, text=True, timeout=300)
    done = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--checkpointing", "none", "--json", str(one)], **run)
    assert done.returncode == 0, done.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(SCRIPT)]
    done = subprocess.run([*torchrun, *TINY, "--checkpointing", "none,full", "--json", str(two)], **run)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(one.read_text())["rows"] + json.loads(two.read_text())["rows"]
    assert [(r["gpus"], r["strategy"], r["checkpointing"]) for r in rows] == [
        (1, "single", "none"),
        (2, "ddp", "none"),
        (2, "fsdp", "none"),
        (2, "ddp", "full"),
        (2, "fsdp", "full"),
    ]
    # same init and data: DDP, FSDP2 and recomputation train the same model
    assert [r["final_loss"] for r in rows[1:]] == pytest.approx([rows[1]["final_loss"]] * 4, abs=1e-5)
    for r in rows:
        assert r["tokens_per_s_per_gpu"] == pytest.approx(2 * 2 * 16 / r["step_s"])
    merged = subprocess.run([sys.executable, str(SCRIPT), "--table", str(one), str(two)], **run)
    assert merged.returncode == 0, merged.stderr[-3000:]
    ddp_none = rows[1]["tokens_per_s_per_gpu"] / rows[0]["tokens_per_s_per_gpu"]
    assert f"| {100 * ddp_none:.1f}% |" in merged.stdout
