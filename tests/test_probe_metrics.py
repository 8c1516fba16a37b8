"""Diagnostics math (meshlm.probe.metrics) and its accumulation over samples (meshlm.probe.aggregate)."""

import json
import math
import statistics

import numpy as np
import pytest
import torch

from meshlm.errors import MeshLMError
from meshlm.probe.aggregate import ProbeAccumulator
from meshlm.probe.metrics import (
    cka,
    cka_matrix,
    effective_rank,
    router_stats,
    singular_values,
    spectrum,
    update_magnitude,
    update_magnitudes,
)

KERNELS = ["linear", "rbf"]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(rand(d, d, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def naive_cka(x: torch.Tensor, y: torch.Tensor, kernel: str, sigma_frac: float = 0.8) -> float:
    """Kornblith et al. eq. 3-4 written out with loops and an explicit centring matrix H."""

    def kernel_matrix(z: list[list[float]]) -> np.ndarray:
        n = len(z)
        if kernel == "linear":
            return np.array([[sum(a * b for a, b in zip(z[i], z[j], strict=True)) for j in range(n)] for i in range(n)])
        dist = [[math.dist(z[i], z[j]) for j in range(n)] for i in range(n)]
        pairs = [dist[i][j] for i in range(n) for j in range(i + 1, n)]
        median = statistics.median(pairs)
        if median == 0:
            median = statistics.median([d for d in pairs if d > 0])
        sigma = sigma_frac * median
        return np.array([[math.exp(-(dist[i][j] ** 2) / (2 * sigma**2)) for j in range(n)] for i in range(n)])

    k_x, k_y = kernel_matrix(x.tolist()), kernel_matrix(y.tolist())
    n = len(k_x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k_x, k_y) / math.sqrt(hsic(k_x, k_x) * hsic(k_y, k_y))


# --- CKA -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_cka_of_identical_inputs_is_one(kernel):
    x = rand(24, 10)
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-12)
    assert cka(x.float(), x.bfloat16().float(), kernel) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("kernel", KERNELS)
def test_cka_invariant_to_rotation_and_isotropic_scaling(kernel):
    x, y = rand(30, 8, seed=1), rand(30, 5, seed=2) + 0.5 * rand(30, 8, seed=1)[:, :5]
    reference = cka(x, y, kernel)
    assert 0.05 < reference < 0.95
    rotated = cka(x @ random_orthogonal(8, 3) * 7.5, y @ random_orthogonal(5, 4), kernel)
    scaled = cka(x, y * 0.01, kernel)
    assert rotated == pytest.approx(reference, abs=1e-10)
    assert scaled == pytest.approx(reference, abs=1e-10)


@pytest.mark.parametrize(("kernel", "sigma_frac"), [("linear", 0.8), ("rbf", 0.8), ("rbf", 0.4), ("rbf", 2.0)])
def test_cka_matches_naive_reference(kernel, sigma_frac):
    for seed in range(3):
        x = rand(15, 6, seed=seed)
        y = torch.tanh(x @ rand(6, 9, seed=seed + 10)) + 0.3 * rand(15, 9, seed=seed + 20)
        assert cka(x, y, kernel, sigma_frac) == pytest.approx(naive_cka(x, y, kernel, sigma_frac), abs=1e-10)


def test_rbf_bandwidth_falls_back_to_positive_distances_when_most_rows_coincide():
    x = torch.cat([rand(1, 4).expand(8, 4), rand(3, 4, seed=1)])  # 28 of 55 row pairs coincide
    y = rand(11, 3, seed=2)
    assert cka(x, y) == pytest.approx(naive_cka(x, y, "rbf"), abs=1e-10)


def test_cka_matrix_is_symmetric_bounded_and_matches_pairwise_cka():
    base = rand(20, 6)
    states = [base, base + 0.1 * rand(20, 6, seed=1), torch.relu(base @ rand(6, 12, seed=2)), rand(20, 4, seed=3)]
    for kernel in KERNELS:
        matrix = cka_matrix(states, kernel)
        assert torch.allclose(matrix, matrix.T, atol=1e-14)
        assert torch.allclose(matrix.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-12)
        assert bool(((matrix >= 0) & (matrix <= 1 + 1e-12)).all())
        for i in range(4):
            for j in range(4):
                assert matrix[i, j].item() == pytest.approx(cka(states[i], states[j], kernel), abs=1e-12)


def test_cka_rejects_bad_inputs():
    x = rand(10, 3)
    with pytest.raises(MeshLMError, match="kernel"):
        cka(x, x, kernel="cosine")
    with pytest.raises(MeshLMError, match="sigma_frac"):
        cka(x, x, sigma_frac=0)
    with pytest.raises(MeshLMError, match="rows"):
        cka(x, rand(9, 3))
    with pytest.raises(MeshLMError, match="identical"):
        cka(x, torch.ones(10, 3), kernel="linear")
    with pytest.raises(MeshLMError, match="identical"):
        cka(x, torch.ones(10, 3), kernel="rbf")


# --- update magnitude ------------------------------------------------------------------------------


def test_update_magnitude_on_hand_made_matrices():
    h = rand(7, 5)
    assert update_magnitude(h, 2 * h) == pytest.approx(2 / 3, abs=1e-14)
    assert update_magnitude(h, h) == 0.0
    assert update_magnitude(h, -h) == pytest.approx(2.0, abs=1e-14)
    assert update_magnitude(torch.zeros(3, 2), torch.zeros(3, 2)) == 0.0
    h_in = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    h_out = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert update_magnitude(h_in, h_out) == pytest.approx(2 / (1 + math.sqrt(2)), abs=1e-14)


def test_batched_update_magnitudes_match_per_sample_values():
    h_in, h_out = rand(4, 6, 3), rand(4, 6, 3, seed=1)
    batched = update_magnitudes(h_in, h_out)
    assert batched.shape == (4,)
    for i in range(4):
        assert batched[i].item() == pytest.approx(update_magnitude(h_in[i], h_out[i]), abs=1e-14)
    with pytest.raises(MeshLMError, match="same shape"):
        update_magnitudes(h_in, h_out[:, :5])


# --- spectra and effective rank --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_spectrum_is_sorted_normalised_and_matches_numpy_svd(shape):
    x = rand(*shape)
    reference = np.linalg.svd(x.numpy(), compute_uv=False)
    assert np.allclose(singular_values(x).numpy(), reference, rtol=1e-10)
    top = spectrum(x, k=8)
    assert top.shape == (8,) and top[0].item() == 1.0
    assert bool((top[1:] <= top[:-1]).all())
    assert np.allclose(top.numpy(), reference[:8] / reference[0], rtol=1e-10)
    padded = spectrum(x, k=20)
    assert np.allclose(padded[:12].numpy(), reference / reference[0], rtol=1e-10)
    assert bool((padded[12:] == 0).all())


def test_spectrum_of_rank_deficient_matrix_has_exact_zeros():
    x = rand(40, 3) @ rand(3, 16, seed=1)
    top = spectrum(x, k=10)
    assert bool((top[:3] > 0).all()) and bool((top[3:] == 0).all())
    with pytest.raises(MeshLMError, match="all-zero"):
        spectrum(torch.zeros(5, 4))


def test_effective_rank_of_identity_like_matrices_is_their_rank():
    block = torch.zeros(9, 12, dtype=torch.float64)
    block[:5, :5] = 3.0 * torch.eye(5)
    assert effective_rank(block) == pytest.approx(5.0, abs=1e-12)
    rotated = random_orthogonal(9, 1) @ block @ random_orthogonal(12, 2)
    assert effective_rank(rotated) == pytest.approx(5.0, abs=1e-6)
    assert effective_rank(rand(20, 1) @ rand(1, 6, seed=1)) == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_matches_entropy_formula():
    x = rand(25, 10) * torch.logspace(0, -1, 10, dtype=torch.float64)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)
    assert 1.0 < effective_rank(x) < 10.0


