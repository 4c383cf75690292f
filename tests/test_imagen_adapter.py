"""The Imagen generator adapter: weights from cards (sha256-checked), random weights gated, resize, settings."""

from __future__ import annotations

import pytest
import torch

from evalkit.cards import load_card
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.generators.base import GenerationRequest, GeneratorContext, check_output
from evalkit.generators.imagen_adapter import make_imagen_generator
from evalkit.hashing import sha256_file
from evalkit.imagen.checkpoint import save_stage
from evalkit.imagen.testing import micro_base, micro_sr, micro_stage
from evalkit.suites.base import Item


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _requests(prompts, seed0=0):
    return [GenerationRequest(Item(f"i{i}", p), 0, seed0 + i) for i, p in enumerate(prompts)]


@pytest.fixture
def card_dir(tmp_path):
    """A card with two tiny trained-shaped stages (16 px base, 16→32 SR) and their sha256s."""
    stages = [micro_stage(micro_base(), 0), micro_stage(micro_sr(), 1)]
    lines = ['name = "test-imagen"', 'adapter = "imagen"', ""]
    for st in stages:
        path = save_stage(tmp_path / "w" / f"{st.config.name}.safetensors", st.config, st.model)
        lines += [
            f"[weights.{st.config.name}]",
            f'path = "w/{path.name}"',
            f'sha256 = "{sha256_file(path)}"',
            "",
        ]
    lines += ["[sampling]", "steps = [3, 2]", "guidance = 2.5"]
    (tmp_path / "card.toml").write_text("\n".join(lines))
    return tmp_path


def _from_card(path, resolution=32, **options):
    card = load_card(path)
    merged = {**card.options, **card.sampling, **options, "card": card}
    return make_imagen_generator(merged, GeneratorContext(resolution=resolution))


def test_random_weights_adapter_refuses_without_allow_random_weights():
    with pytest.raises(MissingWeightsError, match="allow-random-weights"):
        make_imagen_generator({"random": "tiny"}, GeneratorContext(resolution=64))


def test_random_weights_adapter_with_permission_is_uncalibrated_and_valid():
    ctx = GeneratorContext(resolution=64, allow_random_weights=True)
    gen = make_imagen_generator({"random": "tiny", "steps": 1}, ctx)
    assert gen.uncalibrated and gen.native_resolution == 64
    images = gen.generate(_requests(["a red cube"]))
    check_output(images, 1, 64, "imagen")
    assert gen.fingerprint()["weights"]["random"]["presets"] == ["tiny-base-32", "tiny-sr-32-64"]


def test_card_checkpoints_load_with_sha256_and_card_sampling(card_dir):
    gen = _from_card(card_dir / "card.toml")
    assert not gen.uncalibrated and gen.name == "test-imagen"
    settings = gen.settings()
    assert [s["steps"] for s in settings["stages"]] == [3, 2]
    assert [s["guidance"] for s in settings["stages"]] == [2.5, 2.5]
    assert settings["resize"] is None
    fp = gen.fingerprint()
    assert set(fp["weights"]) == {"base", "sr32"} and len(fp["weights"]["base"]) == 64
    images = gen.generate(_requests(["a red cube", "a cat AND a hat NOT fog:0.5"]))
    check_output(images, 2, 32, "imagen")


def test_adapter_images_do_not_depend_on_batch_size(card_dir):
    gen = _from_card(card_dir / "card.toml", batch_size=3)
    reqs = _requests(["a red cube", "a blue sphere", "a green cone"], seed0=40)
    together = gen.generate(reqs)
    alone = torch.cat([gen.generate([r]) for r in reqs])
    assert torch.equal(together, alone)


def test_options_override_sampling_and_resize_is_recorded(card_dir):
    gen = _from_card(
        card_dir / "card.toml",
        resolution=48,
        steps=2,
        guidance=[4.0, 1.0],
        sampler="ddpm",
        thresholding="static",
        aug_level=0.1,
    )
    s = gen.settings()
    assert [x["guidance"] for x in s["stages"]] == [4.0, 1.0]
    assert {x["sampler"] for x in s["stages"]} == {"ddpm"}
    assert s["stages"][1]["aug_level"] == 0.1
    assert s["resize"] == {"from": 32, "to": 48, "method": "bicubic-antialias"}
    check_output(gen.generate(_requests(["a cube"])), 1, 48, "imagen")
    assert gen.fingerprint() != _from_card(card_dir / "card.toml").fingerprint()


def test_per_stage_values_from_the_command_line_split_on_commas(card_dir):
    gen = _from_card(card_dir / "card.toml", steps="3,2", guidance="4.5,1")
    stages = gen.settings()["stages"]
    assert [x["steps"] for x in stages] == [3, 2]
    assert [x["guidance"] for x in stages] == [4.5, 1]


def test_missing_checkpoint_file_names_the_path_and_the_fix(card_dir):
    (card_dir / "w" / "sr32.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match=r"sr32\.safetensors.*evalkit train imagen"):
        _from_card(card_dir / "card.toml")


def test_wrong_sha256_in_card_is_refused(card_dir):
    card = card_dir / "card.toml"
    text = card.read_text()
    sha = sha256_file(card_dir / "w" / "base.safetensors")
    card.write_text(text.replace(sha, "0" * 64))
    with pytest.raises(InputError, match="sha256"):
        _from_card(card)


def test_unknown_option_and_bad_per_stage_list_are_usage_errors(card_dir):
    with pytest.raises(UsageError, match="stepz"):
        _from_card(card_dir / "card.toml", stepz=3)
    with pytest.raises(UsageError, match="3 values for 2 stages"):
        _from_card(card_dir / "card.toml", guidance=[1.0, 2.0, 3.0])


def test_generate_stages_names_resolutions_and_last_stage_equals_generate(card_dir):
    gen = _from_card(card_dir / "card.toml", resolution=24)  # base 16 px up, sr 32 px down
    reqs = _requests(["a red cube", "a cat AND a hat NOT fog:0.5"], seed0=7)
    stages = gen.generate_stages(reqs)
    assert gen.stage_names() == ["base@16", "sr32@32"] == [s.name for s in stages]
    assert gen.stage_resolutions() == [16, 32] == [s.native_resolution for s in stages]
    for s in stages:
        check_output(s.images, 2, 24, "imagen")
        assert s.latency_s > 0
    assert torch.equal(stages[-1].images, gen.generate(reqs))
    assert not torch.equal(stages[0].images, stages[1].images)


def test_generate_stages_do_not_depend_on_batch_size(card_dir):
    gen = _from_card(card_dir / "card.toml", resolution=24, batch_size=2)
    reqs = _requests(["a red cube", "a blue sphere", "a green cone"], seed0=40)
    together = gen.generate_stages(reqs)
    alone = [gen.generate_stages([r]) for r in reqs]
    for k, stage in enumerate(together):
        assert torch.equal(stage.images, torch.cat([a[k].images for a in alone]))
