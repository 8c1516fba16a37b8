# Copied from meshlm.model.lm (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""MeshLMForCausalLM: embed -> prelude -> loop(core, scheme) -> coda -> final norm -> head.

The unique layers live in one list; the layout's schedule says which of them run at each
unrolled position (a shared core appears once per loop). Every *unrolled* layer has its own
KV-cache slot, so generation with a looped core caches each iteration separately
(``config.num_hidden_layers`` is the unrolled depth, which is what transformers' caches read).

Both cache kinds work: the default ``DynamicCache`` (keys grow by the new tokens) and
``StaticCache`` (``generate(..., cache_implementation="static")`` or one passed in), whose keys are
fixed ``max_cache_len`` buffers filled from position 0. The attention mask is built over the key
length the cache returns, and its causal part hides a static cache's unwritten slots; the past
length comes from the cache (a tensor for a static one), so the single-token decode step has fixed
shapes and compiles as one graph (``generate`` compiles it with CUDA graphs on GPU).

Activation checkpointing works per *unrolled* layer, so every iteration of a shared core is
its own recompute region (:meth:`MeshLMPreTrainedModel.set_activation_checkpointing`, or HF's
``gradient_checkpointing_enable``): ``full`` recomputes every unrolled layer in backward,
``selective`` every other one (unrolled positions 0, 2, 4, ...), keeping about half of full's
saving for about half its recompute. The state-passing scheme, embedding and head are never
recomputed.

``num_loops=k`` runs the shared core k times instead of the layout's K (``num_loops=K`` is the default
forward); the KV cache then has one slot per unrolled layer of that depth. ``backprop_loops=N`` runs
the first k - N iterations under ``no_grad`` (truncated backprop through depth). Both are Python ints,
so a compiled model recompiles once per distinct value.
"""

from __future__ import annotations

import contextlib
import math
import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_meshlm import Layout, MeshLMConfig, parse_scheme
from .meshlm_errors import MeshLMError
from .meshlm_layers import Layer, Rotary
from .meshlm_loss import linear_cross_entropy
from .meshlm_mesh import MeshScheme
from .meshlm_schemes import AdditiveScheme, DiagonalScheme, DynamicScheme, LinearScheme, StateScheme, StaticScheme

# transformers renamed the cache argument and output field from `past_key_values` to `cache` (5.2x)
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

try:  # transformers >= 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init


# activation checkpointing modes: recompute every N-th unrolled layer (0 = none)
CHECKPOINT_MODES = {"none": 0, "full": 1, "selective": 2}


def build_scheme(config: MeshLMConfig) -> StateScheme:
    """The state-passing module named by ``config.scheme``."""
    kind, terms = parse_scheme(config.scheme)
    loops = config.parsed_layout.loops
    builders = {
        "base": lambda: StateScheme(),
        "additive": lambda: AdditiveScheme(terms),
        "static": lambda: StaticScheme(loops),
        "dynamic": lambda: DynamicScheme(loops, config.hidden_size),
        "mesh": lambda: MeshScheme(config),
        "linear": lambda: LinearScheme(config.hidden_size),
        "diagonal": lambda: DiagonalScheme(config.hidden_size),
    }
    return builders[kind]()


class MeshLMPreTrainedModel(PreTrainedModel):
    """Weight init and HF plumbing shared by the meshlm model classes."""

    config_class = MeshLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["Layer"]
    _supports_sdpa = True
    # the decode step traces as one graph over a StaticCache (fixed-shape masks, no data-dependent branches)
    _can_compile_fullgraph = True
    supports_gradient_checkpointing = True

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained``, then ship the modelling code (:func:`meshlm.hub.export_remote_code`).

        The folder then also loads with ``trust_remote_code=True`` and no ``import meshlm``.
        """
        super().save_pretrained(save_directory, **kwargs)
        try:
            from meshlm.hub import export_remote_code
        except ImportError:  # this file's remote-code copy without meshlm: transformers copied the files itself
            return
        dist = torch.distributed
        rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if kwargs.get("is_main_process", True) and rank0:
            export_remote_code(save_directory)

    def set_activation_checkpointing(self, mode: str = "full") -> None:
        """Recompute unrolled layers in backward instead of keeping their activations (see module doc).

        ``mode`` is one of :data:`CHECKPOINT_MODES`: ``none``, ``full`` (every unrolled layer) or
        ``selective`` (every other unrolled layer). Applies in training mode only, without a KV cache.
        """
        if mode not in CHECKPOINT_MODES:
            raise MeshLMError(f"activation checkpointing must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
        every = CHECKPOINT_MODES[mode]
        self._set_gradient_checkpointing(every > 0, partial(checkpoint, use_reentrant=False), max(every, 1))

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ) -> None:
        """HF's switch behind ``gradient_checkpointing_enable(every_n_layers=N)``, counted over unrolled layers."""
        backbone = self.base_model
        backbone.gradient_checkpointing = enable
        backbone.checkpoint_every = every_n_layers
        backbone._gradient_checkpointing_func = gradient_checkpointing_func

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range); output projections scaled by 1/sqrt(2 * unrolled layers).

        Routers, gates and static coefficients provide their own values (``initial_values``).
        """
        cfg = self.config
        std = cfg.initializer_range
        if hasattr(module, "initial_values"):
            for name, value in module.initial_values(cfg).items():
                param = getattr(module, name)
                init.copy_(param, value.to(device=param.device, dtype=param.dtype))
        elif isinstance(module, nn.Linear):
            scale = cfg.depth_init_scale() if getattr(module, "is_residual_out", False) else 1.0
            init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _cache_extent(cache: Cache | None, q_len: int) -> tuple[int | torch.Tensor, int]:
    """(tokens already cached, key length the attention sees) for a forward of ``q_len`` new tokens.

    A dynamic cache returns past + new keys; a static cache (``StaticCache``) always returns its
    ``max_cache_len`` buffers and counts what it holds in a 0-d tensor, so the past length stays a
    tensor here and a compiled decode step has no data-dependent Python branch.
    """
    if cache is None:
        return 0, q_len
    return cache.get_seq_length(), cache.get_mask_sizes(q_len, 0)[0]


def _check_cache_depth(cache: Cache | None, depth: int) -> None:
    """MeshLMError if a fixed-size cache was built for another unrolled depth than this forward's."""
    if cache is None or getattr(cache, "layer_class_to_replicate", None) is not None:
        return  # no cache, or one that grows a slot per layer it sees
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) != depth:
        raise MeshLMError(
            f"the cache has {len(layers)} layer slots but this forward pass runs {depth} unrolled layers; build "
            "the cache for the same num_loops (generate(..., num_loops=k) does)"
        )


