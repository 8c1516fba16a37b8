# Copied from meshlm.config (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""Model configuration: :class:`MeshLMConfig`, Pythia presets, layout and scheme parsing.

A *layout* says which layers run in which order; a *scheme* says how the state is
carried between loop iterations. Both are plain strings in the config so that a
saved model describes itself, and both are parsed (and validated) here, once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from transformers import PretrainedConfig

from .meshlm_errors import MeshLMError

LAYOUT_FORMS = (
    "accepted layout forms: 'N' (vanilla, e.g. '24'), 'P+CRK+D' (prelude, shared core of C layers "
    "looped K>=1 times, coda, e.g. '4+8R2+4' or '0+4R3+0'), 'P+C+C+...+D' (prelude, unshared cores "
    "of equal size, coda, e.g. '4+8+8+4')"
)

ADDITIVE_TERMS = ("residual", "anchor", "anchor*")
NAMED_SCHEMES = ("base", "static", "dynamic", "mesh", "linear", "diagonal")
# schemes that transform the core's input and pass its output on unchanged: h(t+1) = f_core(x(t))
INPUT_SCHEMES = ("linear", "diagonal")
SCHEME_FORMS = (
    "accepted schemes: 'base', 'residual', 'anchor', 'anchor*', a '+'-joined set of residual/anchor/anchor* "
    "(e.g. 'residual+anchor'), 'static', 'dynamic', 'mesh', 'linear', 'diagonal'"
)
ROUTER_INITS = ("normal", "uniform", "fresh_slot")
LINEAR_INITS = ("identity", "normal")
TRANSITION_ROUTER_INPUTS = ("prelude", "embedding")


@dataclass(frozen=True)
class Layout:
    """Parsed layout: ``prelude`` layers, ``core`` layers run ``loops`` times, ``coda`` layers.

    ``shared`` is True for a weight-shared core (``P+CRK+D``) and False for unshared cores
    (``P+C+C+D``). A vanilla layout ``N`` is ``Layout(N, 0, 0, 0, shared=False)``.
    """

    prelude: int
    core: int
    loops: int
    coda: int
    shared: bool

    @property
    def is_vanilla(self) -> bool:
        return self.loops == 0

    @property
    def unrolled_layers(self) -> int:
        """Layers in the unrolled computation graph (a looped core counts once per loop)."""
        return self.prelude + self.core * self.loops + self.coda

    @property
    def unique_layers(self) -> int:
        """Layers with their own weights (a shared core counts once)."""
        return self.prelude + self.core * (1 if self.shared else self.loops) + self.coda

    def with_loops(self, loops: int) -> Layout:
        """The same layout with its shared core run ``loops`` times (the loop count chosen at run time).

        Only a shared core can run a number of times other than its own; MeshLMError otherwise.
        """
        if loops == self.loops:
            return self
        if not isinstance(loops, int) or loops < 1:
            raise MeshLMError(f"num_loops must be an integer >= 1, got {loops!r}")
        if not self.shared:
            kind = "vanilla" if self.is_vanilla else "unshared-core"
            raise MeshLMError(
                f"num_loops={loops}: the {kind} layout {self} has no shared core to run another number of times "
                f"(only its own {self.loops})"
            )
        return Layout(self.prelude, self.core, loops, self.coda, shared=True)

    def schedule(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[int, ...]]:
        """Indices into the model's unique layer list: (prelude, one tuple per loop, coda)."""
        pre = tuple(range(self.prelude))
        start = self.prelude
        loops = []
        for t in range(self.loops):
            offset = start if self.shared else start + t * self.core
            loops.append(tuple(range(offset, offset + self.core)))
        coda_start = start + self.core * (1 if self.shared else self.loops)
        return pre, tuple(loops), tuple(range(coda_start, coda_start + self.coda))

    def __str__(self) -> str:
        if self.is_vanilla:
            return str(self.prelude)
        if self.shared:
            return f"{self.prelude}+{self.core}R{self.loops}+{self.coda}"
        return "+".join(str(n) for n in (self.prelude, *([self.core] * self.loops), self.coda))


_VANILLA = re.compile(r"\d+")
_RECURSIVE = re.compile(r"(\d+)\+(\d+)R(\d+)\+(\d+)")
_UNSHARED = re.compile(r"\d+(\+\d+){3,}")


