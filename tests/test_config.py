"""Layout and scheme parsing, presets, and every bad config string giving one clear error."""

import pytest

from conftest import tiny_config
from meshlm import Layout, MeshLMConfig, MeshLMError, parse_layout, parse_scheme
from meshlm.config import canonical_scheme


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24", Layout(24, 0, 0, 0, False)),
        ("4+8R2+4", Layout(4, 8, 2, 4, True)),
        ("3+6R3+3", Layout(3, 6, 3, 3, True)),
        ("0+4R3+0", Layout(0, 4, 3, 0, True)),
        ("4+8+8+4", Layout(4, 8, 2, 4, False)),
        ("1+2+2+2+1", Layout(1, 2, 3, 1, False)),
        (" 4 + 8R2 + 4 ", Layout(4, 8, 2, 4, True)),
    ],
)
def test_layouts_parse_and_print_back(text, expected):
    layout = parse_layout(text)
    assert layout == expected
    assert parse_layout(str(layout)) == layout


def test_unrolled_and_unique_layers_and_schedule():
    lay = parse_layout("4+8R2+4")
    assert (lay.unrolled_layers, lay.unique_layers) == (24, 16)
    pre, loops, coda = lay.schedule()
    assert pre == (0, 1, 2, 3) and loops[0] == loops[1] == tuple(range(4, 12)) and coda == tuple(range(12, 16))
    pre, loops, coda = parse_layout("4+8+8+4").schedule()
    assert loops == (tuple(range(4, 12)), tuple(range(12, 20))) and coda == tuple(range(20, 24))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "0",
        "4+8R0+4",
        "4+0R2+4",
        "4+8R2",
        "8R2",
        "4+8r2+4x",
        "4+8+4",
        "4+8+6+4",
        "4+0+0+4",
        "-3",
        "4+8R2+4+1",
        "2.5",
    ],
)
def test_bad_layouts_are_refused_with_the_accepted_forms(text):
    with pytest.raises(MeshLMError, match="accepted layout forms"):
        parse_layout(text)


@pytest.mark.parametrize(
    ("text", "kind", "terms"),
    [
        ("base", "base", set()),
        ("mesh", "mesh", set()),
        ("static", "static", set()),
        ("dynamic", "dynamic", set()),
        ("linear", "linear", set()),
        ("Diagonal", "diagonal", set()),
        ("anchor*", "additive", {"anchor*"}),
        ("anchor+residual", "additive", {"anchor", "residual"}),
        ("residual+anchor+anchor*", "additive", {"residual", "anchor", "anchor*"}),
    ],
)
def test_schemes_parse(text, kind, terms):
    assert parse_scheme(text) == (kind, frozenset(terms))


def test_canonical_scheme_orders_terms():
    assert canonical_scheme("anchor*+residual") == "residual+anchor*"


@pytest.mark.parametrize(
    "text", ["", "mesh+anchor", "anchor+anchor", "foo", "base+residual", "static+anchor", "+", "linear+anchor"]
)
def test_bad_schemes_are_refused_with_the_accepted_forms(text):
    with pytest.raises(MeshLMError, match="accepted schemes"):
        parse_scheme(text)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(layout="6", scheme="mesh"), "only takes scheme 'base'"),
        (dict(layout="6", scheme="anchor"), "only takes scheme 'base'"),
        (dict(hidden_size=30, num_attention_heads=4), "not divisible"),
        (dict(scheme="anchor", layout="1+2R2+1", buffer_size=4), "only applies to scheme 'mesh'"),
        (dict(scheme="mesh", layout="1+2R2+1", buffer_size=1), "buffer_size must be an integer >= 2"),
        (dict(scheme="mesh", layout="1+2R3+1", buffer_size=4, router_init="fresh_slot"), "needs buffer_size"),
        (dict(scheme="mesh", layout="1+2R2+1", router_init="diag"), "router_init must be one of"),
        (dict(scheme="mesh", layout="1+2R2+1", mesh_transition_input="x"), "mesh_transition_input"),
        (dict(scheme="linear", layout="1+2R2+1", linear_init="eye"), "linear_init must be one of"),
        (
            dict(scheme="diagonal", layout="1+2R2+1", diagonal_decay_init=1.0),
            r"diagonal_decay_init must be in \(0, 1\)",
        ),
        (dict(scheme="diagonal", layout="1+2R2+1", diagonal_decay_init=0.0), "diagonal_decay_init"),
        (dict(layout="6", scheme="linear"), "only takes scheme 'base'"),
        (dict(rotary_pct=1.5), "rotary_pct"),
        (dict(hidden_size=48, num_attention_heads=4), "must be even"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(layer_norm_eps=0), "must be > 0"),
    ],
)
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(MeshLMError, match=message):
        tiny_config(**overrides)


def test_presets_default_to_vanilla_pythia_sizes():
    cfg = MeshLMConfig.from_preset("pythia-410m")
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.layout, cfg.vocab_size) == (1024, 16, "24", 50304)
    assert cfg.intermediate_size == 4096 and cfg.rotary_dim == 16
    cfg = MeshLMConfig.from_preset("pythia-160m", layout="2+4R2+2", scheme="mesh")
    assert cfg.num_buffer_slots == 5 and cfg.num_hidden_layers == 12
    with pytest.raises(MeshLMError, match="known presets"):
        MeshLMConfig.from_preset("pythia-9b")


def test_config_roundtrip_keeps_layout_and_scheme(tmp_path):
    cfg = tiny_config(layout="1+2R3+1", scheme="mesh", buffer_size=5, router_init="fresh_slot")
    cfg.save_pretrained(tmp_path)
    loaded = MeshLMConfig.from_pretrained(tmp_path)
    assert (loaded.layout, loaded.scheme, loaded.buffer_size, loaded.router_init) == (
        "1+2R3+1",
        "mesh",
        5,
        "fresh_slot",
    )
    assert loaded.num_hidden_layers == 8


def test_with_loops_changes_only_a_shared_cores_count():
    lay = parse_layout("2+4R2+2")
    assert lay.with_loops(2) is lay
    assert str(lay.with_loops(5)) == "2+4R5+2" and lay.with_loops(5).unrolled_layers == 24
    assert tiny_config(layout="2+4R2+2").unrolled_layers_at(1) == 8
    assert parse_layout("1+1+1+1").with_loops(2) == parse_layout("1+1+1+1")
    for text, loops in (("6", 2), ("1+1+1+1", 3)):
        with pytest.raises(MeshLMError, match="no shared core"):
            parse_layout(text).with_loops(loops)
