"""Continuous-time Gaussian diffusion: forward process, parameterisations, training loss.

z_t = α_t x + σ_t ε with (α_t, σ_t) from a log-SNR schedule λ(t) (see :mod:`schedules`).
The network predicts ε (default) or v = α ε − σ x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evalkit.imagen.schedules import alpha_sigma


def _bcast(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample (B,) or scalar tensor so it broadcasts against ``x``."""
    a = a.to(device=x.device, dtype=x.dtype)
    return a.view(-1, *([1] * (x.ndim - 1))) if a.ndim else a


def q_sample(x: torch.Tensor, lam: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_t = α_t x + σ_t ε."""
    alpha, sigma = alpha_sigma(lam)
    return _bcast(alpha, x) * x + _bcast(sigma, x) * eps


def to_eps_x0(
    out: torch.Tensor, z: torch.Tensor, lam: torch.Tensor, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """ε-pred: x̂ = (z − σε̂)/α;  v-pred: x̂ = αz − σv̂, ε̂ = σz + αv̂."""
    alpha, sigma = (_bcast(a, z) for a in alpha_sigma(lam))
    if prediction == "v":
        return sigma * z + alpha * out, alpha * z - sigma * out
    return out, (z - sigma * out) / alpha


def eps_from_x0(z: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """ε = (z − α x̂)/σ (re-derived after thresholding x̂)."""
    alpha, sigma = (_bcast(a, z) for a in alpha_sigma(lam))
    return (z - alpha * x0) / sigma


def target(x: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor, prediction: str) -> torch.Tensor:
    """Regression target: ε, or v = α ε − σ x."""
    if prediction == "v":
        alpha, sigma = (_bcast(a, x) for a in alpha_sigma(lam))
        return alpha * eps - sigma * x
    return eps


def diffusion_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    schedule,
    prediction: str,
    **cond: torch.Tensor | None,
) -> torch.Tensor:
    """E‖f_θ(z_t, t, c) − target‖² with z_t = α_t x + σ_t ε (t, ε supplied by the caller)."""
    lam = schedule(t.double()).float()
    z = q_sample(x, lam, eps)
    out = model(z, t, **cond)
    return F.mse_loss(out.float(), target(x, eps, lam, prediction))
