"""Samplers over a time grid 1 = t₀ > … > t_N = 0, k-diffusion style.

Each sampler takes ``denoise(z, t) -> (x̂₀, ε̂)`` (guided and thresholded), the initial
noise, the grid, the log-SNR schedule and a ``noise(i)`` callable that returns fresh
per-sample noise shaped like z (drawn from each image's own generator). Non-finite
values raise :class:`GenerationError` naming ``label`` and the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evalkit.errors import GenerationError, UsageError
from evalkit.imagen.schedules import alpha_sigma

Denoise = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
Noise = Callable[[int], torch.Tensor]
Callback = Callable[[dict], None]


def _check(x: torch.Tensor, label: str, i: int, n: int, t: float) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise GenerationError(
            f"{label}: non-finite values (NaN/inf) in {bad} sample(s) at step {i + 1}/{n} (t={t:.4f})"
        )


def _coeffs(schedule, t: float, s: float) -> tuple[float, float, float, float, float]:
    """α_t, σ_t, α_s, σ_s and c = σ²_{t|s}/σ²_t = −expm1(λ_t − λ_s)."""
    lam = schedule(torch.tensor([t, s], dtype=torch.float64))
    (alpha_t, alpha_s), (sigma_t, sigma_s) = alpha_sigma(lam)
    c = -torch.expm1(lam[0] - lam[1])
    return float(alpha_t), float(sigma_t), float(alpha_s), float(sigma_s), float(c)


@torch.no_grad()
def sample_ddim(
    denoise: Denoise,
    x: torch.Tensor,
    ts: torch.Tensor,
    schedule,
    noise: Noise | None = None,
    eta: float = 0.0,
    label: str = "sampler",
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): z_s = α_s x̂ + √(σ_s² − σ_η²) ε̂ + σ_η ξ, σ_η = η σ_s √c."""
    n = len(ts) - 1
    for i in range(n):
        t, s = float(ts[i]), float(ts[i + 1])
        x0, eps = denoise(x, t)
        if s <= 0.0:
            x = x0
        else:
            _, _, alpha_s, sigma_s, c = _coeffs(schedule, t, s)
            sigma_eta = eta * sigma_s * c**0.5
            x = alpha_s * x0 + max(sigma_s**2 - sigma_eta**2, 0.0) ** 0.5 * eps
            if sigma_eta > 0:
                if noise is None:
                    raise UsageError("DDIM with eta > 0 needs a noise source")
                x = x + sigma_eta * noise(i)
        _check(x, label, i, n, t)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


@torch.no_grad()
def sample_ddpm(
    denoise: Denoise,
    x: torch.Tensor,
    ts: torch.Tensor,
    schedule,
    noise: Noise | None = None,
    label: str = "sampler",
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020) from q(z_s|z_t, x̂): mean α_tσ_s²/(α_sσ_t²)·z_t + α_s c x̂, var σ_s² c."""
    if noise is None:
        raise UsageError("ancestral sampling needs a noise source")
    n = len(ts) - 1
    for i in range(n):
        t, s = float(ts[i]), float(ts[i + 1])
        x0, _ = denoise(x, t)
        if s <= 0.0:
            x = x0
        else:
            alpha_t, sigma_t, alpha_s, sigma_s, c = _coeffs(schedule, t, s)
            mean = (alpha_t * sigma_s**2 / (alpha_s * sigma_t**2)) * x + alpha_s * c * x0
            x = mean + sigma_s * c**0.5 * noise(i)
        _check(x, label, i, n, t)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm}


def per_sample_randn(
    generators: list[torch.Generator], shape: tuple[int, ...], device, dtype=torch.float32
) -> torch.Tensor:
    """One standard-normal draw per sample from that sample's own CPU generator, stacked."""
    return torch.stack(
        [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    ).to(device, dtype)
