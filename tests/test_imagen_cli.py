"""`evalkit train imagen` / `evalkit train card`: a tiny CLI training on shapes renders, a card
with sha256s, loading it through the registry; the shapes training source; the bundled default card."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evalkit.cards import load_card
from evalkit.errors import MissingWeightsError, UsageError
from evalkit.generators import imagen_adapter
from evalkit.generators.base import GenerationRequest, GeneratorContext, check_output
from evalkit.hashing import sha256_file
from evalkit.imagen.cli import build_data, read_losses, train_app
from evalkit.imagen.shapes_data import ShapesTrainingData, parse_weights
from evalkit.registry import MODELS
from evalkit.suites.base import Item
from evalkit.suites.shapes_spec import CATEGORIES

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(out, stage, preset, steps=3):
    args = [
        "imagen",
        "--data",
        "shapes",
        "--stage",
        stage,
        "--preset",
        preset,
        "--text-encoder",
        "tiny",
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--warmup",
        "1",
        "--checkpoint-every",
        "2",
        "--no-text-cache",
        "--out",
        str(out),
    ]
    result = runner.invoke(train_app, args)
    assert result.exit_code == 0, result.output
    return out


def test_cli_trains_stages_writes_a_card_and_the_registry_loads_it(tmp_path, monkeypatch):
    base = _train(tmp_path / "base", "base", "tiny-base-32")
    sr = _train(tmp_path / "sr", "sr", "tiny-sr-32-64", steps=2)
    assert [s for s, _ in read_losses(base / "losses.tsv")] == [1, 2, 3]
    assert (base / "train_summary.json").is_file() and (base / "base.json").is_file()

    models = tmp_path / "models"
    result = runner.invoke(
        train_app,
        [
            "card",
            "--name",
            "cli-test-imagen",
            "--base",
            str(base / "base.safetensors"),
            "--sr",
            str(sr / "sr64.safetensors"),
            "--out",
            str(models / "cli-test-imagen.toml"),
            "--steps",
            "2,1",
            "--guidance",
            "3,1",
            "--aug-level",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    card = load_card(models / "cli-test-imagen.toml")
    assert sorted(card.weights) == ["base", "sr64"]
    for w in card.weights.values():
        assert w.path.parent == models / "cli-test-imagen" and w.sha256 == sha256_file(w.path)
    assert card.sampling == {"steps": [2, 1], "guidance": [3.0, 1.0], "aug_level": 0.1}

    monkeypatch.setenv("EVALKIT_MODEL_PATH", str(models))
    gen = MODELS.get("cli-test-imagen")({}, GeneratorContext(resolution=64))
    assert gen.name == "cli-test-imagen" and not gen.uncalibrated
    assert [s.steps for s in gen.sampling] == [2, 1]
    images = gen.generate([GenerationRequest(Item("i0", "a red circle"), 0, 7)])
    check_output(images, 1, 64, "cli-test-imagen")


def test_cli_resume_continues_from_the_last_checkpoint(tmp_path):
    out = _train(tmp_path / "run", "base", "tiny-base-32", steps=2)
    _train(out, "base", "tiny-base-32", steps=4)
    assert [s for s, _ in read_losses(out / "losses.tsv")] == [1, 2, 3, 4]


def test_cli_rejects_a_preset_of_the_other_stage_kind(tmp_path):
    result = runner.invoke(
        train_app,
        ["imagen", "--stage", "sr", "--preset", "tiny-base-32", "--text-encoder", "tiny"]
        + ["--out", str(tmp_path)],
    )
    assert isinstance(result.exception, UsageError)


def test_shapes_training_data_is_deterministic_and_covers_every_category():
    data = ShapesTrainingData(resolution=32, seed=3)
    image, caption = data[5]
    again, caption2 = ShapesTrainingData(resolution=32, seed=3)[5]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again) and caption == caption2
    stream = iter(data)
    assert [next(stream)[1] for _ in range(3)] == [data[i][1] for i in range(3)]
    from evalkit.suites.shapes import make_shapes_suite  # noqa: F401  (categories by prompt shape)

    specs = [data.spec(i)[0] for i in range(300)]
    kinds = {
        (len(s["objects"]), s["objects"][0]["count"] > 1, s["relation"] is not None) for s in specs
    }
    assert len(kinds) >= 5  # single, two objects, counting, relation, three objects
    only_single = ShapesTrainingData(32, weights=parse_weights("single=1"))
    assert all(len(only_single.spec(i)[0]["objects"]) == 1 for i in range(50))
    assert set(parse_weights(None)) == set(CATEGORIES)
    with pytest.raises(UsageError):
        parse_weights("singel=1")


def test_build_data_rejects_an_unknown_source(tmp_path):
    with pytest.raises(Exception, match="not 'shapes'"):
        build_data(str(tmp_path / "missing"), 32)


def test_missing_bundled_card_is_a_missing_weights_error(monkeypatch, tmp_path):
    monkeypatch.setattr(imagen_adapter, "DEFAULT_CARD", tmp_path / "nope.toml")
    with pytest.raises(MissingWeightsError, match="bundled card"):
        imagen_adapter.make_imagen_generator({}, GeneratorContext(resolution=64))
