"""Continuous-time noise schedules as log-SNR functions λ(t), t ∈ [0, 1].

The forward process is z_t = α_t x + σ_t ε with α_t² = sigmoid(λ_t), σ_t² = sigmoid(−λ_t)
(variance preserving), so a schedule is fully described by λ(t).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from evalkit.errors import UsageError

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0

Schedule = Callable[[torch.Tensor], torch.Tensor]


def logsnr_cosine(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule: ᾱ(t) = cos²(π/2 · (t+s)/(1+s)) ⇒ λ(t) = −2 log tan(π/2 · (t+s)/(1+s))."""
    angle = (t.double() + s) / (1 + s) * (math.pi / 2)
    lam = -2 * torch.log(torch.tan(angle).clamp_min(1e-20))
    return lam.clamp(LOGSNR_MIN, LOGSNR_MAX).to(t.dtype)


def logsnr_linear(
    t: torch.Tensor, beta_0: float = 1e-4, beta_1: float = 0.02, n: int = 1000
) -> torch.Tensor:
    """Linear β: ᾱ(t) = exp(−n(β₀t + (β₁−β₀)t²/2)) ⇒ λ(t) = −log expm1(n(β₀t + (β₁−β₀)t²/2))."""
    td = t.double()
    integral = n * (beta_0 * td + 0.5 * (beta_1 - beta_0) * td**2)
    lam = -torch.log(torch.expm1(integral).clamp_min(1e-20))
    return lam.clamp(LOGSNR_MIN, LOGSNR_MAX).to(t.dtype)


SCHEDULES: dict[str, Schedule] = {"cosine": logsnr_cosine, "linear": logsnr_linear}


def get_schedule(name: str) -> Schedule:
    """The log-SNR function registered as ``name`` (``cosine`` or ``linear``)."""
    if name not in SCHEDULES:
        raise UsageError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]


def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α = √sigmoid(λ), σ = √sigmoid(−λ)."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def time_grid(steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform grid 1 = t₀ > t₁ > … > t_N = 0 of ``steps`` intervals."""
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=dtype)
