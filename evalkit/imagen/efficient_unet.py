"""Imagen's Efficient U-Net (App. B.1) for super-resolution.

More residual blocks at low resolution, long skip connections scaled by 1/√2, downsampling
*before* the convolutions of a down block and upsampling *after* those of an up block.
Conditioned on the upsampled (noise-augmented) low-res image, concatenated to the input,
and on the augmentation level, embedded like time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.imagen.attention import group_norm, zero_
from evalkit.imagen.blocks import (
    CondEmbedding,
    Downsample,
    Layer,
    ResBlock,
    Upsample,
    with_lowres_cond,
)
from evalkit.imagen.configs import EfficientUNetConfig


def _layers(cfg: EfficientUNetConfig, c_in: int, c_out: int, n: int, res: int) -> nn.ModuleList:
    out = nn.ModuleList()
    for j in range(n):
        block = ResBlock(
            c_in if j == 0 else c_out, c_out, cfg.time_embed_dim, cfg.groups, cfg.dropout
        )
        last = j == n - 1
        self_attn = last and res in cfg.attn_resolutions
        cross = last and res in cfg.cross_attn_resolutions
        out.append(Layer(block, c_out, cfg.head_dim, cfg.text_dim, cfg.groups, self_attn, cross))
    return out


class DBlock(nn.Module):
    """[Downsample] → n ResBlocks (→ attention on the last)."""

    def __init__(
        self, cfg: EfficientUNetConfig, c_in: int, c_out: int, n: int, res: int, down: bool
    ) -> None:
        super().__init__()
        self.down = Downsample(c_in, c_out) if down else None
        self.layers = _layers(cfg, c_out if down else c_in, c_out, n, res)

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if self.down is not None:
            h = self.down(h)
        for layer in self.layers:
            h = layer(h, emb, tokens, mask)
        return h


class UBlock(nn.Module):
    """concat(h, skip/√2) → n ResBlocks (→ attention on the last) → [Upsample]."""

    def __init__(
        self, cfg: EfficientUNetConfig, c_in: int, c_out: int, n: int, res: int, up_to: int | None
    ) -> None:
        super().__init__()
        self.layers = _layers(cfg, c_in, c_out, n, res)
        self.up = Upsample(c_out, up_to) if up_to is not None else None

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, emb, tokens, mask)
        return self.up(h) if self.up is not None else h


class EfficientUNet(nn.Module):
    """ε_θ(z_t, t, text, upsampled low-res image, aug level) for a super-resolution stage."""

    def __init__(self, cfg: EfficientUNetConfig) -> None:
        super().__init__()
        self.config = cfg
        chans, blocks = list(cfg.channels), list(cfg.blocks)
        self.embed = CondEmbedding(chans[0], cfg.time_embed_dim, cfg.text_dim, cfg.aug_embedding)
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, chans[0], 3, padding=1)
        res = [cfg.resolution // 2**i for i in range(len(chans))]
        self.down = nn.ModuleList(
            DBlock(cfg, chans[max(i - 1, 0)], chans[i], blocks[i], res[i], down=i > 0)
            for i in range(len(chans))
        )
        self.up = nn.ModuleList(
            UBlock(cfg, 2 * chans[i], chans[i], blocks[i], res[i], chans[i - 1] if i > 0 else None)
            for i in reversed(range(len(chans)))
        )
        self.norm_out = group_norm(chans[0], cfg.groups)
        self.conv_out = zero_(nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1))

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
        for block in self.down:
            h = block(h, emb, tokens, mask)
            skips.append(h)
        for block in self.up:
            h = block(
                torch.cat([h, skips.pop() * self.config.skip_scale], dim=1), emb, tokens, mask
            )
        return self.conv_out(F.silu(self.norm_out(h)))
