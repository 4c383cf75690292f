"""The Imagen cascade's diffusion maths against values worked out by hand.

Every expected number below comes from a closed form written in the test (in the papers' own
notation where it differs from the code's log-SNR form) and is also given as a literal, so a
broken formula in evalkit/imagen/{schedules,diffusion,samplers,thresholding}.py fails here.

Notation: z_t = α_t x + σ_t ε, variance preserving (α² + σ² = 1), log-SNR λ = log(α²/σ²),
ᾱ = α² (the DDPM/DDIM papers' "alpha bar"). Two log-SNRs give round numbers:
λ = 0 → α = σ = 1/√2 (ᾱ = 1/2) and λ = log 3 → α = √3/2, σ = 1/2 (ᾱ = 3/4).
"""

from __future__ import annotations

import math

import pytest
import torch

from evalkit.errors import GenerationError, UsageError
from evalkit.imagen.diffusion import eps_from_x0, q_sample, target, to_eps_x0
from evalkit.imagen.samplers import sample_ddim, sample_ddpm
from evalkit.imagen.schedules import (
    LOGSNR_MAX,
    LOGSNR_MIN,
    alpha_sigma,
    get_schedule,
    logsnr_cosine,
    logsnr_linear,
    time_grid,
)
from evalkit.imagen.thresholding import apply_threshold, dynamic_threshold, static_threshold

LOG3 = math.log(3.0)
SQRT3_2 = math.sqrt(3.0) / 2  # α at λ = log 3
F64 = torch.float64


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def col(*values: float) -> torch.Tensor:
    """A batch of one-pixel samples, shape (B, 1), as the samplers get (B, C, H, W)."""
    return t64(*values).view(-1, 1)


