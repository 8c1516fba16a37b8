"""The training loop on CPU: schedule, decay groups, learning, exact resume, atomic checkpoints, NaN stop."""

import dataclasses
import errno
import itertools
import json
import math
import signal

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import meshlm
from conftest import tiny_train as tiny
from meshlm.cli import main
from meshlm.errors import MeshLMError
from meshlm.train import checkpoint as ckpt
from meshlm.train import loop
from meshlm.train.loop import TrainConfig, train
from meshlm.train.optim import build_optimizer, lr_at, param_groups


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_schedule_warmup_peak_and_final_value():
    peak, steps = 1e-3, 1000
    assert lr_at(0, steps, peak) == pytest.approx(peak / 10)
    assert lr_at(9, steps, peak) == pytest.approx(peak)
    assert lr_at(steps - 1, steps, peak) == pytest.approx(0.1 * peak)
    mid = 10 + (steps - 1 - 10) / 2
    assert lr_at(int(mid), steps, peak) == pytest.approx(0.55 * peak, rel=1e-2)
    values = [lr_at(s, steps, peak) for s in range(10, steps)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("scheme", "decayed_scheme_params", "plain_scheme_params"),
    [
        ("static", [], ["coeffs"]),
        ("dynamic", ["gates.0.weight", "gates.1.weight"], ["gates.0.bias", "gates.1.bias"]),
        ("mesh", [f"{r}.{s}.weight" for r in ("write", "read") for s in range(3)], []),
        ("linear", ["adapter.weight"], []),
        ("diagonal", [], ["theta", "b"]),
    ],
)
def test_weight_decay_only_on_matrices(scheme, decayed_scheme_params, plain_scheme_params):
    model = meshlm.MeshLMForCausalLM(
        meshlm.MeshLMConfig(vocab_size=64, hidden_size=16, num_attention_heads=2, layout="1+1R2+1", scheme=scheme)
    )
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    layer_matrices = [
        f"model.layers.{i}.{m}.weight" for i in range(3) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    ]
    expected = {"model.embed.weight", "lm_head.weight", *layer_matrices}
    expected |= {f"model.scheme.{n}" for n in decayed_scheme_params}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(expected)
    everything = [n for n, _ in model.named_parameters()]
    assert sorted(names[id(p)] for p in decay["params"] + no_decay["params"]) == sorted(everything)
    assert {f"model.scheme.{n}" for n in plain_scheme_params} <= {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("scheme", ["mesh", "linear", "dynamic"])
def test_scheme_weight_decay_moves_exactly_the_scheme_matrices_to_their_own_decay(scheme):
    """One AdamW step with zero gradients is pure decoupled decay: it shrinks exactly the decayed matrices."""
    model = meshlm.MeshLMForCausalLM(
        meshlm.MeshLMConfig(vocab_size=64, hidden_size=16, num_attention_heads=2, layout="1+1R2+1", scheme=scheme)
    )
    names = {id(p): n for n, p in model.named_parameters()}
    two = param_groups(model, 0.01)
    decay, no_decay, own = param_groups(model, 0.01, scheme_weight_decay=0.0)
    scheme_matrices = {names[id(p)] for p in two[0]["params"] if names[id(p)].startswith("model.scheme.")}
    assert scheme_matrices and {names[id(p)] for p in own["params"]} == scheme_matrices
    assert {names[id(p)] for p in decay["params"]} == {names[id(p)] for p in two[0]["params"]} - scheme_matrices
    assert [p for p in no_decay["params"]] == two[1]["params"] and own["weight_decay"] == 0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5, scheme_weight_decay=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        shrunk = n not in scheme_matrices and any(n == names[id(q)] for q in decay["params"])
        torch.testing.assert_close(p.detach(), before[n] * (0.95 if shrunk else 1.0), rtol=0, atol=1e-7)


def test_resume_refuses_turning_scheme_weight_decay_on(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=4, stop_after=2))
    message = r"trained without --scheme-weight-decay or --scheme-lr-scale; turning them on or off changes"
    for option in ({"scheme_weight_decay": 0.0}, {"scheme_lr_scale": 0.1}):
        with pytest.raises(MeshLMError, match=message):
            train(tiny(corpus, out, max_steps=4, resume=True, **option))
    summary = train(tiny(corpus, out, max_steps=4, resume=True))
    assert summary["steps"] == 4