def _frozen_loops(loops: int, backprop_loops: int | None) -> int:
    """How many leading loop iterations run without gradient when only the last ``backprop_loops`` get one."""
    if backprop_loops is None:
        return 0
    if not isinstance(backprop_loops, int) or backprop_loops < 1:
        raise MeshLMError(f"backprop_loops must be an integer >= 1, got {backprop_loops!r}")
    return max(0, loops - backprop_loops)


def _padding_mask(attention_mask: torch.Tensor, kv_len: int) -> torch.Tensor:
    """The 2D padding mask (1 = real token) over key positions 0..kv_len-1; positions past its end count as empty."""
    if attention_mask.ndim != 2 or attention_mask.shape[-1] > kv_len:
        raise MeshLMError(
            f"attention_mask must be 2D (batch, keys) with at most {kv_len} key positions (cached + new tokens, "
            f"or a static cache's max_cache_len); got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask.shape[-1] == kv_len:
        return attention_mask
    return F.pad(attention_mask, (0, kv_len - attention_mask.shape[-1]))


def _position_ids(
    attention_mask: torch.Tensor | None, past_len: int | torch.Tensor, q_len: int, batch: int, device
) -> torch.Tensor:
    """Positions of the new tokens: their index among each row's real tokens (left padding skipped)."""
    new = past_len + torch.arange(q_len, device=device)
    if attention_mask is None:
        return new.unsqueeze(0).expand(batch, -1)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)[:, new]


