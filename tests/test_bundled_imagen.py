"""The bundled model (evalkit/model_cards/imagen-shapes.toml): it loads by default and really draws shapes."""

# ruff: noqa: F811  (pytest fixtures imported from tests.fixtures_fid are used as arguments)

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit.cli import main
from evalkit.generators import imagen_adapter
from evalkit.generators.base import GeneratorContext
from evalkit.image_plan import plan_requests
from evalkit.metrics.shapes_accuracy import judge_image
from evalkit.suites.shapes import make_shapes_suite
from tests.fixtures_fid import shared_weights, weights_cache  # noqa: F401 (fixtures by name)

#: fewer steps than the card's 25+25, to keep the test fast; still well above the bar
FAST = {"steps": "12,6"}


@pytest.fixture(scope="module")
def single_object_requests():
    items = [i for i in make_shapes_suite({"num_items": 60}).items() if i.category == "single"]
    return plan_requests(items, images_per_prompt=1, run_seed=0)


def _accuracy(generator, requests) -> float:
    images = generator.generate(requests).permute(0, 2, 3, 1).numpy()
    verdicts = [judge_image(im, r.item.spec) for im, r in zip(images, requests, strict=True)]
    return sum(v.correct for v in verdicts) / len(verdicts)


def test_plain_imagen_model_defaults_to_the_bundled_card():
    gen = imagen_adapter.make_imagen_generator({"steps": 1}, GeneratorContext(resolution=64))
    assert gen.name == "imagen-shapes" and not gen.uncalibrated
    assert set(gen.weights) == {"base", "sr64"}


def test_bundled_model_draws_single_shapes_that_the_parser_recognises(single_object_requests):
    gen = imagen_adapter.make_imagen_generator(dict(FAST), GeneratorContext(resolution=64))
    assert _accuracy(gen, single_object_requests) >= 0.6


def test_random_init_cascade_of_the_same_size_draws_no_recognisable_shape(
    single_object_requests,
):
    context = GeneratorContext(resolution=64, allow_random_weights=True)
    gen = imagen_adapter.make_imagen_generator(
        {"random": "shapes", "text_encoder": "minilm", **FAST}, context
    )
    assert gen.uncalibrated
    assert _accuracy(gen, single_object_requests) <= 0.1


def test_main_job_runs_end_to_end_with_the_default_metrics(weights_cache, tmp_path, capsys):
    """The README's main command (model and metrics by default), scaled down."""
    args = ["run", "--model", "imagen", "--suite", "shapes", "--num-samples", "10"]
    args += ["--model-opt", "steps=2,2", "--cache-dir", str(weights_cache)]
    args += ["--out", str(tmp_path / "reports"), "--quiet"]
    assert main(args) == 0
    results = json.loads(Path(capsys.readouterr().out.strip().splitlines()[-1]).read_text())
    assert set(results["metrics"]) == {"fid", "kid", "shapes_accuracy"}
    assert not results["uncalibrated"]
    assert (tmp_path / "reports" / results["run_id"] / "report.html").is_file()


def test_bundled_sr_stage_reconstructs_downsampled_renders_about_as_well_as_bicubic():
    """The SR stage alone, fed the suite's renders downsampled to 32 px (an oracle base stage).

    An under-trained SR stage draws mottled shapes and a speckled background: the first bundled
    one had twice bicubic's mean error and 0.16 (20 grey levels) at the 99th percentile of its
    background; the current one 0.93x bicubic and 0.04.
    """
    import numpy as np
    import torch

    from evalkit.imagen.cascade import upsample_condition
    from evalkit.imagen.data import downsample

    gen = imagen_adapter.make_imagen_generator({}, GeneratorContext(resolution=64))
    suite = make_shapes_suite({"num_items": 60})
    items = [i for i in suite.items() if i.category == "single"][:8]
    renders = np.stack([suite.reference_image(i, 64) for i in items])
    target = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1
    low = downsample(target, 32)
    sampling = gen.sampling[1].replace(steps=10)
    out = gen.cascade.sample_stage(
        1, [i.prompt for i in items], list(range(8)), lowres=low, sampling=sampling
    )
    sr_error = (out - target).abs().mean()
    bicubic_error = (upsample_condition(low, 64) - target).abs().mean()
    assert sr_error <= 1.25 * bicubic_error
    background = target.min(dim=1).values > 0.95
    deviation = (out - target).abs().amax(dim=1)[background]
    assert deviation.quantile(0.99) < 0.08
