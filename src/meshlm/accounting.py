"""Parameter and FLOP counts per layout and scheme, from the config alone (spec section 8).

- embedding parameters: input embedding + output head (untied);
- non-embedding: every unique layer's weights and biases (a shared core once), the final
  LayerNorm, and the scheme's own parameters (MeSH routers, static/dynamic coefficients);
- training FLOPs per token: ``6 * (N_unrolled + V * d) + 12 * L_unrolled * d * T`` (PaLM
  appendix B / nanoGPT convention) where ``N_unrolled`` counts each layer once per time it runs.
  Scheme work is added as the spec prescribes for MeSH: ``2 * 2 * (K + 1) * d * B`` for the
  routers plus ``4 * (K + 1) * d * B`` for the buffer's element-wise write and read; dynamic
  gates add ``2 * 4 * d * K``. These are below 0.1% of the total at any paper size. The
  input-injection schemes' parameters (``linear``: the 2d x d adapter; ``diagonal``: 2d
  channels) run once per loop, so they count in ``N_unrolled`` K times, like a core layer.
- a step at another loop count, or with truncated backprop through depth, and the mean over a
  random-depth distribution: :func:`flops_per_token`, :func:`expected_flops_per_token`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torch import nn

from meshlm.config import INPUT_SCHEMES, MeshLMConfig


@dataclass(frozen=True)
class Counts:
    """Parameter and compute accounting of one model configuration."""

    total: int
    embedding: int
    non_embedding: int
    router: int
    scheme_params: int
    unrolled_layers: int
    flops_per_token: int
    seq_len: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def layer_parameters(config: MeshLMConfig) -> int:
    """Weights and biases of one GPT-NeoX layer (``12 d^2 + 13 d`` when the MLP is 4d wide)."""
    d, i = config.hidden_size, config.intermediate_size
    norms = 2 * 2 * d
    attention = (d * 3 * d + 3 * d) + (d * d + d)
    mlp = (d * i + i) + (i * d + d)
    return norms + attention + mlp


def scheme_parameters(config: MeshLMConfig) -> tuple[int, int]:
    """(all scheme parameters, of which MeSH router parameters) for the config's scheme."""
    kind = config.scheme_kind
    loops, d = config.parsed_layout.loops, config.hidden_size
    if kind == "mesh":
        b = config.num_buffer_slots
        routers = (loops + 1) * 2 * (d * b + b)
        return routers, routers
    if kind == "static":
        return 4 * loops, 0
    if kind == "dynamic":
        return loops * (4 * d + 4), 0
    if kind == "linear":
        return 2 * d * d, 0
    if kind == "diagonal":
        return 2 * d, 0
    return 0, 0


def _injection_parameters(config: MeshLMConfig) -> int:
    """Parameters an input-injection scheme applies once per loop (they join the unrolled graph)."""
    return scheme_parameters(config)[0] if config.scheme_kind in INPUT_SCHEMES else 0


def _scheme_flops(config: MeshLMConfig, loops: int) -> int:
    """The spec's extra scheme work per token for a pass of ``loops`` iterations (MeSH, dynamic gates)."""
    kind, d = config.scheme_kind, config.hidden_size
    if kind == "mesh":
        b = config.num_buffer_slots
        return 2 * 2 * (loops + 1) * d * b + 4 * (loops + 1) * d * b
    if kind == "dynamic":
        return 2 * 4 * d * loops
    return 0


def flops_per_token(
    config: MeshLMConfig,
    seq_len: int,
    loops: int | None = None,
    backprop_loops: int | None = None,
    scheme_work: bool = True,
) -> int:
    """Training FLOPs per token of one step running the core ``loops`` times (default K).

    ``scheme_work=False`` leaves out what the scheme adds (routers, gates, injection), leaving the
    backbone's layers and head: what a matched-compute comparison holds equal across schemes.

    With ``backprop_loops`` N only the last N iterations are differentiated: the other ``loops - N``
    cost their forward third (``2 N_core + 4 L_core d T``) instead of the full ``6 N_core + 12 L_core d T``.
    Prelude, coda and head always count forward and backward.
    """
    layout = config.parsed_layout.with_loops(loops) if loops is not None else config.parsed_layout
    d, v, t, k = config.hidden_size, config.vocab_size, seq_len, layout.loops
    per_layer = layer_parameters(config)
    outer_layers = layout.prelude + layout.coda
    outer = 6 * (outer_layers * per_layer + v * d) + 12 * outer_layers * d * t
    core_params = layout.core * per_layer + (_injection_parameters(config) if scheme_work else 0)
    with_grad = k if backprop_loops is None else min(k, backprop_loops)
    per_loop = 6 * core_params + 12 * layout.core * d * t
    per_frozen_loop = 2 * core_params + 4 * layout.core * d * t
    extra = _scheme_flops(config, k) if scheme_work else 0
    return outer + with_grad * per_loop + (k - with_grad) * per_frozen_loop + extra


def expected_flops_per_token(
    config: MeshLMConfig,
    seq_len: int,
    loops: Mapping[int, float],
    backprop_loops: int | None = None,
    scheme_work: bool = True,
) -> float:
    """Mean of :func:`flops_per_token` over a loop-count distribution ``{loops: probability}`` (random depth)."""
    return sum(p * flops_per_token(config, seq_len, k, backprop_loops, scheme_work) for k, p in loops.items())


def count(config: MeshLMConfig, seq_len: int | None = None) -> Counts:
    """Accounting of ``config`` at sequence length ``seq_len`` (default: max_position_embeddings)."""
    layout = config.parsed_layout
    d, v = config.hidden_size, config.vocab_size
    t = seq_len or config.max_position_embeddings
    scheme, router = scheme_parameters(config)
    non_embedding = layout.unique_layers * layer_parameters(config) + 2 * d + scheme
    embedding = 2 * v * d
    return Counts(
        total=non_embedding + embedding,
        embedding=embedding,
        non_embedding=non_embedding,
        router=router,
        scheme_params=scheme,
        unrolled_layers=layout.unrolled_layers,
        flops_per_token=flops_per_token(config, t),
        seq_len=t,
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters of an instantiated model, split like :func:`count` (shared weights counted once)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()))
    router = sum(p.numel() for n, p in model.named_parameters() if ".scheme.read." in n or ".scheme.write." in n)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding, "router": router}