def _attention_mask(
    attention_mask: torch.Tensor | None, past_len: int | torch.Tensor, q_len: int, kv_len: int, device
) -> torch.Tensor | None:
    """Boolean (batch|1, 1, q, kv) mask: causal, padding keys hidden; None means plain causal.

    Key slots after the query (a static cache's unwritten tail included) are hidden by the causal
    part, so the same mask serves dynamic and static caches.
    """
    if attention_mask is None and kv_len == q_len:
        return None
    q_pos = (past_len + torch.arange(q_len, device=device))[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if attention_mask is not None:
        keys = attention_mask[:, None, None, :].bool()
        # a query always sees itself, so left-padding rows never become all -inf (NaN)
        mask = (mask & keys) | (k_pos == q_pos)[None, None]
    return mask


class MeshLMModel(MeshLMPreTrainedModel):
    """The backbone: returns the final hidden state (after the final LayerNorm)."""

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__(config)
        layout = config.parsed_layout
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(layout.unique_layers))
        self.scheme = build_scheme(config)
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary = Rotary(config)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        self.gradient_checkpointing, self.checkpoint_every = False, 1  # set_activation_checkpointing
        self.post_init()

    def _check_split(self, split: Layout) -> None:
        own = self.config.parsed_layout
        if split != own and not (own.is_vanilla and split.unrolled_layers == own.unrolled_layers):
            raise MeshLMError(
                f"cannot view layout {self.config.layout!r} as {split}: only a vanilla model can be split, "
                f"into a layout of the same unrolled depth ({own.unrolled_layers} layers)"
            )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        record: dict | None = None,
        split: Layout | None = None,
        num_loops: int | None = None,
        backprop_loops: int | None = None,
    ) -> torch.Tensor:
        """Final hidden states (batch, seq, D).

        ``num_loops`` runs the shared core that many times (default: the layout's K); steps past K use
        the last step's scheme parameters. ``backprop_loops`` keeps gradient only through the last N
        loop iterations (the earlier ones run under ``no_grad``).

        ``record``, if given, receives the states ``emb``, ``h0``..``hK``, ``core_out1``..``core_outK``
        (raw core outputs) and ``out`` (before the final norm), plus the scheme's internals.
        ``split`` views a vanilla model as an unshared-core layout of equal depth (base scheme,
        so outputs are unchanged) to expose block boundaries for probing.
        """
        batch, q_len = input_ids.shape
        past_len, kv_len = _cache_extent(past_key_values, q_len)
        if kv_len > self.config.max_position_embeddings:
            raise MeshLMError(
                f"{kv_len} key positions (cached + new tokens, or a static cache's max_cache_len) exceed "
                f"max_position_embeddings {self.config.max_position_embeddings}"
            )
        if attention_mask is not None:
            attention_mask = _padding_mask(attention_mask, kv_len)
        if position_ids is None:
            position_ids = _position_ids(attention_mask, past_len, q_len, batch, input_ids.device)
        rope = self.rotary(position_ids)
        mask = _attention_mask(attention_mask, past_len, q_len, kv_len, input_ids.device)
        if split == self.config.parsed_layout:
            split = None  # viewing a model as its own layout changes nothing
        if split is not None:
            self._check_split(split)
        layout = split or self.config.parsed_layout
        if num_loops is not None:
            layout = layout.with_loops(num_loops)
        _check_cache_depth(past_key_values, layout.unrolled_layers)
        prelude, loops, coda = layout.schedule()
        frozen = _frozen_loops(len(loops), backprop_loops)
        slot = 0
        recompute = self.gradient_checkpointing and self.training and past_key_values is None

        def run(h: torch.Tensor, indices) -> torch.Tensor:
            nonlocal slot
            for i in indices:
                layer = self.layers[i]
                if recompute and slot % self.checkpoint_every == 0:
                    h = self._gradient_checkpointing_func(layer.__call__, h, rope, mask, None, slot)
                else:
                    h = layer(h, rope, mask, past_key_values, slot)
                slot += 1
            return h

        h_emb = self.embed(input_ids) * self.embed_scale
        scheme = self.scheme if split is None else StateScheme()
        h, carry = scheme.begin(h_emb, run(h_emb, prelude), record)
        if record is not None:
            record.update(emb=h_emb, h0=h)
        for t, core in enumerate(loops):
            with torch.no_grad() if t < frozen else contextlib.nullcontext():
                h_core = run(scheme.enter(t, h, carry), core)
                h, carry = scheme.step(t, h, h_core, carry, record)
            if record is not None:
                record[f"core_out{t + 1}"] = h_core
                record[f"h{t + 1}"] = h
        h = run(h, coda)
        if record is not None:
            record["out"] = h
        return self.final_norm(h)


