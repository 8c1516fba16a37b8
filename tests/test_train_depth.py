"""Random-depth training (--train-loops) and truncated backprop (--backprop-loops) in the training loop."""

import collections
import json

import pytest

from conftest import tiny_train as tiny
from meshlm.accounting import count, flops_per_token
from meshlm.config import parse_layout
from meshlm.errors import MeshLMError
from meshlm.model import MeshLMForCausalLM
from meshlm.train.depth import LoopSchedule
from meshlm.train.loop import build_model_config, train

LAYOUT = parse_layout("1+1R2+1")


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_schedules_parse_and_their_distributions():
    assert LoopSchedule.parse("fixed", LAYOUT).distribution() == {2: 1.0}
    assert LoopSchedule.parse(None, LAYOUT).loops_at(0, 5) == 2
    uniform = LoopSchedule.parse("uniform:1-4", LAYOUT)
    assert uniform.distribution() == {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25} and uniform.mean == 2.5
    poisson = LoopSchedule.parse("poisson:4", LAYOUT)
    table = poisson.distribution()
    assert min(table) == 1 and sum(table.values()) == pytest.approx(1.0, abs=1e-12)
    assert sum(k * p for k, p in table.items()) == pytest.approx(4.0, rel=1e-12)
    assert str(uniform) == "uniform:1-4" and str(poisson) == "poisson:4"
    assert uniform.quantile(0.999) == 4 and uniform.quantile(0.5) == 2
    assert 8 <= poisson.quantile(0.999) <= 12  # 1 + Poisson(3): P(k > 10) ~ 4e-4


@pytest.mark.parametrize("spec", ["uniform:1-4", "poisson:3"])
def test_loop_counts_are_a_pure_function_of_seed_and_step_with_the_right_law(spec):
    schedule = LoopSchedule.parse(spec, LAYOUT)
    draws = [schedule.loops_at(7, step) for step in range(4000)]
    assert draws == [schedule.loops_at(7, step) for step in range(4000)]  # same seed, same step: same k
    assert draws != [schedule.loops_at(8, step) for step in range(4000)]
    freq = collections.Counter(draws)
    for k, p in schedule.distribution().items():
        assert freq[k] / len(draws) == pytest.approx(p, abs=0.03), k
    assert sum(draws) / len(draws) == pytest.approx(schedule.mean, rel=0.05)


@pytest.mark.parametrize(
    ("spec", "layout", "message"),
    [
        ("uniform:3-1", LAYOUT, "MIN <= MAX"),
        ("uniform:0-2", LAYOUT, "MIN <= MAX"),
        ("poisson:0.5", LAYOUT, "mean must be >= 1"),
        ("random", LAYOUT, "cannot parse --train-loops"),
        ("uniform:1-3", parse_layout("1+1+1+1"), "no shared core"),
        ("poisson:2", parse_layout("4"), "no shared core"),
    ],
)
def test_bad_train_loops_are_refused(spec, layout, message):
    with pytest.raises(MeshLMError, match=message):
        LoopSchedule.parse(spec, layout)


def test_random_depth_run_uses_each_steps_draw_and_expected_flops(corpus, tmp_path, monkeypatch):
    seen = []
    forward = MeshLMForCausalLM.forward

    def spy(self, *args, num_loops=None, backprop_loops=None, **kwargs):
        seen.append((num_loops, backprop_loops))
        return forward(self, *args, num_loops=num_loops, backprop_loops=backprop_loops, **kwargs)

    monkeypatch.setattr(MeshLMForCausalLM, "forward", spy)
    out = tmp_path / "run"
    cfg = tiny(corpus, out, max_steps=6, eval_every=0, train_loops="uniform:1-4", backprop_loops=2, seed=3)
    train(cfg)
    schedule = LoopSchedule.parse("uniform:1-4", LAYOUT)
    draws = [schedule.loops_at(3, step) for step in range(6)]
    assert len(set(draws)) > 1
    training = [s for s in seen if s[1] == 2]  # evaluation runs the default forward
    assert training == [(k, 2) for k in draws for _ in range(2)]  # two micro-batches per step share the k
    assert [r["loops"] for r in records(out)] == draws
    run = json.loads((out / "run.json").read_text())
    model_cfg = build_model_config(cfg, 300)
    expected = sum(flops_per_token(model_cfg, 32, k, 2) for k in (1, 2, 3, 4)) / 4
    assert expected < count(model_cfg, 32).flops_per_token * 1.25
    assert run["depth"]["expected_flops_per_token"] == pytest.approx(expected)
    assert run["depth"]["train_loops"] == "uniform:1-4" and run["depth"]["expected_loops"] == 2.5


def test_random_depth_resume_is_bitwise_exact(corpus, tmp_path):
    options = dict(max_steps=8, train_loops="uniform:1-3", backprop_loops=2, eval_every=0)
    straight = tmp_path / "straight"
    train(tiny(corpus, straight, **options))
    paused = tmp_path / "paused"
    train(tiny(corpus, paused, stop_after=3, **options))
    train(tiny(corpus, paused, resume=True, **options))
    assert [r["loss"] for r in records(paused)] == [r["loss"] for r in records(straight)]
    assert [r["loops"] for r in records(paused)] == [r["loops"] for r in records(straight)]


def test_bad_backprop_loops_is_refused(corpus, tmp_path):
    with pytest.raises(MeshLMError, match="--backprop-loops must be >= 1"):
        train(tiny(corpus, tmp_path / "run", backprop_loops=0))
