"""Imagen sampling with tiny random cascades: determinism, batch invariance, guidance, NaN detection."""

from __future__ import annotations

import pytest
import torch

from evalkit.errors import GenerationError, UsageError
from evalkit.imagen.cascade import Cascade, _Denoiser
from evalkit.imagen.configs import StageSampling
from evalkit.imagen.guidance import cfg, plan_rows
from evalkit.imagen.testing import micro_base, micro_cascade, micro_stage
from evalkit.imagen.text_encoders import TinyRandomEncoder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run much faster single-threaded on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    return micro_cascade()


def _net_inputs(stage, encoder, prompts, r=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = encoder.encode(prompts)
    x = torch.randn(len(prompts), 3, r, r, generator=g)
    t = torch.full((len(prompts),), 0.5)
    return x, t, text


def test_ddim_with_same_seed_is_deterministic(cascade):
    a = cascade.sample(["a red cube", "a blue sphere"], [7, 8]).images
    b = cascade.sample(["a red cube", "a blue sphere"], [7, 8]).images
    c = cascade.sample(["a red cube", "a blue sphere"], [9, 8]).images
    assert torch.equal(a, b)
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[1], c[1])


def test_images_identical_across_batch_sizes_1_and_3(cascade):
    prompts = ["a red cube", "a green cone AND fog", "a blue sphere NOT rain:0.5"]
    seeds = [11, 12, 13]
    s = [st.config.sampling.replace(sampler="ddpm") for st in cascade.stages]
    together = cascade.sample(prompts, seeds, s, return_stages=True)
    for i in range(3):
        alone = cascade.sample([prompts[i]], [seeds[i]], s, return_stages=True)
        assert torch.equal(alone.images[0], together.images[i])
        assert torch.equal(alone.stages[0][0], together.stages[0][i])


def test_batched_guidance_equals_two_separate_passes():
    stage = micro_stage(micro_base(), seed=3)
    encoder = TinyRandomEncoder()
    x, t, text = _net_inputs(stage, encoder, ["a red cube", "a blue sphere"])
    null = encoder.null(2)
    m = stage.model
    with torch.no_grad():
        cond = m(x, t, *text)
        uncond = m(x, t, *null)
        both = m(
            torch.cat([x, x]),
            torch.cat([t, t]),
            *(torch.cat([n, c]) for n, c in zip(null, text, strict=True)),
        )
        w = 4.0
        separate = cfg(cond, uncond, w)
        batched = cfg(both[2:], both[:2], w)
    assert torch.allclose(batched, separate, atol=1e-5)


def test_denoiser_guidance_weight_one_equals_conditional_prediction():
    stage = micro_stage(micro_base(), seed=4)
    encoder = TinyRandomEncoder()
    x, t, text = _net_inputs(stage, encoder, ["a red cube"])
    table = type(text)(*(torch.cat([n, c]) for n, c in zip(encoder.null(1), text, strict=True)))
    s = StageSampling(thresholding="none", guidance=1.0)
    guided = _Denoiser(stage, s, plan_rows([[(1, 1.0)]]), table, None, None, forward_batch=4)
    x0, eps = guided(x, 0.5)
    with torch.no_grad():
        direct = stage.model(x, t, *text)
    assert torch.allclose(eps, direct, atol=1e-6)
    assert torch.isfinite(x0).all()


def test_one_concept_prompt_equals_plain_prompt_sampling(cascade):
    plain = cascade.sample(["a red cube"], [5], composable=False).images
    single = cascade.sample(["a red cube"], [5]).images
    composed = cascade.sample(["a red cube AND a blue sphere"], [5]).images
    assert torch.equal(plain, single)
    assert not torch.equal(composed, plain)


def test_cascade_returns_every_stage_and_latency(cascade):
    out = cascade.sample(["a red cube"], [1], return_stages=True)
    assert [s.shape[-1] for s in out.stages] == [16, 32]
    assert out.resolutions == [16, 32]
    assert len(out.latency_s) == 2 and all(t > 0 for t in out.latency_s)
    assert out.images.shape == (1, 3, 32, 32)
    assert out.images.min() >= -1 and out.images.max() <= 1


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_samplers_run_with_each_thresholding(cascade, sampler, eta):
    for th in ("dynamic", "static", "none"):
        s = [
            st.config.sampling.replace(sampler=sampler, eta=eta, thresholding=th, steps=2)
            for st in cascade.stages
        ]
        out = cascade.sample(["a red cube"], [2], s)
        assert torch.isfinite(out.images).all()


def test_v_prediction_and_linear_schedule_stage_samples():
    stage = micro_stage(micro_base(prediction="v", schedule="linear"), seed=5)
    c = Cascade(TinyRandomEncoder(), [stage])
    out = c.sample(["a cube"], [0])
    assert out.images.shape == (1, 3, 16, 16) and torch.isfinite(out.images).all()


def test_nan_injected_mid_sampling_raises_generation_error_naming_stage_and_step(cascade):
    model = cascade.stages[1].model
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 2 else output

    handle = model.register_forward_hook(poison)
    try:
        with pytest.raises(GenerationError, match=r"stage 1 \(sr32, 32px\).*step 2/2"):
            cascade.sample(["a red cube"], [3])
    finally:
        handle.remove()


def test_sample_stage_from_the_previous_stages_output_reproduces_the_cascade(cascade):
    prompts, seeds = ["a red circle", "two blue squares"], [3, 4]
    out = cascade.sample(prompts, seeds, return_stages=True)
    base = cascade.sample_stage(0, prompts, seeds)
    assert torch.equal(base, out.stages[0])
    assert torch.equal(cascade.sample_stage(1, prompts, seeds, lowres=out.stages[0]), out.images)


def test_sample_stage_checks_the_lowres_input(cascade):
    with pytest.raises(UsageError, match="needs lowres images shaped"):
        cascade.sample_stage(1, ["a"], [0])
    with pytest.raises(UsageError, match="needs lowres images shaped"):
        cascade.sample_stage(1, ["a"], [0], lowres=torch.zeros(1, 3, 8, 8))
    with pytest.raises(UsageError, match="takes no lowres"):
        cascade.sample_stage(0, ["a"], [0], lowres=torch.zeros(1, 3, 16, 16))
    with pytest.raises(UsageError, match="does not exist"):
        cascade.sample_stage(2, ["a"], [0])
