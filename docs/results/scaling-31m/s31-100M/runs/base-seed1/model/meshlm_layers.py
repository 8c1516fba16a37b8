# Copied from meshlm.model.layers (meshlm 0.1.0) by meshlm.hub.export_remote_code; do not edit.
"""The GPT-NeoX (Pythia) decoder layer: partial rotary attention through SDPA, GELU MLP, parallel residual.

Weights keep GPT-NeoX's layout (fused QKV interleaved per head) so Pythia checkpoints convert
one-to-one (see :mod:`meshlm.convert`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_meshlm import MeshLMConfig


class Rotary(nn.Module):
    """Rotary position embedding tables (cos, sin) for the first ``rotary_dim`` dims of each head."""

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", self.initial_values(config)["inv_freq"], persistent=False)

    @staticmethod
    def initial_values(config: MeshLMConfig) -> dict[str, torch.Tensor]:
        """The inverse frequencies (a non-persistent buffer, so recomputed on every load)."""
        dim = config.rotary_dim
        return {"inv_freq": 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / max(dim, 1)))}

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape (batch, seq, 1, rotary_dim) in float32, to broadcast over heads."""
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None]
        return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` (batch, seq, heads, head_dim); pass the rest."""
    rot = cos.shape[-1]
    if rot == 0:
        return x
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = (x_rot.float() * cos + _rotate_half(x_rot.float()) * sin).to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1)


class Attention(nn.Module):
    """Causal multi-head attention with a fused QKV projection and partial rotary embedding.

    q, k and v stay in the (batch, seq, heads, head_dim) layout the projections produce and are
    handed to SDPA as transposed views: the attention kernel then writes its output in that same
    layout, so neither the output nor its gradient needs a transpose copy.
    """

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj.is_residual_out = True

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache=None,
        cache_index: int = 0,
    ) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        cos, sin = rope
        q, k, v = (
            apply_rotary(q, cos, sin).transpose(1, 2),
            apply_rotary(k, cos, sin).transpose(1, 2),
            v.transpose(1, 2),
        )
        if cache is not None:
            k, v = cache.update(k, v, cache_index)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """``Linear(d, 4d) -> GELU -> Linear(4d, d)`` with biases."""

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.proj.is_residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Layer(nn.Module):
    """Pre-LayerNorm GPT-NeoX layer; ``x + attn(ln1 x) + mlp(ln2 x)`` with parallel residual."""

    def __init__(self, config: MeshLMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.mlp = MLP(config)
        self.parallel = config.use_parallel_residual

    def forward(self, x, rope, mask, cache=None, cache_index: int = 0) -> torch.Tensor:
        a = self.attn(self.ln1(x), rope, mask, cache, cache_index)
        if self.parallel:
            return x + a + self.mlp(self.ln2(x))
        x = x + a
        return x + self.mlp(self.ln2(x))