def close(actual: torch.Tensor, expected, tol: float = 1e-12) -> None:
    """|actual − expected| ≤ tol elementwise (expected reshaped to actual's shape)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype).reshape(actual.shape)
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol)


# --------------------------------------------------------------------------- log-SNR ↔ α, σ


def test_alpha_sigma_at_logsnr_zero_and_log3_are_the_hand_values():
    # α² = sigmoid(λ), σ² = sigmoid(−λ): λ = 0 → 1/2, 1/2; λ = log 3 → 3/4, 1/4
    alpha, sigma = alpha_sigma(t64(0.0, LOG3))
    close(alpha, [1 / math.sqrt(2), SQRT3_2])
    close(sigma, [1 / math.sqrt(2), 0.5])


def test_alpha_sigma_are_variance_preserving_and_invert_to_the_logsnr():
    lam = t64(-12.0, -3.5, -0.25, 0.0, 0.7, 4.0, 12.0)
    alpha, sigma = alpha_sigma(lam)
    close(alpha**2 + sigma**2, torch.ones_like(lam))
    close(torch.log(alpha**2 / sigma**2), lam, tol=1e-9)  # λ = log(α²/σ²)


# --------------------------------------------------------------------------- parameterisations


# one pixel: x = 0.4, ε = −1.2 at λ = log 3
X, EPS = 0.4, -1.2
Z = SQRT3_2 * X + 0.5 * EPS  # z = α x + σ ε = 0.3464102 − 0.6 = −0.2535898
V = SQRT3_2 * EPS - 0.5 * X  # v = α ε − σ x (Salimans & Ho 2022, §4) = −1.2392305


def test_forward_process_is_alpha_x_plus_sigma_eps():
    z = q_sample(t64(X), t64(LOG3), t64(EPS))
    close(z, [Z])
    assert abs(Z - (-0.25358983848622454)) < 1e-15


def test_v_target_is_alpha_eps_minus_sigma_x():
    close(target(t64(X), t64(EPS), t64(LOG3), "v"), [V])
    assert abs(V - (-1.2392304845413263)) < 1e-15
    close(target(t64(X), t64(EPS), t64(LOG3), "eps"), [EPS])


def test_eps_prediction_gives_x0_as_z_minus_sigma_eps_over_alpha():
    eps, x0 = to_eps_x0(t64(EPS), t64(Z), t64(LOG3), "eps")
    close(eps, [EPS])
    close(x0, [(Z - 0.5 * EPS) / SQRT3_2])  # x̂ = (z − σ ε̂)/α
    close(x0, [X])


def test_v_prediction_gives_x0_alpha_z_minus_sigma_v_and_eps_sigma_z_plus_alpha_v():
    # Salimans & Ho 2022 (progressive distillation), §4: x̂ = α z − σ v̂, ε̂ = σ z + α v̂
    eps, x0 = to_eps_x0(t64(V), t64(Z), t64(LOG3), "v")
    close(x0, [SQRT3_2 * Z - 0.5 * V])
    close(eps, [0.5 * Z + SQRT3_2 * V])
    close(x0, [X])  # and both round-trip to the x and ε that made z
    close(eps, [EPS])


def test_eps_from_x0_inverts_the_forward_process():
    close(eps_from_x0(t64(Z), t64(X), t64(LOG3)), [(Z - SQRT3_2 * X) / 0.5])
    close(eps_from_x0(t64(Z), t64(X), t64(LOG3)), [EPS])


def test_per_sample_logsnr_broadcasts_over_each_samples_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    lam = t64(0.0, LOG3)
    z = q_sample(x, lam, eps)
    close(z[0], (x[0] + eps[0]) / math.sqrt(2))
    close(z[1], SQRT3_2 * x[1] + 0.5 * eps[1])
    for prediction in ("eps", "v"):
        eps_hat, x_hat = to_eps_x0(target(x, eps, lam, prediction), z, lam, prediction)
        close(x_hat, x, tol=1e-12)
        close(eps_hat, eps, tol=1e-12)


# --------------------------------------------------------------------------- one sampler step


# one step from t = 0.75 (λ = 0, ᾱ_t = 1/2) to s = 0.25 (λ = log 3, ᾱ_s = 3/4)
T, S = 0.75, 0.25
ABAR_T, ABAR_S = 0.5, 0.75
X0_HAT = [0.4, -0.2]
EPS_HAT = [1.0, -2.0]
XI = [0.5, 0.3]  # the fresh noise the step draws
Z_T = [0.3, -0.7]


def two_point_schedule(t: torch.Tensor) -> torch.Tensor:
    """λ(0.75) = 0, λ(0.25) = log 3, λ(0) = LOGSNR_MAX (a stub schedule for one step)."""
    table = {T: 0.0, S: LOG3, 0.0: LOGSNR_MAX}
    return torch.tensor([table[round(float(v), 6)] for v in t.flatten()], dtype=t.dtype)


class FixedDenoiser:
    """Returns fixed (x̂₀, ε̂) and records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, float]] = []

    def __call__(self, z: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append((z.clone(), t))
        return col(*X0_HAT), col(*EPS_HAT)


def noise_source(i: int) -> torch.Tensor:
    return col(*XI)


def ddim_eq12(eta: float) -> list[float]:
    """DDIM (Song et al. 2020, eq. 12) in ᾱ form:
    z_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − σ²) ε̂ + σ ξ,  σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s) (eq. 16)."""
    var = eta**2 * (1 - ABAR_S) / (1 - ABAR_T) * (1 - ABAR_T / ABAR_S)
    return [
        math.sqrt(ABAR_S) * x + math.sqrt(1 - ABAR_S - var) * e + math.sqrt(var) * n
        for x, e, n in zip(X0_HAT, EPS_HAT, XI, strict=True)
    ]


def test_one_deterministic_ddim_step_matches_eq12_with_eta_zero():
    denoise = FixedDenoiser()
    z_s = sample_ddim(denoise, col(*Z_T), t64(T, S), two_point_schedule, eta=0.0)
    close(z_s, ddim_eq12(0.0))
    close(z_s, [0.8464101615137755, -1.1732050807568877])  # √3/2·x̂ + ½·ε̂
    ((z_in, t_in),) = denoise.calls
    close(z_in, Z_T)
    assert t_in == T


def test_one_stochastic_ddim_step_matches_eq12_with_eta_one():
    z_s = sample_ddim(
        FixedDenoiser(), col(*Z_T), t64(T, S), two_point_schedule, noise_source, eta=1.0
    )
    close(z_s, ddim_eq12(1.0))
    close(z_s, [0.8392094413405198, -0.6280808628073545])  # σ_η = 1/√6, √(1/4 − 1/6) = 1/√12


def test_ddim_with_eta_needs_a_noise_source():
    with pytest.raises(UsageError, match="noise source"):
        sample_ddim(FixedDenoiser(), col(*Z_T), t64(T, S), two_point_schedule, eta=0.5)


def test_one_ancestral_step_matches_the_ddpm_posterior_mean_and_variance():
    # Ho et al. 2020, eq. 7: with α_step = ᾱ_t/ᾱ_s and β = 1 − α_step,
    # μ̃ = √ᾱ_s β/(1−ᾱ_t) x̂₀ + √α_step (1−ᾱ_s)/(1−ᾱ_t) z_t,  β̃ = (1−ᾱ_s)/(1−ᾱ_t) β
    beta = 1 - ABAR_T / ABAR_S
    c_x0 = math.sqrt(ABAR_S) * beta / (1 - ABAR_T)  # = 1/√3
    c_z = math.sqrt(1 - beta) * (1 - ABAR_S) / (1 - ABAR_T)  # = 1/√6
    var = (1 - ABAR_S) / (1 - ABAR_T) * beta  # = 1/6
    expected = [
        c_z * z + c_x0 * x + math.sqrt(var) * n for z, x, n in zip(Z_T, X0_HAT, XI, strict=True)
    ]
    z_s = sample_ddpm(FixedDenoiser(), col(*Z_T), t64(T, S), two_point_schedule, noise_source)
    close(z_s, expected)
    close(z_s, [0.5575387400469407, -0.27876937002347035])


def test_last_step_to_t_zero_returns_the_denoised_image_without_noise():
    for sampler, kwargs in ((sample_ddim, {"eta": 1.0}), (sample_ddpm, {})):
        out = sampler(
            FixedDenoiser(), col(*Z_T), t64(S, 0.0), two_point_schedule, noise_source, **kwargs
        )
        close(out, X0_HAT)


def test_two_steps_feed_the_first_steps_output_to_the_second_denoise_call():
    denoise = FixedDenoiser()
    sample_ddim(denoise, col(*Z_T), t64(T, S, 0.0), two_point_schedule, eta=0.0)
    assert [t for _, t in denoise.calls] == [T, S]
    close(denoise.calls[1][0], ddim_eq12(0.0))


def test_non_finite_step_output_raises_generation_error_naming_label_and_step():
    def nan_denoise(z, t):
        return torch.full_like(z, math.nan), torch.zeros_like(z)

    with pytest.raises(GenerationError, match=r"stage 0: non-finite values .* step 1/1"):
        sample_ddim(nan_denoise, col(*Z_T), t64(T, S), two_point_schedule, label="stage 0")


# --------------------------------------------------------------------------- thresholding


# one sample of 4 values; |x| sorted = 0.1, 0.5, 2, 3
SAMPLE = [0.5, -3.0, 2.0, 0.1]


def one(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).view(1, 1, 2, 2)


@pytest.mark.parametrize(
    ("percentile", "s"),
    [
        (75.0, 2.25),  # rank 0.75·3 = 2.25 → 2 + 0.25·(3 − 2) (linear interpolation)
        (50.0, 1.25),  # rank 1.5 → 0.5 + 0.5·(2 − 0.5)
        (100.0, 3.0),  # the largest |x|
    ],
)
def test_dynamic_threshold_clips_at_the_percentile_of_abs_values_and_divides_by_it(percentile, s):
    # Imagen (Saharia et al. 2022) §2.3: s = max(1, percentile_p |x̂₀|), x̂₀ ← clip(x̂₀, −s, s)/s
    out = dynamic_threshold(one(SAMPLE), percentile=percentile)
    close(out.flatten(), [min(max(v, -s), s) / s for v in SAMPLE])


def test_dynamic_threshold_at_75_percent_by_hand():
    out = dynamic_threshold(one(SAMPLE), percentile=75.0)
    close(out.flatten(), [0.5 / 2.25, -1.0, 2.0 / 2.25, 0.1 / 2.25])
    close(out.flatten(), [0.2222222222222222, -1.0, 0.8888888888888888, 0.0444444444444444], 1e-15)


def test_dynamic_threshold_with_percentile_below_one_is_static_clipping():
    # |x| sorted 0.2, 0.3, 0.4, 5 → the median 0.35 < 1, so s = 1: clip to [−1, 1], no rescale
    out = dynamic_threshold(one([0.2, -0.3, 0.4, 5.0]), percentile=50.0)
    close(out.flatten(), [0.2, -0.3, 0.4, 1.0])


def test_dynamic_threshold_scale_is_capped_by_max_threshold():
    out = dynamic_threshold(one(SAMPLE), percentile=100.0, max_s=1.5)  # s = min(3, 1.5)
    close(out.flatten(), [0.5 / 1.5, -1.0, 1.0, 0.1 / 1.5])


def test_dynamic_threshold_scale_is_per_sample():
    batch = torch.cat([one(SAMPLE), one([0.2, -0.3, 0.4, 5.0])])
    out = dynamic_threshold(batch, percentile=75.0)
    # second sample: rank 2.25 of 0.2, 0.3, 0.4, 5 → 0.4 + 0.25·4.6 = 1.55 (the percentile is
    # taken in float32, so s = 1.55 only to float32 precision)
    close(out[0].flatten(), [0.5 / 2.25, -1.0, 2.0 / 2.25, 0.1 / 2.25])
    close(out[1].flatten(), [0.2 / 1.55, -0.3 / 1.55, 0.4 / 1.55, 1.0], tol=1e-7)


def test_static_threshold_clips_to_minus_one_one():
    close(
        static_threshold(t64(-2.0, -1.0, -0.25, 0.0, 0.9, 1.0, 7.0)), [-1, -1, -0.25, 0, 0.9, 1, 1]
    )


def test_apply_threshold_dispatches_and_refuses_unknown_methods_and_percentiles():
    x = one(SAMPLE)
    close(apply_threshold(x, "static"), static_threshold(x))
    close(apply_threshold(x, "dynamic", 75.0), dynamic_threshold(x, 75.0))
    assert apply_threshold(x, "none") is x
    with pytest.raises(UsageError, match="unknown thresholding"):
        apply_threshold(x, "soft")
    for bad in (0.0, 100.5):
        with pytest.raises(UsageError, match="percentile"):
            dynamic_threshold(x, percentile=bad)


# --------------------------------------------------------------------------- noise schedules


def test_cosine_schedule_alpha_bar_is_the_squared_cosine_of_nichol_and_dhariwal():
    # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²(π/2 · (t+s)/(1+s)), s = 0.008 (the constant
    # f(0) normalisation is left out: ᾱ(0) is just below 1)
    t = t64(0.1, 0.25, 0.5, 0.75, 0.9)
    alpha, _ = alpha_sigma(logsnr_cosine(t))
    expected = [math.cos(math.pi / 2 * (v + 0.008) / 1.008) ** 2 for v in t.tolist()]
    close(alpha**2, expected, tol=1e-12)
    close(alpha[2] ** 2, [math.cos(math.pi / 2 * 0.508 / 1.008) ** 2])


def test_cosine_schedule_endpoints():
    lam = logsnr_cosine(t64(0.0, 1.0))
    # t = 0: λ = −2 log tan(π/2 · 0.008/1.008) = 8.7693; t = 1: tan(π/2) overflows → clamped
    close(lam[0], -2 * math.log(math.tan(math.pi / 2 * 0.008 / 1.008)))
    assert abs(float(lam[0]) - 8.769294788199247) < 1e-9
    assert float(lam[1]) == LOGSNR_MIN
    alpha, sigma = alpha_sigma(lam)
    close(alpha[1] ** 2, 1 / (1 + math.exp(20.0)))  # ᾱ(1) = sigmoid(−20) ≈ 2.1e−9


def test_linear_schedule_alpha_bar_is_exp_minus_the_integrated_beta():
    # β(t) = n(β₀ + (β₁ − β₀)t) ⇒ ᾱ(t) = exp(−n(β₀t + (β₁−β₀)t²/2)), n = 1000
    t = t64(0.25, 0.5, 1.0)
    alpha, _ = alpha_sigma(logsnr_linear(t))
    expected = [math.exp(-1000 * (1e-4 * v + 0.5 * (0.02 - 1e-4) * v * v)) for v in t.tolist()]
    close(alpha**2, expected, tol=1e-12)
    close(alpha[1] ** 2, [0.07906381245316065], tol=1e-12)  # exp(−2.5375)
    close(alpha[2] ** 2, [4.3185749060341275e-05], tol=1e-15)  # exp(−10.05)


def test_linear_schedule_endpoints():
    lam = logsnr_linear(t64(0.0, 1.0))
    assert float(lam[0]) == LOGSNR_MAX  # ᾱ(0) = 1: infinite log-SNR, clamped
    close(lam[1], -math.log(math.expm1(10.05)))
    assert abs(float(lam[1]) - (-10.04995681331841)) < 1e-9


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_alpha_bar_falls_strictly_from_near_one_to_near_zero(name):
    schedule = get_schedule(name)
    t = torch.linspace(0, 1, 201, dtype=F64)
    abar = alpha_sigma(schedule(t))[0] ** 2
    inner = abar[1:-1]
    assert (inner[1:] < inner[:-1]).all()  # strictly decreasing away from the clamped ends
    assert (abar[1:] <= abar[:-1]).all()
    assert float(abar[0]) > 0.999 and float(abar[-1]) < 1e-4


def test_unknown_schedule_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown noise schedule"):
        get_schedule("sigmoid")


def test_time_grid_is_uniform_from_one_to_zero():
    close(time_grid(4), [1.0, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(UsageError, match="at least 1"):
        time_grid(0)
