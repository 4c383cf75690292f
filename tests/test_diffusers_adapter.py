"""The diffusers adapter, offline, on tiny pipelines built in code (tests/fixtures_diffusers.py).

Covers Stable Diffusion, SDXL, PixArt and the DeepFloyd IF cascade loaded by local path or
from a (fake) Hugging Face cache: shapes, seeds, batch independence, disabled safety
checker, missing weights, NaN output, composable prompts, fingerprints, the model cards
and one end-to-end run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from evalkit.cards import BUNDLED_CARDS_DIR, load_card  # noqa: E402
from evalkit.errors import (  # noqa: E402
    GenerationError,
    InputError,
    MissingWeightsError,
    UsageError,
)
from evalkit.generators.base import (  # noqa: E402
    GenerationRequest,
    GeneratorContext,
    check_output,
)
from evalkit.generators.diffusers import (
    hub,  # noqa: E402
    make_diffusers_generator,  # noqa: E402
)
from evalkit.registry import MODELS  # noqa: E402
from evalkit.suites.base import Item  # noqa: E402
from tests import fixtures_diffusers as fx  # noqa: E402

PROMPTS = ["a red cube", "a blue sphere on the table", "a green cone"]
CARDS = ["sd-v1-5", "sdxl-base-1.0", "pixart-alpha-512", "deepfloyd-if-i-xl"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the hub: offline mode in the environment and in the loaded clients."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    try:
        import diffusers.utils.constants as diffusers_constants

        monkeypatch.setattr(diffusers_constants, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, Path]:
    """Every tiny pipeline, saved once per module."""
    root = tmp_path_factory.mktemp("pipes")
    if1, if2 = fx.save_if_pipelines(root / "if1", root / "if2")
    return {
        "sd": fx.save_sd_pipeline(root / "sd"),
        "sdxl": fx.save_sdxl_pipeline(root / "sdxl"),
        "pixart": fx.save_pixart_pipeline(root / "pixart"),
        "if1": if1,
        "if2": if2,
    }


def _requests(prompts, seed0=0):
    return [GenerationRequest(Item(f"i{i}", p), 0, seed0 + i) for i, p in enumerate(prompts)]


def _make(pipes, kind, resolution=32, **options):
    if kind == "if":
        options = {"pipeline": str(pipes["if1"]), "stage2": str(pipes["if2"]), **options}
    else:
        options = {"pipeline": str(pipes[kind]), **options}
    options.setdefault("steps", 2)
    return make_diffusers_generator(options, GeneratorContext(resolution=resolution))


@pytest.fixture(scope="module")
def sd(pipes):
    return _make(pipes, "sd")


@pytest.fixture(scope="module")
def cascade(pipes):
    return _make(pipes, "if")


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kind", ["sd", "sdxl", "pixart", "if"])
def test_each_pipeline_type_generates_uint8_images_of_the_context_shape_offline(pipes, kind):
    gen = _make(pipes, kind)
    images = gen.generate(_requests(PROMPTS))
    check_output(images, len(PROMPTS), 32, kind)
    assert images.float().std() > 1.0  # not a constant image
    assert gen.native_resolution == 32 and gen.settings()["resize"] is None


def test_sd_loads_by_path_with_pipeline_defaults_for_unset_sampling_settings(pipes):
    gen = make_diffusers_generator({"pipeline": str(pipes["sd"])}, GeneratorContext(32))
    settings = gen.settings()
    assert settings["steps"] == 50 and settings["guidance"] == 7.5  # StableDiffusionPipeline's
    assert settings["pipeline_class"] == "StableDiffusionPipeline"
    assert settings["dtype"] == "float32"


def test_native_size_different_from_context_is_resized_and_recorded(pipes):
    gen = _make(pipes, "sd", resolution=24)
    images = gen.generate(_requests(PROMPTS[:1]))
    assert images.shape == (1, 3, 24, 24) and images.dtype == torch.uint8
    assert gen.settings()["resize"] == {"from": 32, "to": 24, "method": "bicubic-antialias"}


def test_if_stage_one_alone_makes_its_native_size_and_records_the_upscale(pipes):
    gen = make_diffusers_generator(
        {"pipeline": str(pipes["if1"]), "steps": 2}, GeneratorContext(resolution=32)
    )
    assert gen.native_resolution == 16 and gen.pipeline_class == "IFPipeline"
    assert gen.generate(_requests(PROMPTS[:2])).shape == (2, 3, 32, 32)
    assert gen.settings()["resize"]["from"] == 16


def test_if_cascade_encodes_each_prompt_once_and_shares_the_embeddings(cascade, monkeypatch):
    stage1, stage2 = (st.pipe for st in cascade.stages)
    assert stage2.text_encoder is None  # stage II is loaded without T5
    encoded, seen = [], []
    forward = stage1.text_encoder.forward

    def counting_forward(input_ids, *args, **kwargs):
        encoded.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)

    stage2_call = type(stage2).__call__

    def spying_call(self, *args, **kwargs):
        seen.append(kwargs["prompt_embeds"])
        return stage2_call(self, *args, **kwargs)

    monkeypatch.setattr(stage1.text_encoder, "forward", counting_forward)
    monkeypatch.setattr(type(stage2), "__call__", spying_call)
    cascade.generate(_requests(PROMPTS))
    # one T5 pass for the prompts and one for the empty negative prompts, for both stages,
    # each on one micro-batch of batch_size rows (3 prompts padded to 4)
    assert cascade.batch_size == 4
    assert encoded == [4, 4]
    assert len(seen) == 1 and seen[0].shape[0] == 4
    settings = cascade.settings()
    assert settings["steps"] == [2, 2] and settings["guidance"] == [7.0, 4.0]
    assert settings["noise_level"] == 250


def test_per_stage_settings_accept_lists_and_comma_strings(pipes):
    gen = _make(pipes, "if", steps="2, 1", guidance=[3.0, 2.0], noise_level=100)
    assert gen.settings()["steps"] == [2, 1] and gen.settings()["guidance"] == [3.0, 2.0]
    assert gen.settings()["noise_level"] == 100
    with pytest.raises(UsageError, match="3 values"):
        _make(pipes, "if", steps=[2, 2, 2])
    with pytest.raises(UsageError, match="single-stage"):
        _make(pipes, "sd", steps=[2, 2])


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("kind", ["sd", "if"])
def test_same_seed_gives_identical_images_and_another_seed_differs(pipes, kind, sd, cascade):
    gen = sd if kind == "sd" else cascade
    a = gen.generate(_requests(PROMPTS[:2], seed0=7))
    b = gen.generate(_requests(PROMPTS[:2], seed0=7))
    c = gen.generate(_requests(PROMPTS[:2], seed0=8))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], c[0])


def _in_calls(gen, requests, size: int) -> torch.Tensor:
    """``gen``'s images for ``requests`` asked for ``size`` at a time (the runner's batch size)."""
    return torch.cat([gen.generate(requests[i : i + size]) for i in range(0, len(requests), size)])


@pytest.mark.parametrize("kind", ["sd", "sdxl", "pixart", "if"])
def test_images_do_not_depend_on_batch_size(pipes, kind):
    # micro-batch 2: batches of 1, 3 and 5 pad the last pipeline call; 5 > the micro-batch
    gen = _make(pipes, kind, batch_size=2)
    reqs = _requests(PROMPTS + ["a red sphere", "a green cube on the table"], seed0=3)
    whole = gen.generate(reqs)
    for size in (1, 3):
        assert torch.equal(_in_calls(gen, reqs, size), whole), f"batch size {size}"


@pytest.mark.parametrize("kind", ["sd", "sdxl", "if"])
def test_composed_images_do_not_depend_on_batch_size(pipes, kind):
    gen = _make(pipes, kind, batch_size=2)
    prompts = ["a red cube AND fog:0.5", "a blue sphere NOT fog", "a green cone AND a red cube"]
    reqs = _requests(prompts, seed0=9)
    assert torch.equal(_in_calls(gen, reqs, 1), gen.generate(reqs))


def test_every_pipeline_call_has_the_micro_batch_size_and_it_is_fingerprinted(pipes, monkeypatch):
    gen = _make(pipes, "sd", batch_size=2)
    assert gen.settings()["batch_size"] == 2
    assert gen.fingerprint() != _make(pipes, "sd", batch_size=4).fingerprint()
    sizes: list[int] = []
    call = type(gen.pipe).__call__

    def spy(self, *args, **kwargs):
        sizes.append(len(kwargs["prompt"]))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(type(gen.pipe), "__call__", spy)
    assert gen.generate(_requests(PROMPTS)).shape[0] == 3
    assert sizes == [2, 2]  # 3 images: one full call and one padded


# --------------------------------------------------------------------------- safety, errors


def test_safety_checker_is_disabled_not_loaded_and_recorded(pipes, sd):
    saved = json.loads((pipes["sd"] / "model_index.json").read_text())
    assert saved["safety_checker"][1] == "StableDiffusionSafetyChecker"  # the folder has one
    assert sd.pipe.safety_checker is None and sd.pipe.feature_extractor is None
    assert sd.pipe.config.requires_safety_checker is False
    for record in (sd.settings(), sd.fingerprint()["settings"]):
        assert record["safety_checker"] == "disabled" and record["watermarker"] == "disabled"


def test_missing_local_folder_raises_missing_weights_error_naming_the_fix(tmp_path):
    with pytest.raises(MissingWeightsError, match="not found") as info:
        make_diffusers_generator(
            {"pipeline": str(tmp_path / "no-such-model")}, GeneratorContext(32)
        )
    assert "fetch=true" in str(info.value) and "save_pretrained" in str(info.value)
    assert info.value.exit_code == 4


def test_hub_id_not_in_the_local_cache_raises_missing_weights_error_without_downloading(
    tmp_path, monkeypatch
):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="not in the local Hugging Face cache") as info:
        make_diffusers_generator({"pipeline": "evalkit-test/absent"}, GeneratorContext(32))
    assert "--model-opt fetch=true" in str(info.value)
    assert "--model-opt pipeline=" in str(info.value)


def test_hub_id_in_the_local_cache_loads_offline_and_records_the_snapshot(
    pipes, tmp_path, monkeypatch
):
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--evalkit-test--tiny-sd"
    shutil.copytree(pipes["sd"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    gen = make_diffusers_generator(
        {"pipeline": "evalkit-test/tiny-sd", "steps": 2}, GeneratorContext(32)
    )
    model = gen.fingerprint()["model"][0]
    assert model["hub_id"] == "evalkit-test/tiny-sd" and model["snapshot"] == commit
    by_path = _make(pipes, "sd")
    assert model["weights"] == by_path.fingerprint()["model"][0]["weights"]
    assert torch.equal(
        gen.generate(_requests(PROMPTS[:1])), by_path.generate(_requests(PROMPTS[:1]))
    )


def test_folder_saved_as_img2img_is_used_as_its_text_to_image_pipeline(pipes, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    sd_pipe = _make(pipes, "sd").pipe
    StableDiffusionImg2ImgPipeline(**sd_pipe.components).save_pretrained(tmp_path / "img2img")
    gen = make_diffusers_generator(
        {"pipeline": str(tmp_path / "img2img"), "steps": 2}, GeneratorContext(32)
    )
    assert gen.pipeline_class == "StableDiffusionPipeline"
    assert gen.pipe.safety_checker is None
    check_output(gen.generate(_requests(PROMPTS[:1])), 1, 32, "img2img")


def test_folder_without_model_index_is_an_input_error(tmp_path):
    (tmp_path / "not-a-pipeline").mkdir()
    with pytest.raises(InputError, match="model_index.json"):
        make_diffusers_generator(
            {"pipeline": str(tmp_path / "not-a-pipeline")}, GeneratorContext(32)
        )


def test_nan_output_raises_generation_error(pipes, monkeypatch):
    gen = _make(pipes, "sd")
    unet = gen.pipe.unet
    forward = unet.forward

    def nan_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        return (torch.full_like(out[0], float("nan")),)

    monkeypatch.setattr(unet, "forward", nan_forward)
    with pytest.raises(GenerationError, match="NaN"):
        gen.generate(_requests(PROMPTS[:1]))


def test_bad_options_raise_usage_errors(pipes):
    with pytest.raises(UsageError, match="model 'diffusers': unknown option"):
        _make(pipes, "sd", stepz=2)
    with pytest.raises(UsageError, match="dtype"):
        _make(pipes, "sd", dtype="float8")
    with pytest.raises(UsageError, match="offload"):
        _make(pipes, "sd", offload="disk")
    with pytest.raises(UsageError, match="CUDA"):
        _make(pipes, "sd", offload="model")
    with pytest.raises(UsageError, match="scheduler"):
        _make(pipes, "sd", scheduler="NoSuchScheduler")
    with pytest.raises(UsageError, match="noise_level"):
        _make(pipes, "sd", noise_level=100)
    with pytest.raises(UsageError, match="stage2"):
        _make(pipes, "sd", stage2=str(pipes["if2"]))
    with pytest.raises(UsageError, match="may not set"):
        _make(pipes, "sd", pipeline_kwargs={"generator": None})
    with pytest.raises(UsageError, match="no pipeline given"):
        make_diffusers_generator({}, GeneratorContext(32))


def test_scheduler_option_swaps_the_scheduler_and_changes_the_fingerprint(pipes, sd):
    gen = _make(pipes, "sd", scheduler="euler")
    assert gen.settings()["scheduler"] == "EulerDiscreteScheduler"
    assert gen.fingerprint()["scheduler"][0]["class"] == "EulerDiscreteScheduler"
    assert gen.fingerprint() != sd.fingerprint()
    check_output(gen.generate(_requests(PROMPTS[:1])), 1, 32, "sd")


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_records_class_weights_hash_dtype_scheduler_settings_and_versions(sd):
    import diffusers

    fp = sd.fingerprint()
    assert fp["adapter"] == "diffusers" and fp["pipeline_class"] == "StableDiffusionPipeline"
    (model,) = fp["model"]
    assert Path(model["path"]).name == "sd" and len(model["weights"]["sha256"]) == 64
    assert model["weights"]["weight_files"] == 3  # unet, vae, text encoder (no safety checker)
    assert fp["dtype"] == "float32" and fp["diffusers_version"] == diffusers.__version__
    assert fp["scheduler"][0]["class"] == "DDIMScheduler" and "beta_schedule" in fp["scheduler"][0]
    assert fp["settings"]["steps"] == 2 and "offload" not in fp["settings"]
    json.dumps(fp, allow_nan=False)  # JSON-able: it keys the image cache


def test_fingerprint_changes_with_sampling_settings_and_weights(pipes, sd, tmp_path):
    assert _make(pipes, "sd", guidance=3.0).fingerprint() != sd.fingerprint()
    assert _make(pipes, "sd", negative_prompt="fog").fingerprint() != sd.fingerprint()
    copy = shutil.copytree(pipes["sd"], tmp_path / "sd-copy")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = make_diffusers_generator(
        {"pipeline": str(copy), "steps": 2}, GeneratorContext(32)
    ).fingerprint()
    assert (
        changed["model"][0]["weights"]["sha256"]
        != sd.fingerprint()["model"][0]["weights"]["sha256"]
    )


def test_weights_hash_is_cached_on_disk_and_not_recomputed(pipes, tmp_path, monkeypatch):
    copy = shutil.copytree(pipes["sd"], tmp_path / "sd-copy")
    cache = tmp_path / "cache"
    first = hub.folder_digest(copy, cache_dir=str(cache))
    assert (cache / "diffusers" / "file-sha256.json").is_file()
    monkeypatch.setattr(hub, "_FILE_HASHES", {})  # forget the in-process memo

    def no_hashing(path):
        raise AssertionError(f"rehashed {path}")

    monkeypatch.setattr(hub, "sha256_file", no_hashing)
    assert hub.folder_digest(copy, cache_dir=str(cache)) == first


def test_weight_file_selection_follows_variant_and_prefers_safetensors(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    for name in (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.safetensors",
        "config.json",
    ):
        (unet / name).write_bytes(b"x")
    text = tmp_path / "text_encoder"
    text.mkdir()
    (text / "model.safetensors").write_bytes(b"y")
    names = {p.relative_to(tmp_path).as_posix() for p in hub.pipeline_files(tmp_path)}
    assert names == {
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "text_encoder/model.safetensors",
    }
    fp16 = {p.relative_to(tmp_path).as_posix() for p in hub.pipeline_files(tmp_path, "fp16")}
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fp16
    assert "text_encoder/model.safetensors" in fp16  # no fp16 file there: plain weights
    assert "unet/diffusion_pytorch_model.safetensors" not in fp16


# --------------------------------------------------------------------------- composable


@pytest.mark.parametrize("kind", ["sd", "sdxl", "if"])
def test_and_prompt_of_one_concept_with_total_weight_one_matches_the_plain_prompt(pipes, kind):
    gen = _make(pipes, kind)
    plain = gen.generate(_requests(["a red cube"], seed0=5))
    composed = gen.generate(_requests(["a red cube:0.5 AND a red cube:0.5"], seed0=5))
    # the same guidance in another batch shape: equal up to rounding of the last bits
    assert (plain.int() - composed.int()).abs().max() <= 1


@pytest.mark.parametrize("kind", ["sd", "sdxl", "if"])
def test_not_term_changes_the_image(pipes, kind):
    gen = _make(pipes, kind)
    plain = gen.generate(_requests(["a red cube"], seed0=5))
    negated = gen.generate(_requests(["a red cube NOT fog"], seed0=5))
    assert (plain.int() - negated.int()).abs().float().mean() > 0.5


def test_composed_and_plain_prompts_in_one_batch_do_not_affect_each_other(sd):
    alone = sd.generate(_requests(["a red cube", "a green cone"], seed0=11))
    mixed = sd.generate(
        [
            GenerationRequest(Item("i0", "a red cube"), 0, 11),
            GenerationRequest(Item("c", "a blue sphere AND fog:0.5"), 0, 99),
            GenerationRequest(Item("i1", "a green cone"), 0, 12),
        ]
    )
    assert torch.equal(mixed[[0, 2]], alone)


def test_composable_prompt_on_pixart_is_a_usage_error_unless_disabled(pipes):
    with pytest.raises(UsageError, match="PixArtAlphaPipeline"):
        _make(pipes, "pixart").generate(_requests(["a red cube AND a blue sphere"]))
    literal = _make(pipes, "pixart", composable=False)
    assert literal.generate(_requests(["a red cube AND a blue sphere"])).shape == (1, 3, 32, 32)


def test_composable_prompt_without_guidance_is_a_usage_error(pipes):
    with pytest.raises(UsageError, match="guidance > 1"):
        _make(pipes, "sd", guidance=1.0).generate(_requests(["a red cube NOT fog"]))


def test_composition_restores_the_unet_forward(sd):
    sd.generate(_requests(["a red cube NOT fog"]))
    assert "forward" not in sd.pipe.unet.__dict__


# --------------------------------------------------------------------------- cards, runner


@pytest.mark.parametrize("name", CARDS)
def test_bundled_cards_parse_and_resolve_to_the_diffusers_adapter(name):
    card = load_card(BUNDLED_CARDS_DIR / f"{name}.toml")
    assert card.name == name and card.adapter == "diffusers"
    assert "/" in card.weights["pipeline"].hub_id
    assert isinstance(card.sampling["steps"], (int, list))
    assert name in MODELS.names()
    assert MODELS.get(card.adapter) is MODELS.get("diffusers")
    if name == "deepfloyd-if-i-xl":
        assert card.weights["stage2"].hub_id == "DeepFloyd/IF-II-L-v1.0"
        assert card.sampling["steps"] == [100, 50] and card.sampling["noise_level"] == 250


def test_bundled_card_without_cached_weights_fails_with_the_fetch_hint(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="fetch=true"):
        MODELS.get("sd-v1-5")({}, GeneratorContext(64))


def test_card_with_a_local_pipeline_path_supplies_weights_and_sampling(pipes, tmp_path):
    from functools import partial

    from evalkit import cards

    _card_factory = partial(cards._card_factory, MODELS)  # the card's adapter from MODELS

    (tmp_path / "card.toml").write_text(
        "\n".join(
            [
                'name = "tiny-sd"',
                'adapter = "diffusers"',
                "[weights.pipeline]",
                f'path = "{pipes["sd"].as_posix()}"',
                "[sampling]",
                "steps = 2",
                "guidance = 3.0",
            ]
        )
    )
    card = load_card(tmp_path / "card.toml")
    gen = _card_factory(card, {}, GeneratorContext(32))
    assert gen.name == "tiny-sd" and gen.settings()["guidance"] == 3.0
    check_output(gen.generate(_requests(PROMPTS[:1])), 1, 32, "tiny-sd")
    pinned = gen.fingerprint()["model"][0]["weights"]["sha256"]
    text = (
        (tmp_path / "card.toml")
        .read_text()
        .replace("[sampling]", f'sha256 = "{pinned}"\n[sampling]')
    )
    (tmp_path / "card.toml").write_text(text)
    _card_factory(load_card(tmp_path / "card.toml"), {}, GeneratorContext(32))  # pin matches
    (tmp_path / "card.toml").write_text(text.replace(pinned, "0" * 64))
    with pytest.raises(InputError, match="sha256"):
        _card_factory(load_card(tmp_path / "card.toml"), {}, GeneratorContext(32))


def test_end_to_end_run_on_the_shapes_suite_through_the_runner(pipes, tmp_path):
    from evalkit.run import RunOptions, execute
    from evalkit.spec import RunSpec

    spec = RunSpec(
        model="diffusers",
        suite="shapes",
        model_options={"pipeline": str(pipes["sd"]), "steps": 2},
        suite_options={"num_items": 3},
        num_samples=3,
        resolution=32,
        metrics=("test-pixel-mean",),
    )
    options = RunOptions(
        out_root=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        batch_size=2,
        show_progress=False,
        write_report=False,
    )
    run_dir = execute(spec, options)
    results = json.loads((run_dir / "results.json").read_text())
    assert len(list((run_dir / "images").glob("*.png"))) == 3
    assert "test-pixel-mean" in results["metrics"]
    assert "diffusers" in json.dumps(results["manifest"])
