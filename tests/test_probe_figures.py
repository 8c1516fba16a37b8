"""Probe figures (meshlm.probe.figures): files written for single and several models, with and without routers."""

import sys

import pytest
import torch

from meshlm.errors import MeshLMError
from meshlm.probe.aggregate import ProbeAccumulator
from meshlm.probe.figures import plot_cka, plot_routers, plot_update_magnitude, write_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def probe_result(*, mesh: bool, linear_cka: bool = False, loops: int = 2, seed: int = 0) -> dict:
    """A small real ProbeAccumulator result on random states (mesh: raw core outputs and routers too)."""
    gen = torch.Generator().manual_seed(seed)
    batch, seq, dim = 3, 16, 8
    states = {"emb": torch.randn(batch, seq, dim, generator=gen)}
    h = states["emb"] + torch.randn(batch, seq, dim, generator=gen)
    states["h0"] = h
    for t in range(1, loops + 1):
        core = h + torch.randn(batch, seq, dim, generator=gen) / t
        if mesh:
            states[f"core_out{t}"] = core
            core = 0.5 * (core + states["emb"])
        states[f"h{t}"] = h = core
    states["out"] = torch.tanh(h)
    if mesh:
        for role in ("read", "write"):
            states[role] = torch.softmax(torch.randn(loops + 1, batch, seq, loops + 3, generator=gen), dim=-1)
    acc = ProbeAccumulator(linear_cka=linear_cka, spectrum_k=10)
    acc.update(states)
    return acc.result()


def assert_pngs(paths, names):
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), path


def test_single_plain_model_writes_the_three_paper_figures(tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_figures(probe_result(mesh=False), tmp_path / "single")
    assert_pngs(paths, ["update_magnitude.png", "cka.png", "spectra.png"])


def test_several_models_with_routers_write_every_figure(tmp_path):
    pytest.importorskip("matplotlib")
    results = {
        "base 1+2R2+1": probe_result(mesh=False, linear_cka=True),
        "mesh 1+2R2+1": probe_result(mesh=True, linear_cka=True, seed=1),
        "mesh 1+2R3+1": probe_result(mesh=True, linear_cka=True, loops=3, seed=2),
    }
    paths = write_figures(results, tmp_path)
    names = ["update_magnitude.png", "cka.png", "spectra.png", "cka_linear.png", "cka_core_outputs.png"]
    assert_pngs(paths, [*names, "routers.png"])
    assert_pngs([plot_routers(results["mesh 1+2R2+1"], tmp_path / "one" / "routers.png")], ["routers.png"])


def test_plots_reject_missing_data_and_foreign_dicts(tmp_path):
    pytest.importorskip("matplotlib")
    base = probe_result(mesh=False)
    with pytest.raises(MeshLMError, match="router"):
        plot_routers({"base": base}, tmp_path / "routers.png")
    with pytest.raises(MeshLMError, match="cka_linear"):
        plot_cka(base, tmp_path / "cka.png", linear=True)
    with pytest.raises(MeshLMError, match="not a probe result"):
        plot_update_magnitude({"model": {"cka": []}}, tmp_path / "u.png")
    with pytest.raises(MeshLMError, match="no probe results"):
        write_figures({}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MeshLMError, match=r"pip install 'meshlm\[plot\]'"):
        plot_update_magnitude(probe_result(mesh=False), tmp_path / "u.png")
