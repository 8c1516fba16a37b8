"""GPT-NeoX / Pythia weights <-> meshlm.

``from_gpt_neox`` turns a transformers ``GPTNeoXForCausalLM`` into a meshlm model. With the
default vanilla layout the logits are identical (``scale_embeddings=False``, as Pythia has no
embedding scale). A recursive layout ``P+CRK+D`` can be initialised from it too; the layer
mapping (``core_init``) is:

- prelude layer i  <- source layer i (the first P layers)
- coda layer j     <- source layer N - D + j (the last D layers)
- core layer j     <- ``"first"``: source layer P + j (the first C middle layers), or
  ``"average"``: the mean of source layers P + t*C + j over t = 0..K-1 (needs N = P + K*C + D,
  the unrolled depth, and averages every weight and bias; cf. Bae et al. 2024, "Relaxed
  Recursive Transformers").
- an unshared-core layout ``P+C+C+D`` takes source layers in order (needs N = P + K*C + D).

Scheme parameters (routers, gates, the linear adapter, the diagonal injection) keep their fresh
init; with ``scheme="linear"`` and its identity init the converted model equals ``scheme="base"``.
``to_gpt_neox`` is the inverse for vanilla meshlm models without embedding scale (used for the HF
parity test and baselines).
"""

from __future__ import annotations

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from meshlm.config import MeshLMConfig
from meshlm.errors import MeshLMError
from meshlm.model import MeshLMForCausalLM

# meshlm layer parameter -> GPT-NeoX layer parameter
_LAYER_KEYS = {
    "ln1": "input_layernorm",
    "ln2": "post_attention_layernorm",
    "attn.qkv": "attention.query_key_value",
    "attn.proj": "attention.dense",
    "mlp.fc": "mlp.dense_h_to_4h",
    "mlp.proj": "mlp.dense_4h_to_h",
}
CORE_INITS = ("first", "average")


def _rope(cfg: GPTNeoXConfig) -> tuple[float, float]:
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rotary_emb_base", 10000.0))
    pct = params.get("partial_rotary_factor", getattr(cfg, "rotary_pct", 0.25))
    return float(theta), float(pct)