def test_a_weight_decay_changed_on_resume_takes_effect(corpus, tmp_path):
    """The resume note says the decay changed; the optimizer must use it (the saved state carried the old one)."""
    out = tmp_path / "run"
    keep = dict(save_every=1, keep_checkpoints=0)
    train(tiny(corpus, out, max_steps=4, stop_after=2, scheme_weight_decay=0.0, **keep))
    train(tiny(corpus, out, max_steps=4, resume=True, weight_decay=0.5, scheme_weight_decay=0.25, **keep))
    for step, decay in ((2, [0.01, 0.0, 0.0]), (3, [0.5, 0.0, 0.25]), (4, [0.5, 0.0, 0.25])):
        _, optimizer, _ = ckpt.load_training_state(out / "checkpoints" / f"step-{step:08d}", torch.device("cpu"))
        assert [group["weight_decay"] for group in optimizer["param_groups"]] == decay


def test_scheme_lr_scale_scales_exactly_the_scheme_matrices_learning_rate(corpus, tmp_path):
    """The scheme group follows the schedule at 0.1x, every other group at 1x, also after a resume at 0.5x."""
    out = tmp_path / "run"
    keep = dict(save_every=1, keep_checkpoints=0, scheme="linear")
    train(tiny(corpus, out, max_steps=4, stop_after=2, scheme_lr_scale=0.1, **keep))
    train(tiny(corpus, out, max_steps=4, resume=True, scheme_lr_scale=0.5, **keep))
    for step, scale in ((1, 0.1), (2, 0.1), (3, 0.5), (4, 0.5)):
        _, optimizer, _ = ckpt.load_training_state(out / "checkpoints" / f"step-{step:08d}", torch.device("cpu"))
        decay, no_decay, scheme = optimizer["param_groups"]
        peak = lr_at(step - 1, 4, 3e-3)
        assert decay["lr"] == no_decay["lr"] == pytest.approx(peak) and scheme["lr"] == pytest.approx(scale * peak)
        assert scheme["weight_decay"] == decay["weight_decay"] == 0.01 and len(scheme["params"]) == 1  # the adapter


def test_tiny_run_learns_and_writes_a_loadable_model(corpus, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny(corpus, out, max_steps=30, eval_every=10, save_every=10, max_position_embeddings=96))
    curve = losses(out)
    assert curve[-1] < curve[0] - 1.0
    assert summary["final_val_loss"] < math.log(300)
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.scheme == "mesh" and model.config.layout == "1+1R2+1"
    # the saved tokenizers know the model's context length (not HF's "no limit", 1e30)
    for folder in (out / "model", *ckpt.list_checkpoints(out / "checkpoints")):
        assert AutoTokenizer.from_pretrained(folder).model_max_length == 96, folder
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "time"} <= set(records[0])
    assert all(a["time"] <= b["time"] for a, b in itertools.pairwise(records))
    assert records[-1]["tokens"] == 30 * 256


def test_run_json_is_a_valid_config_that_gives_back_the_same_train_config(corpus, tmp_path):
    from meshlm.cli import build_parser
    from meshlm.train.cli import config_from_args

    out = tmp_path / "run"
    cfg = tiny(corpus, out, max_steps=2, scheme="anchor", lr=2e-3, train_loops="uniform:1-2", tensorboard=False)
    train(dataclasses.replace(cfg))
    parser = build_parser(["meshlm.train.cli"])
    reloaded = config_from_args(parser.parse_args(["train", "--config", str(out / "run.json")]))
    assert dataclasses.asdict(reloaded) == dataclasses.asdict(cfg)
    again = str(tmp_path / "again")
    flags = ["train", "--config", str(out / "run.json"), "--out", again, "--max-steps", "3"]
    assert config_from_args(parser.parse_args(flags)) == dataclasses.replace(cfg, out=again, max_steps=3)


