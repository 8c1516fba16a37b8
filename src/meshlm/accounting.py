"""Parameter and FLOP counts per layout and scheme, from the config alone (spec section 8).

- embedding parameters: input embedding + output head (untied);
- non-embedding: every unique layer's weights and biases (a shared core once), the final
  LayerNorm, and the scheme's own parameters (MeSH routers, static/dynamic coefficients);
- training FLOPs per token: ``6 * (N_unrolled + V * d) + 12 * L_unrolled * d * T`` (PaLM
  appendix B / nanoGPT convention) where ``N_unrolled`` counts each layer once per time it runs.
  Scheme work is added as the spec prescribes for MeSH: ``2 * 2 * (K + 1) * d * B`` for the
  routers plus ``4 * (K + 1) * d * B`` for the buffer's element-wise write and read; dynamic
  gates add ``2 * 4 * d * K``. These are below 0.1% of the total at any paper size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from meshlm.config import MeshLMConfig


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
    return 0, 0


def _scheme_flops(config: MeshLMConfig) -> int:
    kind = config.scheme_kind
    loops, d = config.parsed_layout.loops, config.hidden_size
    if kind == "mesh":
        b = config.num_buffer_slots
        return 2 * 2 * (loops + 1) * d * b + 4 * (loops + 1) * d * b
    if kind == "dynamic":
        return 2 * 4 * d * loops
    return 0


def count(config: MeshLMConfig, seq_len: int | None = None) -> Counts:
    """Accounting of ``config`` at sequence length ``seq_len`` (default: max_position_embeddings)."""
    layout = config.parsed_layout
    d, v = config.hidden_size, config.vocab_size
    t = seq_len or config.max_position_embeddings
    per_layer = layer_parameters(config)
    scheme, router = scheme_parameters(config)
    non_embedding = layout.unique_layers * per_layer + 2 * d + scheme
    embedding = 2 * v * d
    n_unrolled = layout.unrolled_layers * per_layer
    flops = 6 * (n_unrolled + v * d) + 12 * layout.unrolled_layers * d * t + _scheme_flops(config)
    return Counts(
        total=non_embedding + embedding,
        embedding=embedding,
        non_embedding=non_embedding,
        router=router,
        scheme_params=scheme,
        unrolled_layers=layout.unrolled_layers,
        flops_per_token=flops,
        seq_len=t,
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters of an instantiated model, split like :func:`count` (shared weights counted once)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()))
    router = sum(p.numel() for n, p in model.named_parameters() if ".scheme.read." in n or ".scheme.write." in n)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding, "router": router}