def parse_layout(text: str) -> Layout:
    """Parse a layout string such as ``"24"``, ``"4+8R2+4"`` or ``"4+8+8+4"``."""
    s = str(text).replace(" ", "")
    if _VANILLA.fullmatch(s):
        n = int(s)
        if n < 1:
            raise MeshLMError(f"layout {text!r} has no layers; {LAYOUT_FORMS}")
        return Layout(n, 0, 0, 0, shared=False)
    if m := _RECURSIVE.fullmatch(s):
        pre, core, loops, coda = (int(g) for g in m.groups())
        if core < 1 or loops < 1:
            raise MeshLMError(f"layout {text!r} needs a core of >= 1 layer looped K >= 1 times; {LAYOUT_FORMS}")
        return Layout(pre, core, loops, coda, shared=True)
    if _UNSHARED.fullmatch(s):
        parts = [int(p) for p in s.split("+")]
        cores = parts[1:-1]
        if len(set(cores)) != 1 or cores[0] < 1:
            raise MeshLMError(
                f"layout {text!r}: unshared cores must all have the same number (>= 1) of layers; {LAYOUT_FORMS}"
            )
        return Layout(parts[0], cores[0], len(cores), parts[-1], shared=False)
    raise MeshLMError(f"cannot parse layout {text!r}; {LAYOUT_FORMS}")


def parse_scheme(text: str) -> tuple[str, frozenset[str]]:
    """Parse a scheme string; returns (kind, additive terms).

    kind is one of ``base``, ``additive``, ``static``, ``dynamic``, ``mesh``, ``linear``, ``diagonal``;
    the terms are only non-empty for ``additive`` (a subset of residual / anchor / anchor*).
    """
    s = str(text).replace(" ", "").lower()
    if s in NAMED_SCHEMES:
        return s, frozenset()
    terms = s.split("+")
    if all(t in ADDITIVE_TERMS for t in terms) and terms:
        if len(set(terms)) != len(terms):
            raise MeshLMError(f"scheme {text!r} repeats a term; {SCHEME_FORMS}")
        return "additive", frozenset(terms)
    raise MeshLMError(f"unknown scheme {text!r}; {SCHEME_FORMS}")


def canonical_scheme(text: str) -> str:
    """The scheme string in a canonical spelling (additive terms in a fixed order)."""
    kind, terms = parse_scheme(text)
    if kind != "additive":
        return kind
    return "+".join(t for t in ADDITIVE_TERMS if t in terms)


# hidden, layers, heads of the Pythia suite (spec section 1)
PRESETS: dict[str, tuple[int, int, int]] = {
    "pythia-14m": (128, 6, 4),
    "pythia-31m": (256, 6, 8),
    "pythia-70m": (512, 6, 8),
    "pythia-160m": (768, 12, 12),
    "pythia-410m": (1024, 24, 16),
    "pythia-1b": (2048, 16, 8),
    "pythia-1.4b": (2048, 24, 16),
}