def test_resume_after_signal_gives_bitwise_equal_losses(corpus, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(tiny(corpus, straight, max_steps=10))
    interrupted = tmp_path / "interrupted"
    original = loop.lr_at

    def lr_then_sigterm(step, *args):
        if step == 5:
            signal.raise_signal(signal.SIGTERM)
        return original(step, *args)

    monkeypatch.setattr(loop, "lr_at", lr_then_sigterm)
    train(tiny(corpus, interrupted, max_steps=10))
    assert [p.name for p in ckpt.list_checkpoints(interrupted / "checkpoints")] == ["step-00000006"]
    assert not (interrupted / "model").exists()
    monkeypatch.setattr(loop, "lr_at", original)
    summary = train(tiny(corpus, interrupted, max_steps=10, resume=True))
    assert summary["resumed_from"].endswith("step-00000006")
    assert losses(interrupted) == losses(straight)


def test_a_signal_during_evaluation_still_leaves_a_checkpoint(corpus, tmp_path, monkeypatch):
    """SIGTERM landing inside step 4's eval (as `timeout` does to a sweep): the run saves and resumes exactly.

    It used to print "checkpoint saved" and exit without saving: the save decision was taken before
    the eval and the stop check after it.
    """
    straight = tmp_path / "straight"
    train(tiny(corpus, straight, max_steps=10, eval_every=2))
    interrupted = tmp_path / "interrupted"
    original = loop.evaluate
    calls = []

    def evaluate_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the eval of step 4
            signal.raise_signal(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate_then_sigterm)
    summary = train(tiny(corpus, interrupted, max_steps=10, eval_every=2))
    assert summary["interrupted_by_signal"] == signal.SIGTERM and summary["steps"] == 5
    assert [p.name for p in ckpt.list_checkpoints(interrupted / "checkpoints")] == ["step-00000005"]
    monkeypatch.setattr(loop, "evaluate", original)
    resumed = train(tiny(corpus, interrupted, max_steps=10, eval_every=2, resume=True))
    assert resumed["resumed_from"].endswith("step-00000005")
    assert losses(interrupted) == losses(straight)


def test_crash_mid_save_keeps_previous_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=6, save_every=2, stop_after=4))
    before = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in before] == ["step-00000002", "step-00000004"]
    real_save = ckpt.save_state

    def crash(obj, path):
        if path.name == ckpt.OPTIMIZER_FILE:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "save_state", crash)
    with pytest.raises(MeshLMError, match=r"disk is full.*simulated.*untouched"):
        train(tiny(corpus, out, max_steps=6, save_every=2, resume=True))
    after = ckpt.list_checkpoints(out / "checkpoints")
    assert after == before
    assert not [p for p in (out / "checkpoints").iterdir() if p not in before]  # no half-written folder
    assert AutoModelForCausalLM.from_pretrained(after[-1]) is not None


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    original = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, *a: float("nan") if step >= 4 else original(step, *a))
    out = tmp_path / "run"
    with pytest.raises(MeshLMError, match=r"non-finite loss.*step-00000004"):
        train(tiny(corpus, out, max_steps=10, save_every=2))
    kept = ckpt.list_checkpoints(out / "checkpoints")
    assert kept[-1].name == "step-00000004"
    model = AutoModelForCausalLM.from_pretrained(kept[-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _cli_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_training_inputs_give_one_clear_error(corpus, tmp_path, capsys):
    common = [
        "train",
        "--out",
        str(tmp_path / "o"),
        "--max-steps",
        "2",
        "--no-progress",
        "--no-tensorboard",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "4",
    ]
    missing = common + ["--data", str(tmp_path / "missing"), "--tokenizer", "bpe:300"]
    assert "does not exist" in _cli_error(missing, capsys)
    # without --tokenizer too: the missing file is what to fix first, not the tokenizer
    assert "does not exist" in _cli_error(common + ["--data", str(tmp_path / "missing.txt")], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    assert "empty" in _cli_error(common + ["--data", str(empty), "--tokenizer", "bpe:300"], capsys).lower()
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("just a few words here")
    _cli_error(
        common + ["--data", str(short), "--tokenizer", "bpe:300", "--seq-len", "64", "--batch-tokens", "256"], capsys
    )
    assert "tokenizer" in _cli_error(common + ["--data", corpus, "--tokenizer", "bpe:abc"], capsys).lower()
    assert "max_position_embeddings" in _cli_error(
        common + ["--data", corpus, "--tokenizer", "bpe:300", "--seq-len", "4096"], capsys
    )
    assert "--tokenizer" in _cli_error(common + ["--data", corpus], capsys)
    bad_ac = common + ["--data", corpus, "--tokenizer", "bpe:300", "--activation-checkpointing", "mlp"]
    assert "none, full, selective" in _cli_error(bad_ac, capsys)
    assert not (tmp_path / "o" / "run.json").exists()


def test_resume_into_a_different_model_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=2))
    with pytest.raises(MeshLMError, match="different model"):
        train(tiny(corpus, out, max_steps=4, resume=True, scheme="anchor"))
    with pytest.raises(MeshLMError, match="--resume"):
        train(tiny(corpus, out, max_steps=4))


def test_mesh_run_logs_router_statistics_that_match_the_model(corpus, tmp_path):
    """At each eval the log holds per-step slot weights (summing to 1) and entropies of the eval batches."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from meshlm.data.shards import eval_batches
    from meshlm.probe import collect_states, router_stats

    out = tmp_path / "mesh"
    cfg = tiny(corpus, out, tensorboard=True, router_init="fresh_slot")  # slot weights differ by step
    train(cfg)
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    with_router = [r["step"] for r in records if any(k.startswith("router/") for k in r)]
    assert with_router == [r["step"] for r in records if "val_loss" in r] == [4, 8]
    last = records[-1]
    steps, slots = 3, 5  # 1+1R2+1: transition + 2 loops; default buffer K + 3 = 5 slots
    for role in ("write", "read"):
        for s in range(steps):
            weights = [last[f"router/{role}/step{s}/slot{b}"] for b in range(slots)]
            assert sum(weights) == pytest.approx(1.0, abs=1e-6)
            assert 0.0 <= last[f"router/{role}/step{s}/entropy"] <= math.log(slots) + 1e-9
        assert f"router/{role}/step{steps}/slot0" not in last and f"router/{role}/step0/slot{slots}" not in last
    # direct recomputation: the final model (written after the last eval) on the same held-out batches
    model = meshlm.MeshLMForCausalLM.from_pretrained(out / "model").eval()
    _, shards = loop.load_run_data(cfg)
    sums, tokens = {}, 0
    for x, _ in eval_batches(shards.split("val"), cfg.seq_len, cfg.micro_batch, cfg.eval_batches):
        states = collect_states(model, x)
        for role in ("write", "read"):
            stats = router_stats(states[role])  # per sample, equal lengths: sample means average to token means
            value = torch.cat((stats.slot_weight, stats.entropy[..., None]), -1).sum(0) * x.shape[1]
            sums[role] = sums.get(role, 0) + value
        tokens += x.numel()
    for role in ("write", "read"):
        expected = (sums[role] / tokens).flatten().tolist()
        names = [*(f"slot{b}" for b in range(slots)), "entropy"]
        assert [last[f"router/{role}/step{s}/{n}"] for s in range(steps) for n in names] == pytest.approx(
            expected, abs=1e-6
        )
    events = EventAccumulator(str(out / "tb")).Reload()
    assert events.Scalars("router/read/step2/slot3")[-1].value == pytest.approx(last["router/read/step2/slot3"])
    tags = events.Tags()["scalars"]
    assert "train/val_loss" not in tags and "train/val_ppl" not in tags  # held-out numbers have a group of their own
    assert "train/time" not in tags and "train/loss" in tags  # TensorBoard stamps wall time itself
    evals = [r for r in records if "val_loss" in r]
    for name, key in (("val/loss", "val_loss"), ("val/ppl", "val_ppl")):
        assert [(e.step, e.value) for e in events.Scalars(name)] == [
            (r["step"], pytest.approx(r[key], rel=1e-6)) for r in evals
        ]


def test_base_run_logs_no_router_statistics(corpus, tmp_path):
    out = tmp_path / "base"
    train(tiny(corpus, out, scheme="base"))
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in records)
    assert not any(k.startswith("router") for r in records for k in r)


def test_router_statistics_trace_as_one_compiled_graph():
    """``evaluate`` passes ``record`` through a compiled model: no graph break, same numbers as eager."""
    from torch._dynamo.testing import CompileCounter

    from conftest import randomize_scheme, tiny_config

    model = meshlm.MeshLMForCausalLM(tiny_config(layout="1+1R2+1", scheme="mesh")).eval()
    randomize_scheme(model)
    x = torch.randint(0, 97, (2, 16))
    results = []
    for compiled in (False, True):
        if compiled:
            counter = CompileCounter()
            model.compile(backend=counter, fullgraph=True)
        stats = model.model.scheme.statistics()
        record = stats.new_record()
        with torch.no_grad():
            model(x, use_cache=False, record=record)
        stats.update(record)
        results.append(stats.result())
    assert counter.frame_count == 1
    assert results[1] == pytest.approx(results[0], abs=1e-6) and len(results[0]) == 2 * 3 * (5 + 1)


def test_paper_config_is_the_papers_recipe_on_1_to_8_gpus(tmp_path):
    from pathlib import Path

    from meshlm.train.cli import read_config_file

    values = read_config_file(Path(__file__).parents[1] / "configs" / "paper-1.4b.yaml")
    cfg = TrainConfig.from_dict({**values, "data": "shards", "out": str(tmp_path)})
    model = loop.build_model_config(cfg, 50277)
    assert (model.hidden_size, model.num_attention_heads, model.vocab_size) == (2048, 16, 50304)
    assert (model.layout, model.scheme, model.parsed_layout.unrolled_layers) == ("4+8R2+4", "mesh", 24)
    assert (cfg.seq_len, cfg.batch_tokens // cfg.seq_len, cfg.lr) == (4096, 512, 2e-4)
    steps = loop.max_steps_of(cfg)
    assert lr_at(steps // 100 - 1, steps, cfg.lr) == pytest.approx(2e-4, rel=1e-3)  # warm-up ends at 1%
    assert lr_at(steps - 1, steps, cfg.lr) == pytest.approx(2e-5)
    for world in (1, 2, 4, 8):
        assert loop._batch_shape(cfg, world) == (512, 4, 128 // world)
    vanilla = loop.build_model_config(dataclasses.replace(cfg, layout="24", scheme="base"), 50277)
    assert vanilla.parsed_layout.is_vanilla and vanilla.parsed_layout.unrolled_layers == 24


def _fake_compile(shift: float):
    """``wrap_model`` standing in for ``model.compile()``: a forward hook, which like the compiled call runs
    under ``model(...)`` but not under ``model.forward(...)``, moves the logits by ``shift`` in eval mode."""

    def wrap(model, dist, compile=False, **_):
        def hook(module, args, output):
            if not module.training:
                output.logits = output.logits + shift * torch.arange(output.logits.shape[-1])
            return output

        model.register_forward_hook(hook)
        return model

    return wrap


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_a_compiled_runs_last_eval_is_checked_against_the_uncompiled_forward(
    corpus, tmp_path, monkeypatch, capsys, shift
):
    """The 250M MeSH seed-2 run's compiled evals drifted from its training; the last eval is scored twice."""
    monkeypatch.setattr(loop, "wrap_model", _fake_compile(shift))
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=6, eval_every=4, compile=True))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 6] and "val_loss_eager" not in evals[0]  # the last eval only
    last = evals[-1]
    warned = "differs from the uncompiled forward" in capsys.readouterr().err
    if shift == 0.0:
        assert last["val_loss_eager"] == last["val_loss"] and not warned
    else:
        assert last["val_loss"] - last["val_loss_eager"] > loop.COMPILED_EVAL_TOLERANCE and warned
        assert json.loads((out / "summary.json").read_text())["final_val_loss"] == last["val_loss"]


def test_an_uncompiled_run_scores_its_evals_once(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny(corpus, out, max_steps=4, eval_every=4))
    assert all("val_loss_eager" not in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
