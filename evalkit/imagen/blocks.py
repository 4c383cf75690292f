"""U-Net building blocks: embeddings, residual blocks with scale-shift norm, resampling."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.errors import UsageError
from evalkit.imagen.attention import CrossAttention, SelfAttention, group_norm, zero_


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(1000·t·ωᵢ), sin(1000·t·ωᵢ)] with ωᵢ = max_period^(−i/(dim/2)), t ∈ [0, 1]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class ScalarEmbedding(nn.Module):
    """MLP(sinusoid(t)): a time (or augmentation level) embedding."""

    def __init__(self, freq_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        first = cast(nn.Linear, self.mlp[0])
        return self.mlp(sinusoidal_embedding(t, self.freq_dim).to(first.weight.dtype))


class CondEmbedding(nn.Module):
    """e = MLP(sinusoid(t)) + W·LayerNorm(pooled text) [+ MLP(sinusoid(t_aug))]."""

    def __init__(self, channels: int, embed_dim: int, text_dim: int, aug: bool) -> None:
        super().__init__()
        self.time = ScalarEmbedding(channels, embed_dim)
        self.text = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, embed_dim))
        self.aug = ScalarEmbedding(channels, embed_dim) if aug else None

    def forward(
        self, t: torch.Tensor, pooled: torch.Tensor, aug_t: torch.Tensor | None
    ) -> torch.Tensor:
        e = self.time(t) + self.text(pooled)
        if self.aug is not None:
            e = e + self.aug(aug_t if aug_t is not None else torch.zeros_like(t))
        return e


class ResBlock(nn.Module):
    """out = s·(skip(x) + conv(SiLU(GN(h)·(1+γ)+β))) with (γ, β) = W·SiLU(e) (scale-shift norm)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        embed_dim: int,
        groups: int,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(embed_dim, 2 * c_out)
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        gamma, beta = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + gamma) + beta
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) * self.skip_scale


class Downsample(nn.Module):
    """3×3 convolution with stride 2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Layer(nn.Module):
    """A residual block followed by optional self-attention and text cross-attention."""

    def __init__(
        self,
        res: ResBlock,
        channels: int,
        head_dim: int,
        text_dim: int,
        groups: int,
        self_attn: bool,
        cross_attn: bool,
    ) -> None:
        super().__init__()
        self.res = res
        self.attn = SelfAttention(channels, head_dim, groups) if self_attn else None
        self.cross = CrossAttention(channels, text_dim, head_dim, groups) if cross_attn else None

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None:
            x = self.cross(x, tokens, mask)
        return x


def with_lowres_cond(
    x: torch.Tensor, lowres: torch.Tensor | None, cond_channels: int
) -> torch.Tensor:
    """Concatenate the (already upsampled) low-res image to the input when the model takes one."""
    if cond_channels == 0:
        if lowres is not None:
            raise UsageError("this model takes no low-res image condition")
        return x
    if lowres is None:
        raise UsageError("this super-resolution model needs the low-res image")
    if lowres.shape[-2:] != x.shape[-2:]:
        raise UsageError(
            f"low-res condition must be upsampled to {tuple(x.shape[-2:])}, got {tuple(lowres.shape[-2:])}"
        )
    return torch.cat([x, lowres.to(x.dtype)], dim=1)