class MeshLMConfig(PretrainedConfig):
    """Configuration of a (recursive) GPT-NeoX language model with a state-passing scheme.

    Besides the usual GPT-NeoX fields, ``layout`` and ``scheme`` select the recursion and the
    state passing (see :func:`parse_layout`, :func:`parse_scheme`). MeSH options: ``buffer_size``
    (slots; ``None`` means K + 3), ``router_init`` (``"normal"``, the default: weights
    N(0, initializer_range) and zero biases, so every step starts close to 1/B per slot with the
    slots told apart; ``"uniform"``: zero weights and biases, exactly 1/B, but then the empty
    slots 1..B-1 get identical weights and gradients forever and act as one slot;
    ``"fresh_slot"``: zero weights, bias ``router_init_bias`` on slot s+1 for step s, so step s
    starts writing to and reading from its own fresh slot) and ``mesh_transition_input`` (what
    feeds the transitional routers: ``"prelude"`` output, the default, or the ``"embedding"``).
    Input-injection options: ``linear_init`` (``"identity"``, the default: the adapter starts as
    ``A = [I | 0]``, i.e. base recursion; ``"normal"``: N(0, initializer_range) like every other
    matrix, Huginn's random init) and ``diagonal_decay_init`` (the initial per-channel ``a`` of
    ``diagonal``, in (0, 1); ``b`` starts at ``1 - a``).
    """

    model_type = "meshlm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 50304,
        hidden_size: int = 512,
        num_attention_heads: int = 8,
        intermediate_size: int | None = None,
        layout: str = "6",
        scheme: str = "base",
        buffer_size: int | None = None,
        router_init: str = "normal",
        router_init_bias: float = 2.0,
        mesh_transition_input: str = "prelude",
        linear_init: str = "identity",
        diagonal_decay_init: float = 0.5,
        rotary_pct: float = 0.25,
        rope_theta: float = 10000.0,
        layer_norm_eps: float = 1e-5,
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        scale_embeddings: bool = True,
        use_parallel_residual: bool = True,
        depth_scaled_init: bool = True,
        use_cache: bool = True,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 0,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = False,
        **kwargs,
    ) -> None:
        kwargs.pop("num_hidden_layers", None)  # derived from the layout, never set directly
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_attention_heads = int(num_attention_heads)
        self.intermediate_size = int(intermediate_size) if intermediate_size else 4 * self.hidden_size
        self.layout = str(parse_layout(layout))
        self.scheme = canonical_scheme(scheme)
        self.buffer_size = buffer_size
        self.router_init = router_init
        self.router_init_bias = float(router_init_bias)
        self.mesh_transition_input = mesh_transition_input
        self.linear_init = linear_init
        self.diagonal_decay_init = float(diagonal_decay_init)
        self.rotary_pct = float(rotary_pct)
        self.rope_theta = float(rope_theta)
        self.layer_norm_eps = float(layer_norm_eps)
        self.max_position_embeddings = int(max_position_embeddings)
        self.initializer_range = float(initializer_range)
        self.scale_embeddings = bool(scale_embeddings)
        self.use_parallel_residual = bool(use_parallel_residual)
        self.depth_scaled_init = bool(depth_scaled_init)
        self.use_cache = use_cache
        # the KV cache has one slot per *unrolled* layer
        self.num_hidden_layers = parse_layout(self.layout).unrolled_layers
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    @property
    def parsed_layout(self) -> Layout:
        return parse_layout(self.layout)

    @property
    def scheme_kind(self) -> str:
        return parse_scheme(self.scheme)[0]

    @property
    def num_buffer_slots(self) -> int:
        """MeSH buffer slots B (``buffer_size`` or the default K + 3)."""
        return self.buffer_size if self.buffer_size is not None else self.parsed_layout.loops + 3

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    def validate(self) -> None:
        """Refuse inconsistent settings with one clear message each."""
        layout = self.parsed_layout
        positive = (
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise MeshLMError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise MeshLMError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise MeshLMError(f"rotary_pct must be in [0, 1], got {self.rotary_pct}")
        if self.rotary_dim % 2:
            raise MeshLMError(
                f"rotary dims ({self.rotary_pct} x head_dim {self.head_dim} = {self.rotary_dim}) must be even"
            )
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0 or self.rope_theta <= 0:
            raise MeshLMError("layer_norm_eps, initializer_range and rope_theta must be > 0")
        kind = self.scheme_kind
        if layout.is_vanilla and kind != "base":
            raise MeshLMError(
                f"scheme {self.scheme!r} needs a recursive or unshared-core layout (e.g. '4+8R2+4' or '4+8+8+4'); "
                f"the vanilla layout {self.layout!r} only takes scheme 'base'"
            )
        if self.router_init not in ROUTER_INITS:
            raise MeshLMError(f"router_init must be one of {ROUTER_INITS}, got {self.router_init!r}")
        if self.mesh_transition_input not in TRANSITION_ROUTER_INPUTS:
            raise MeshLMError(
                f"mesh_transition_input must be one of {TRANSITION_ROUTER_INPUTS}, got {self.mesh_transition_input!r}"
            )
        if self.linear_init not in LINEAR_INITS:
            raise MeshLMError(f"linear_init must be one of {LINEAR_INITS}, got {self.linear_init!r}")
        if not 0.0 < self.diagonal_decay_init < 1.0:
            raise MeshLMError(f"diagonal_decay_init must be in (0, 1), got {self.diagonal_decay_init}")
        if self.buffer_size is not None:
            if kind != "mesh":
                raise MeshLMError(f"buffer_size only applies to scheme 'mesh', not {self.scheme!r}")
            if int(self.buffer_size) != self.buffer_size or self.buffer_size < 2:
                raise MeshLMError(f"buffer_size must be an integer >= 2, got {self.buffer_size!r}")
            if self.router_init == "fresh_slot" and self.buffer_size < layout.loops + 2:
                raise MeshLMError(
                    f"router_init 'fresh_slot' needs buffer_size >= K + 2 = {layout.loops + 2} "
                    f"(one slot per step plus the embedding slot), got {self.buffer_size}"
                )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MeshLMConfig:
        """Config of a Pythia size (vocab 50,304, vanilla layout of that size unless overridden)."""
        if name not in PRESETS:
            raise MeshLMError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        hidden, layers, heads = PRESETS[name]
        kwargs = dict(vocab_size=50304, hidden_size=hidden, num_attention_heads=heads, layout=str(layers))
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def unrolled_layers_at(self, num_loops: int | None = None) -> int:
        """Unrolled depth (KV-cache slots) of a forward pass running the core ``num_loops`` times (default K)."""
        layout = self.parsed_layout
        return layout.with_loops(num_loops).unrolled_layers if num_loops is not None else layout.unrolled_layers

    def depth_init_scale(self) -> float:
        """Multiplier of the output projections' init std: 1/sqrt(2 * unrolled layers)."""
        if not self.depth_scaled_init:
            return 1.0
        return 1.0 / math.sqrt(2 * self.parsed_layout.unrolled_layers)