# --- router statistics -----------------------------------------------------------------------------


def test_router_stats_on_hand_made_weights():
    uniform = torch.full((2, 3), 1 / 3)
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    weights = torch.stack([uniform, one_hot])[:, None]  # (steps=2, batch=1, seq=2, B=3)
    stats = router_stats(weights)
    assert stats.slot_weight.shape == (1, 2, 3) and stats.entropy.shape == (1, 2)
    assert torch.allclose(stats.slot_weight[0, 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(stats.slot_weight[0, 1], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert stats.entropy[0, 0].item() == pytest.approx(math.log(3), abs=1e-7)
    assert stats.entropy[0, 1].item() == 0.0
    with pytest.raises(MeshLMError, match="steps, batch, seq, B"):
        router_stats(weights[0])


# --- accumulation over samples ---------------------------------------------------------------------


def synthetic_states(batch: int, *, loops: int = 2, seq: int = 12, dim: int = 6, mesh: bool, seed: int):
    """A collect_states-like dict whose states drift from the embeddings, with routers for mesh."""
    gen = torch.Generator().manual_seed(seed)
    states = {"emb": torch.randn(batch, seq, dim, generator=gen)}
    h = states["emb"] + 0.5 * torch.randn(batch, seq, dim, generator=gen)
    states["h0"] = h
    for t in range(1, loops + 1):
        core = h + torch.randn(batch, seq, dim, generator=gen) / t
        if mesh:
            states[f"core_out{t}"] = core
            core = 0.6 * core + 0.4 * states["emb"]
        states[f"h{t}"] = h = core
    states["out"] = torch.tanh(h)
    if mesh:
        for role in ("read", "write"):
            states[role] = torch.softmax(torch.randn(loops + 1, batch, seq, loops + 3, generator=gen), dim=-1)
    return states


def test_accumulator_matches_direct_per_sample_computation():
    batches = [synthetic_states(3, mesh=True, seed=0), synthetic_states(2, mesh=True, seed=1)]
    acc = ProbeAccumulator(linear_cka=True, spectrum_k=8, sigma_frac=0.5)
    for batch in batches:
        acc.update(batch)
    result = json.loads(json.dumps(acc.result()))

    samples = [
        {k: v[i] for k, v in b.items() if k not in ("read", "write")} for b in batches for i in range(len(b["emb"]))
    ]
    states = ["emb", "h0", "h1", "h2", "out"]
    names = [*states, "core_out1", "core_out2"]
    assert result["num_samples"] == 5 and result["seq_len"] == 12 and result["hidden_size"] == 6
    assert result["states"] == states and result["core_outputs"] == ["core_out1", "core_out2"]

    def check(summary, per_sample):
        values = np.array(per_sample)
        assert np.allclose(summary["mean"], values.mean(axis=0), atol=1e-12)
        assert np.allclose(summary["std"], values.std(axis=0), atol=1e-12)

    def relative_update(a, b):
        a, b = a.double().numpy(), b.double().numpy()
        return 2 * np.linalg.norm(b - a) / (np.linalg.norm(b) + np.linalg.norm(a))

    blocks = [("emb", "h0"), ("h0", "h1"), ("h1", "h2"), ("h2", "out")]
    assert result["update_magnitude"]["blocks"] == ["prelude", "core1", "core2", "coda"]
    check(result["update_magnitude"], [[relative_update(s[a], s[b]) for a, b in blocks] for s in samples])
    core_blocks = [("h0", "core_out1"), ("h1", "core_out2")]
    assert result["core_update_magnitude"]["blocks"] == ["core1", "core2"]
    check(result["core_update_magnitude"], [[relative_update(s[a], s[b]) for a, b in core_blocks] for s in samples])

    for key, kernel in (("cka", "rbf"), ("cka_linear", "linear")):
        assert result[key]["names"] == names and result[key]["kernel"] == kernel
        check(result[key], [[[cka(s[a], s[b], kernel, 0.5) for b in names] for a in names] for s in samples])
    assert result["cka"]["sigma_frac"] == 0.5 and result["cka_linear"]["sigma_frac"] is None

    assert result["spectrum"]["k"] == 8 and result["spectrum"]["names"] == names
    check(result["spectrum"], [[spectrum(s[n], 8).tolist() for n in names] for s in samples])
    check(result["effective_rank"], [[effective_rank(s[n]) for n in names] for s in samples])

    router = result["router"]
    assert (router["steps"], router["slots"]) == (3, 5)
    assert router["max_entropy"] == pytest.approx(math.log(5))
    for role in ("read", "write"):
        w = np.concatenate([b[role].double().numpy() for b in batches], axis=1)  # (steps, samples, seq, B)
        check(
            {"mean": router[role]["slot_weight_mean"], "std": router[role]["slot_weight_std"]},
            w.mean(axis=2).swapaxes(0, 1),
        )
        entropy = -(w * np.log(w)).sum(axis=-1).mean(axis=2).T
        check({"mean": router[role]["entropy_mean"], "std": router[role]["entropy_std"]}, entropy)


def test_accumulator_for_a_plain_model_has_no_mesh_sections():
    acc = ProbeAccumulator()
    acc.update(synthetic_states(2, loops=3, mesh=False, seed=0))
    result = acc.result()
    assert result["update_magnitude"]["blocks"] == ["prelude", "core1", "core2", "core3", "coda"]
    assert result["core_update_magnitude"] is None and result["router"] is None
    assert result["cka_linear"] is None and result["core_outputs"] == []
    assert result["cka"]["kernel"] == "rbf" and result["cka"]["sigma_frac"] == 0.8
    assert np.allclose(np.diag(result["cka"]["mean"]), 1.0) and np.allclose(np.diag(result["cka"]["std"]), 0.0)
    assert len(result["spectrum"]["mean"][0]) == 50  # 6 singular values padded with zeros to k = 50


def test_accumulator_rejects_inconsistent_input():
    with pytest.raises(MeshLMError, match="no probe samples"):
        ProbeAccumulator().result()
    with pytest.raises(MeshLMError, match="kernel"):
        ProbeAccumulator(kernel="poly")
    good = synthetic_states(2, mesh=True, seed=0)
    broken = {
        "h0..hK": {k: v for k, v in good.items() if k != "h1"},
        "unexpected": {**good, "h1_out": good["h1"]},
        "core outputs": {k: v for k, v in good.items() if k != "core_out2"},
        "both": {k: v for k, v in good.items() if k != "write"},
        r"\(3, 2, 12, 5\)": {**good, "read": good["read"][1:]},
        "expected": {**good, "h2": good["h2"][:, :5]},
    }
    for message, states in broken.items():
        with pytest.raises(MeshLMError, match=message):
            ProbeAccumulator().update(states)
    acc = ProbeAccumulator()
    acc.update(good)
    with pytest.raises(MeshLMError, match="layout"):
        acc.update(synthetic_states(2, mesh=False, seed=1))
    with pytest.raises(MeshLMError, match="share"):
        acc.update(synthetic_states(2, seq=10, mesh=True, seed=1))
