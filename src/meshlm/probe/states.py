"""The state matrices of the paper's diagnostics (spec section 5), read off one forward pass.

:func:`collect_states` runs the backbone once with its ``record`` hook and returns, per
sample, ``emb`` (scaled embedding), ``h0`` (state entering the loop), ``h1`` .. ``hK`` (state
after each loop iteration, as the scheme composes it: for MeSH the read from the buffer),
``out`` (coda output, before the final LayerNorm) and, for MeSH, the router weights. The
logits of the model are untouched: nothing is patched, the hook only keeps references.

A vanilla model has no loop; it is viewed as an unshared-core layout of the same depth (same
layers in the same order, so the same output), by default :func:`default_split`: prelude
``P = round(N / 6)``, two equal cores splitting the middle, coda ``N - P - 2C`` (``P`` or
``P + 1``). For Pythia depths this is the twin of the paper's recursive models:
24 -> 4+8+8+4 (4+8R2+4), 16 -> 3+5+5+3 (3+5R2+3), 12 -> 2+4+4+2 (2+4R2+2), 6 -> 1+2+2+1.
"""

from __future__ import annotations

import contextlib

import torch

from meshlm.config import Layout, parse_layout
from meshlm.errors import MeshLMError
from meshlm.model import MeshLMForCausalLM, MeshLMModel

ROUTER_KEYS = ("read", "write")


def default_split(num_layers: int) -> Layout:
    """The unshared layout a vanilla model of ``num_layers`` layers is probed as (see module doc)."""
    if num_layers < 1:
        raise MeshLMError(f"a model needs at least one layer to be split, got {num_layers}.")
    if num_layers == 1:
        return Layout(0, 1, 1, 0, shared=False)
    prelude = round(num_layers / 6)
    core = (num_layers - 2 * prelude) // 2
    return Layout(prelude, core, 2, num_layers - prelude - 2 * core, shared=False)


def backbone_of(model: MeshLMForCausalLM | MeshLMModel) -> MeshLMModel:
    """The :class:`MeshLMModel` of a causal LM (or the backbone itself); MeshLMError for other models."""
    backbone = model.model if isinstance(model, MeshLMForCausalLM) else model
    if not isinstance(backbone, MeshLMModel):
        raise MeshLMError(
            f"the probes read the states of a meshlm model, got {type(model).__name__}; "
            "convert it first (meshlm.convert) or train one with meshlm train."
        )
    return backbone


def probe_layout(own: Layout, split: Layout | str | None = None) -> Layout:
    """The layout whose block boundaries the probe reports for a model of layout ``own``.

    A recursive model can only be probed as its own layout; a vanilla model takes ``split``
    (a :class:`Layout` or layout string of the same depth with at least one core, a shared
    core ``P+CRK+D`` meaning the same boundaries) or :func:`default_split`.
    """
    wanted = parse_layout(split) if isinstance(split, str) else split
    if not own.is_vanilla:
        if wanted not in (None, own):
            raise MeshLMError(
                f"--split only applies to vanilla models; this model is recursive ({own}) and is probed as "
                "its own layout, so drop --split."
            )
        return own
    if wanted is None:
        return default_split(own.unrolled_layers)
    if wanted.is_vanilla or wanted.unrolled_layers != own.unrolled_layers:
        raise MeshLMError(
            f"--split {wanted} does not fit the vanilla model of {own.unrolled_layers} layers; give prelude, "
            f"equal cores and coda adding up to {own.unrolled_layers}, e.g. {default_split(own.unrolled_layers)}."
        )
    return Layout(wanted.prelude, wanted.core, wanted.loops, wanted.coda, shared=False)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; nothing elsewhere (CPU runs in the weights' dtype)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def collect_states(
    model: MeshLMForCausalLM | MeshLMModel,
    input_ids: torch.Tensor,
    split: Layout | str | None = None,
    *,
    core_outputs: bool = False,
    autocast: bool = True,
) -> dict[str, torch.Tensor]:
    """States of one forward pass over ``input_ids`` (batch, seq), float32 on the model's device.

    Keys: ``emb``, ``h0`` .. ``hK``, ``out``, each (batch, seq, dim); with ``core_outputs``
    also ``core_out1`` .. ``core_outK``, the raw core outputs before the scheme combines them;
    for MeSH ``read`` and ``write``, (K+1, batch, seq, B) slot weights, step 0 being the
    transitional cycle. ``split`` is for vanilla models (see :func:`probe_layout`). Runs under
    ``torch.inference_mode`` (the tensors are inference tensors) with bf16 autocast on CUDA
    when ``autocast``; the model's mode (train/eval) is left as it is.
    """
    backbone = backbone_of(model)
    own = backbone.config.parsed_layout
    layout = probe_layout(own, split)
    if input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise MeshLMError(f"input_ids must be a (batch, seq) tensor of token ids, got shape {tuple(input_ids.shape)}.")
    vocab = backbone.config.vocab_size
    if bool((input_ids < 0).any()) or bool((input_ids >= vocab).any()):
        raise MeshLMError(
            f"input ids must lie in 0..{vocab - 1} (the model's vocabulary); the data was tokenized with a "
            "tokenizer that does not match this model."
        )
    device = next(backbone.parameters()).device
    record: dict = {}
    with torch.inference_mode(), _autocast(device, autocast):
        # a recursive model runs without a split: passing one would swap its scheme for plain recursion
        backbone(input_ids.to(device), record=record, split=layout if own.is_vanilla else None)
    names = ["emb", *(f"h{t}" for t in range(layout.loops + 1)), "out"]
    if core_outputs:
        names += [f"core_out{t}" for t in range(1, layout.loops + 1)]
    states = {name: record[name].float() for name in names}
    for key in ROUTER_KEYS:
        if key in record:
            states[key] = torch.stack(record[key]).float()
    return states
