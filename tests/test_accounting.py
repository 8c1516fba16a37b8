"""Parameter and FLOP accounting: GPT-NeoX formula, routers, and agreement with real models."""

import json

import pytest

from conftest import tiny_config
from meshlm import MeshLMConfig, MeshLMForCausalLM
from meshlm.accounting import count, count_parameters, expected_flops_per_token, flops_per_token
from meshlm.cli import main


@pytest.mark.parametrize(
    "preset", ["pythia-14m", "pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b"]
)
def test_vanilla_non_embedding_equals_gpt_neox_formula(preset):
    cfg = MeshLMConfig.from_preset(preset)
    d, n_layers = cfg.hidden_size, cfg.parsed_layout.unrolled_layers
    c = count(cfg)
    assert c.non_embedding == n_layers * (12 * d * d + 13 * d) + 2 * d
    assert c.embedding == 2 * 50304 * d


def test_recursive_counts_shared_core_once_and_flops_unrolled():
    vanilla = count(MeshLMConfig.from_preset("pythia-410m"))
    rec = count(MeshLMConfig.from_preset("pythia-410m", layout="4+8R2+4"))
    d = 1024
    assert rec.non_embedding == 16 * (12 * d * d + 13 * d) + 2 * d
    assert rec.unrolled_layers == vanilla.unrolled_layers == 24
    assert rec.flops_per_token == vanilla.flops_per_token  # matched compute
    per_layer = 12 * d * d + 13 * d
    assert vanilla.flops_per_token == 6 * (24 * per_layer + 50304 * d) + 12 * 24 * d * 2048
    assert 0.32 < 1 - rec.non_embedding / vanilla.non_embedding < 0.34  # the paper's ~-33%


@pytest.mark.parametrize("loops,slots", [(2, None), (3, None), (2, 4)])
def test_router_count(loops, slots):
    cfg = MeshLMConfig.from_preset("pythia-160m", layout=f"2+4R{loops}+2", scheme="mesh", buffer_size=slots)
    b = slots or loops + 3
    c = count(cfg)
    assert c.router == (loops + 1) * 2 * (768 * b + b)
    assert (
        c.non_embedding
        == count(MeshLMConfig.from_preset("pythia-160m", layout=f"2+4R{loops}+2")).non_embedding + c.router
    )
    assert c.flops_per_token > count(MeshLMConfig.from_preset("pythia-160m", layout=f"2+4R{loops}+2")).flops_per_token


@pytest.mark.parametrize(
    ("scheme", "layout"),
    [
        ("base", "3"),
        ("mesh", "1+2R2+1"),
        ("static", "1+2R3+1"),
        ("dynamic", "1+1+1+1"),
        ("anchor", "0+2R2+0"),
        ("linear", "1+2R2+1"),
        ("diagonal", "1+1R3+1"),
    ],
)
def test_config_counts_equal_instantiated_model(scheme, layout):
    cfg = tiny_config(scheme=scheme, layout=layout)
    real = count_parameters(MeshLMForCausalLM(cfg))
    c = count(cfg)
    assert (c.total, c.embedding, c.non_embedding, c.router) == (
        real["total"],
        real["embedding"],
        real["non_embedding"],
        real["router"],
    )


def test_params_cli_json(capsys):
    assert main(["params", "--preset", "pythia-410m", "--layout", "4+8R2+4", "--scheme", "mesh", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("total", "embedding", "non_embedding", "router", "unrolled_layers", "flops_per_token"):
        assert isinstance(out[key], int)
    assert out["router"] == 3 * 2 * (1024 * 5 + 5)


def test_params_cli_table_lists_paper_configs(capsys):
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    assert "4+8R2+4" in out and "3+5R2+3" in out and "4+8+8+4" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["params", "--preset", "pythia-410m", "--layout", "4+8X2+4"],
        ["params", "--preset", "pythia-410m", "--scheme", "meshy"],
        ["params", "--preset", "pythia-410m", "--scheme", "mesh"],
        ["params", "--layout", "4+8R2+4"],
        [
            "params",
            "--preset",
            "pythia-410m",
            "--layout",
            "4+8R2+4",
            "--scheme",
            "base",
            "--buffer-size",
            "4",
        ],
    ],
)
def test_params_cli_bad_input_is_one_error_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_flops_at_other_depths_truncation_and_injection():
    cfg = MeshLMConfig.from_preset("pythia-160m", layout="2+4R2+2")
    d, t, v, per_layer = 768, 1024, 50304, 12 * 768 * 768 + 13 * 768
    outer = 6 * (4 * per_layer + v * d) + 12 * 4 * d * t
    loop = 6 * 4 * per_layer + 12 * 4 * d * t
    assert flops_per_token(cfg, t) == count(cfg, t).flops_per_token == outer + 2 * loop
    assert flops_per_token(cfg, t, loops=5) == outer + 5 * loop
    assert flops_per_token(cfg, t, loops=5, backprop_loops=2) == outer + 2 * loop + 3 * loop // 3
    assert flops_per_token(cfg, t, loops=2, backprop_loops=8) == outer + 2 * loop
    expected = expected_flops_per_token(cfg, t, {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25})
    assert expected == pytest.approx(outer + 2.5 * loop)
    linear = MeshLMConfig.from_preset("pythia-160m", layout="2+4R2+2", scheme="linear")
    assert flops_per_token(linear, t, loops=3) == outer + 3 * (loop + 6 * 2 * d * d)
    diagonal = MeshLMConfig.from_preset("pythia-160m", layout="2+4R2+2", scheme="diagonal")
    assert count(diagonal, t).non_embedding == count(cfg, t).non_embedding + 2 * d
    mesh = MeshLMConfig.from_preset("pythia-160m", layout="2+4R2+2", scheme="mesh")
    b = 5
    assert flops_per_token(mesh, t, loops=4) == outer + 4 * loop + 8 * 5 * d * b
