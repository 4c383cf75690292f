"""Imagen numerics: thresholding, guidance, composition, schedules (hand-made tensors, no models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.composable import Concept, format_composable, parse_composable
from evalkit.errors import InputError
from evalkit.imagen.guidance import cfg, combine_rows, compose, plan_rows
from evalkit.imagen.schedules import alpha_sigma, logsnr_cosine, logsnr_linear
from evalkit.imagen.thresholding import dynamic_threshold, static_threshold


def test_dynamic_threshold_equals_formula_on_hand_made_tensor():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, -0.3, 0.4, 0.9]]).view(2, 1, 2, 2)
    p = 75.0
    out = dynamic_threshold(x0, percentile=p)
    for i in range(2):
        a = x0[i].flatten().numpy()
        s = max(1.0, float(np.percentile(np.abs(a), p)))
        expected = np.clip(a, -s, s) / s
        np.testing.assert_allclose(out[i].flatten().numpy(), expected, rtol=1e-6)
    # second sample has all |x| < 1: s = 1, unchanged
    assert torch.equal(out[1], x0[1])


def test_dynamic_threshold_default_percentile_995_and_clamped_scale():
    g = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(2, 3, 8, 8, generator=g)
    s = np.percentile(np.abs(x0.flatten(1).numpy()), 99.5, axis=1)
    out = dynamic_threshold(x0)
    expected = (
        np.clip(x0.numpy(), -s[:, None, None, None], s[:, None, None, None])
        / s[:, None, None, None]
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    capped = dynamic_threshold(x0, max_s=1.5)  # IF-style: s clamped to [1, 1.5]
    np.testing.assert_allclose(capped.numpy(), np.clip(x0.numpy(), -1.5, 1.5) / 1.5, rtol=1e-6)


def test_static_threshold_clips_to_unit_range():
    x0 = torch.tensor([-2.0, -0.5, 0.5, 3.0])
    assert torch.equal(static_threshold(x0), torch.tensor([-1.0, -0.5, 0.5, 1.0]))


def test_guidance_with_weight_one_equals_conditional_prediction():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    assert torch.equal(cfg(cond, uncond, 1.0), cond)
    assert torch.allclose(cfg(cond, uncond, 4.0), uncond + 4.0 * (cond - uncond), atol=1e-6)


def test_and_with_one_concept_equals_plain_guidance():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    assert torch.equal(compose(uncond, [cond], [5.0]), cfg(cond, uncond, 5.0))
    plan = plan_rows([[(1, 5.0)]])
    assert torch.equal(combine_rows(torch.stack([uncond, cond]), plan)[0], cfg(cond, uncond, 5.0))


def test_compose_matches_composable_diffusion_formula():
    g = torch.Generator().manual_seed(3)
    u, a, b = (torch.randn(3, 4, 4, generator=g) for _ in range(3))
    out = compose(u, [a, b], [2.0, 1.5])
    assert torch.allclose(out, u + 2.0 * (a - u) + 1.5 * (b - u), atol=1e-5)


def test_not_term_moves_prediction_away_from_negated_concept():
    g = torch.Generator().manual_seed(4)
    u, a, fog = (torch.randn(3, 8, 8, generator=g) for _ in range(3))
    w = 3.0
    plain = compose(u, [a], [w])
    negated = compose(u, [a, fog], [w, -w])
    direction = (fog - u).flatten()
    shift = (negated - plain).flatten()
    assert torch.dot(shift, direction) < 0
    assert torch.allclose(shift, -w * direction, atol=1e-5)


def test_plan_rows_batches_all_concepts_of_all_samples_in_one_forward():
    plan = plan_rows([[(1, 2.0)], [(2, 1.0), (3, -0.5)]])
    assert plan.rows == 5
    assert plan.sample == [0, 0, 1, 1, 1]
    assert plan.text == [0, 1, 0, 2, 3]


def test_parse_composable_and_not_with_weights():
    assert parse_composable("a red cube AND a blue sphere NOT fog") == [
        Concept("a red cube", 1.0),
        Concept("a blue sphere", 1.0),
        Concept("fog", -1.0),
    ]
    assert parse_composable("a red cube:1.5 AND a blue sphere NOT fog:0.5") == [
        Concept("a red cube", 1.5),
        Concept("a blue sphere", 1.0),
        Concept("fog", -0.5),
    ]
    text = "a red cube:1.5 AND a blue sphere:1 NOT fog:0.5"
    assert parse_composable(format_composable(parse_composable(text))) == parse_composable(text)


def test_parse_composable_leaves_plain_prompts_and_colons_alone():
    assert parse_composable("a clock showing 12:30") == [Concept("a clock showing 12:30", 1.0)]
    assert parse_composable("a 16:9 photo AND a cat") == [
        Concept("a 16:9 photo", 1.0),
        Concept("a cat", 1.0),
    ]
    assert parse_composable("cats and dogs") == [Concept("cats and dogs", 1.0)]


@pytest.mark.parametrize("bad", ["", "   ", "AND a cat", "a cat AND", "NOT fog", "a:-1 AND b:-2"])
def test_parse_composable_rejects_malformed_prompts(bad):
    with pytest.raises(InputError):
        parse_composable(bad)


@pytest.mark.parametrize("schedule", [logsnr_cosine, logsnr_linear])
def test_schedules_are_variance_preserving_and_decreasing(schedule):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    lam = schedule(t)
    alpha, sigma = alpha_sigma(lam)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha))
    assert (lam[1:] <= lam[:-1]).all()
    assert lam[0] > 5 and lam[-1] < -5


def test_linear_schedule_matches_discrete_ddpm_alpha_bar():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alpha, _ = alpha_sigma(logsnr_linear(t))
    # continuous β(t) integrates Σβᵢ exactly; the discrete product differs by Σβᵢ²/2 ≤ 0.07 in log
    assert (2 * alpha.log() - alpha_bar.log()).abs().max() < 0.08
