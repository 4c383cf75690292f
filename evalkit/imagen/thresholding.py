"""Thresholding of the predicted clean image x̂₀ during sampling (Imagen §2.3)."""

from __future__ import annotations

import torch

from evalkit.errors import UsageError

THRESHOLDING = ("dynamic", "static", "none")


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """x̂₀ ← clip(x̂₀, −1, 1)."""
    return x0.clamp(-1.0, 1.0)


def dynamic_scale(
    x0: torch.Tensor, percentile: float = 99.5, max_s: float | None = None
) -> torch.Tensor:
    """s = max(1, percentile_p(|x̂₀|)) per sample, optionally s ← min(s, max_s); shape (B, 1, …)."""
    if not 0.0 < percentile <= 100.0:
        raise UsageError(f"thresholding percentile must be in (0, 100], got {percentile}")
    flat = x0.detach().flatten(1).abs().float()
    s = torch.quantile(flat, percentile / 100.0, dim=1).clamp_min(1.0)
    if max_s is not None:
        s = s.clamp_max(max(1.0, float(max_s)))
    return s.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))


def dynamic_threshold(
    x0: torch.Tensor, percentile: float = 99.5, max_s: float | None = None
) -> torch.Tensor:
    """x̂₀ ← clip(x̂₀, −s, s) / s with s = max(1, percentile_p(|x̂₀|))."""
    s = dynamic_scale(x0, percentile, max_s)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def apply_threshold(
    x0: torch.Tensor, method: str, percentile: float = 99.5, max_s: float | None = None
) -> torch.Tensor:
    """Dispatch on ``method`` ∈ {dynamic, static, none}."""
    if method == "dynamic":
        return dynamic_threshold(x0, percentile, max_s)
    if method == "static":
        return static_threshold(x0)
    if method == "none":
        return x0
    raise UsageError(f"unknown thresholding {method!r}; choose one of {list(THRESHOLDING)}")
