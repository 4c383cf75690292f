"""Imagen's base U-Net: ResBlocks with scale-shift norm, time + pooled-text embedding,
self-attention and text cross-attention at configured resolutions."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.errors import UsageError
from evalkit.imagen.attention import group_norm, zero_
from evalkit.imagen.blocks import (
    CondEmbedding,
    Downsample,
    Layer,
    ResBlock,
    Upsample,
    with_lowres_cond,
)
from evalkit.imagen.configs import EfficientUNetConfig, UNetConfig
from evalkit.imagen.efficient_unet import EfficientUNet


def _layer(cfg: UNetConfig, c_in: int, c_out: int, res: int) -> Layer:
    block = ResBlock(c_in, c_out, cfg.time_embed_dim, cfg.groups, cfg.dropout)
    return Layer(
        block,
        c_out,
        cfg.head_dim,
        cfg.text_dim,
        cfg.groups,
        res in cfg.attn_resolutions,
        res in cfg.cross_attn_resolutions,
    )


class UNet(nn.Module):
    """ε_θ(z_t, t, text[, low-res image, aug level]) for the base stage."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        chans = [cfg.channels * m for m in cfg.channel_mult]
        self.embed = CondEmbedding(
            cfg.channels, cfg.time_embed_dim, cfg.text_dim, cfg.aug_embedding
        )
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, c, res = [], chans[0], cfg.resolution
        for i, ch in enumerate(chans):
            level = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.append(_layer(cfg, c, ch, res))
                c = ch
                skips.append(c)
            self.down.append(level)
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else Downsample(c, c))
            res = res if last else res // 2
        mid = dict(self_attn=True, cross_attn=True)
        self.mid = nn.ModuleList(
            [
                Layer(
                    ResBlock(c, c, cfg.time_embed_dim, cfg.groups, cfg.dropout),
                    c,
                    cfg.head_dim,
                    cfg.text_dim,
                    cfg.groups,
                    **mid,
                ),
                Layer(
                    ResBlock(c, c, cfg.time_embed_dim, cfg.groups, cfg.dropout),
                    c,
                    cfg.head_dim,
                    cfg.text_dim,
                    cfg.groups,
                    False,
                    False,
                ),
            ]
        )
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            level = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.append(_layer(cfg, c + skips.pop(), ch, res))
                c = ch
            self.up.append(level)
            self.upsample.append(Upsample(c, c) if i > 0 else nn.Identity())
            res = res * 2 if i > 0 else res
        self.norm_out = group_norm(c, cfg.groups)
        self.conv_out = zero_(nn.Conv2d(c, cfg.out_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        lowres: torch.Tensor | None = None,
        aug_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embed(t, pooled, aug_t)
        h = self.conv_in(with_lowres_cond(x, lowres, self.config.cond_channels))
        skips = []
        for level, down in zip(self.down, self.downsample, strict=True):
            for layer in cast(nn.ModuleList, level):
                h = layer(h, emb, tokens, mask)
                skips.append(h)
            h = down(h)
        for layer in self.mid:
            h = layer(h, emb, tokens, mask)
        for level, up in zip(self.up, self.upsample, strict=True):
            for layer in cast(nn.ModuleList, level):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb, tokens, mask)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_model(cfg: UNetConfig | EfficientUNetConfig) -> nn.Module:
    """The network a config describes."""
    if isinstance(cfg, UNetConfig):
        return UNet(cfg)
    if isinstance(cfg, EfficientUNetConfig):
        return EfficientUNet(cfg)
    raise UsageError(f"unknown model config type {type(cfg).__name__}")


def randomize_(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """θ ← θ + N(0, std²) for every parameter, so zero-initialised output layers are not zero.

    Only for random-weight plumbing: a freshly initialised U-Net predicts ε̂ = 0 whatever
    the prompt, which would hide conditioning bugs.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g).to(p.dtype))
    return model