class MeshLMForCausalLM(MeshLMPreTrainedModel, GenerationMixin):
    """Causal LM with an untied output head; the HF public API (``generate``, ``from_pretrained``).

    ``generate`` runs with the dynamic cache (default) or a static one (``cache_implementation="static"``),
    with identical greedy tokens; with a static cache on GPU it compiles the decode step (CUDA graphs).
    """

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__(config)
        self.model = MeshLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _new_cache(self, num_loops: int | None = None) -> Cache:
        """A dynamic cache with one slot per unrolled layer at ``num_loops`` (default: the layout's K)."""
        with self._cache_depth(num_loops):
            try:
                return DynamicCache(config=self.config)
            except TypeError:  # pragma: no cover - transformers without config-aware caches
                return DynamicCache()

    @contextlib.contextmanager
    def _cache_depth(self, num_loops: int | None):
        """``config.num_hidden_layers`` (what caches read for their slot count) at ``num_loops``, for a moment."""
        own = self.config.num_hidden_layers
        self.config.num_hidden_layers = self.config.unrolled_layers_at(num_loops)
        try:
            yield
        finally:
            self.config.num_hidden_layers = own

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        """transformers' cache setup for ``generate``, sized for the ``num_loops`` passed to ``generate``."""
        with self._cache_depth(model_kwargs.get("num_loops")):
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def create_masks_for_generate(
        self,
        config: MeshLMConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor | None:
        """The 2D padding mask right-padded to the static cache's length, for ``generate`` to pass to ``forward``.

        ``generate`` calls this for compilable (static) caches instead of transformers' own 4D mask
        builder; the model builds its 4D mask itself, and a (batch, max_cache_len) mask keeps the
        compiled decode step's input shapes fixed. ``cache`` is transformers 5.2x's name of
        ``past_key_values``.
        """
        cache = cache if cache is not None else past_key_values
        if attention_mask is None or cache is None:
            return attention_mask
        return _padding_mask(attention_mask, cache.get_mask_sizes(inputs_embeds.shape[1], 0)[0])

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        cache: Cache | None = None,
        targets: torch.LongTensor | None = None,
        num_loops: int | None = None,
        backprop_loops: int | None = None,
        record: dict | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (and the mean next-token loss when ``labels`` or ``targets`` are given; -100 is ignored).

        ``labels`` are the input ids themselves, shifted inside as in HF models. ``targets`` are
        already aligned with ``input_ids`` (token t+1 at position t, as the training loop feeds
        them), so every position is scored; with ``targets`` the loss comes from the fused
        head + cross-entropy (:mod:`meshlm.model.loss`) and ``logits`` is None. ``cache`` is the
        newer transformers name of ``past_key_values``; either works. ``record`` is the backbone's
        (:meth:`MeshLMModel.forward`): states and scheme internals of this pass. So are ``num_loops``
        and ``backprop_loops`` (``generate(..., num_loops=k)`` passes ``num_loops`` on every step and
        sizes its cache for that depth).
        """
        past_key_values = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and not self.training:
            past_key_values = self._new_cache(num_loops)
        if not use_cache:
            past_key_values = None
        h = self.model(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            record,
            num_loops=num_loops,
            backprop_loops=backprop_loops,
        )
        if targets is not None and labels is None:
            # training path: the loss without materialising (tokens x vocab) logits for backward
            loss = linear_cross_entropy(h, self.lm_head.weight, targets)
            return CausalLMOutputWithPast(loss=loss, logits=None, **{_CACHE_FIELD: past_key_values})
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: past_key_values})