def _layer_state(source: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    out = {}
    for ours, theirs in _LAYER_KEYS.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = source[f"gpt_neox.layers.{index}.{theirs}.{kind}"]
    return out


def _source_indices(n_src: int, config: MeshLMConfig, core_init: str) -> list[list[int]]:
    """For each unique meshlm layer, the source layers whose mean it takes."""
    lay = config.parsed_layout
    unrolled_match = n_src == lay.unrolled_layers
    if lay.is_vanilla or not lay.shared:
        if not unrolled_match:
            raise MeshLMError(
                f"layout {config.layout!r} has {lay.unrolled_layers} unrolled layers but the source model has {n_src}"
            )
        return [[i] for i in range(n_src)]
    if core_init not in CORE_INITS:
        raise MeshLMError(f"core_init must be one of {CORE_INITS}, got {core_init!r}")
    if core_init == "average" and not unrolled_match:
        raise MeshLMError(
            f"core_init 'average' needs a source of {lay.unrolled_layers} layers (the unrolled depth of "
            f"{config.layout!r}), got {n_src}"
        )
    if lay.prelude + lay.core + lay.coda > n_src:
        raise MeshLMError(f"layout {config.layout!r} needs more layers than the source model's {n_src}")
    pre = [[i] for i in range(lay.prelude)]
    if core_init == "first":
        core = [[lay.prelude + j] for j in range(lay.core)]
    else:
        core = [[lay.prelude + t * lay.core + j for t in range(lay.loops)] for j in range(lay.core)]
    coda = [[n_src - lay.coda + j] for j in range(lay.coda)]
    return pre + core + coda


def from_gpt_neox(
    hf_model: GPTNeoXForCausalLM,
    layout: str | None = None,
    scheme: str = "base",
    core_init: str = "first",
    **overrides,
) -> MeshLMForCausalLM:
    """A meshlm model with the weights of a GPT-NeoX model (see the module docstring for the mapping)."""
    cfg = hf_model.config
    if getattr(cfg, "hidden_act", "gelu") != "gelu":
        raise MeshLMError(f"only GELU GPT-NeoX models convert, this one uses {cfg.hidden_act!r}")
    if not getattr(cfg, "attention_bias", True):
        raise MeshLMError("only GPT-NeoX models with attention biases convert")
    theta, pct = _rope(cfg)
    settings = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        layout=layout or str(cfg.num_hidden_layers),
        scheme=scheme,
        rotary_pct=pct,
        rope_theta=theta,
        layer_norm_eps=cfg.layer_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        use_parallel_residual=cfg.use_parallel_residual,
        scale_embeddings=False,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
    )
    settings.update(overrides)
    config = MeshLMConfig(**settings)
    model = MeshLMForCausalLM(config)
    source = {k: v.detach() for k, v in hf_model.state_dict().items()}
    state = {
        "model.embed.weight": hf_model.get_input_embeddings().weight.detach(),
        "lm_head.weight": hf_model.get_output_embeddings().weight.detach(),
        "model.final_norm.weight": source["gpt_neox.final_layer_norm.weight"],
        "model.final_norm.bias": source["gpt_neox.final_layer_norm.bias"],
    }
    for ours, group in enumerate(_source_indices(cfg.num_hidden_layers, config, core_init)):
        layers = [_layer_state(source, i) for i in group]
        for key in layers[0]:
            state[f"model.layers.{ours}.{key}"] = torch.stack([sd[key] for sd in layers]).mean(0)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("model.scheme.")]
    if missing or unexpected:  # pragma: no cover - a bug in the key mapping, not a user error
        raise RuntimeError(f"conversion key mismatch: missing {missing}, unexpected {unexpected}")
    return model


def to_gpt_neox(model: MeshLMForCausalLM) -> GPTNeoXForCausalLM:
    """The transformers ``GPTNeoXForCausalLM`` equal to a vanilla meshlm model without embedding scale."""
    cfg = model.config
    if not cfg.parsed_layout.is_vanilla:
        raise MeshLMError(
            f"layout {cfg.layout!r} is not vanilla (GPT-NeoX runs each of its layers once, with no state-passing "
            "scheme); only vanilla-layout models have a GPT-NeoX twin"
        )
    if cfg.scale_embeddings:
        raise MeshLMError(
            "the model scales its embeddings by sqrt(hidden size) (scale_embeddings=True), which GPT-NeoX does not; "
            "only models with scale_embeddings=False have a GPT-NeoX twin"
        )
    neox_cfg = GPTNeoXConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        rotary_pct=cfg.rotary_pct,
        rotary_emb_base=cfg.rope_theta,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": cfg.rope_theta,
            "partial_rotary_factor": cfg.rotary_pct,
        },
        layer_norm_eps=cfg.layer_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        use_parallel_residual=cfg.use_parallel_residual,
        tie_word_embeddings=False,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    hf = GPTNeoXForCausalLM(neox_cfg)
    ours = model.state_dict()
    state = {
        "gpt_neox.final_layer_norm.weight": ours["model.final_norm.weight"],
        "gpt_neox.final_layer_norm.bias": ours["model.final_norm.bias"],
    }
    for i in range(cfg.num_hidden_layers):
        for mine, theirs in _LAYER_KEYS.items():
            for kind in ("weight", "bias"):
                state[f"gpt_neox.layers.{i}.{theirs}.{kind}"] = ours[f"model.layers.{i}.{mine}.{kind}"]
    hf.load_state_dict(state, strict=False)
    hf.get_input_embeddings().weight.data.copy_(ours["model.embed.weight"])
    hf.get_output_embeddings().weight.data.copy_(ours["lm_head.weight"])
    return hf
