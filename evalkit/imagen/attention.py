"""Self- and cross-attention over feature maps with ``scaled_dot_product_attention``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, L, C) → (B, n, L, C/n)."""
    b, length, c = x.shape
    return x.reshape(b, length, n, c // n).transpose(1, 2)


class SelfAttention(nn.Module):
    """x + W_o · softmax(QKᵀ/√d) V over the H·W positions of a feature map."""

    def __init__(self, channels: int, head_dim: int, groups: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = (_heads(t, self.heads) for t in self.qkv(seq).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(a).transpose(1, 2).reshape(b, c, h, w)


class CrossAttention(nn.Module):
    """x + W_o · softmax(Q Kᵀ/√d) V with K, V from LayerNorm(text) plus a learned null token."""

    def __init__(self, channels: int, text_dim: int, head_dim: int, groups: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = group_norm(channels, groups)
        self.text_norm = nn.LayerNorm(text_dim)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.null_kv = nn.Parameter(torch.randn(2, channels) / math.sqrt(channels))
        self.out = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = _heads(self.q(self.norm(x).flatten(2).transpose(1, 2)), self.heads)
        k, v = self.kv(self.text_norm(tokens)).chunk(2, dim=-1)
        null_k, null_v = (t.expand(b, 1, c) for t in self.null_kv.to(k.dtype).unsqueeze(1))
        k = _heads(torch.cat([null_k, k], dim=1), self.heads)
        v = _heads(torch.cat([null_v, v], dim=1), self.heads)
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1).view(b, 1, 1, -1)
        a = (
            F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            .transpose(1, 2)
            .reshape(b, h * w, c)
        )
        return x + self.out(a).transpose(1, 2).reshape(b, c, h, w)
