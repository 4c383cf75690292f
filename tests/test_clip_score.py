"""CLIP score: agreement with torchmetrics, invariances, conventions and weight resolution.

Everything runs on open_clip's tiny random model (no CLIP weights are available offline).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.hashing import sha256_file
from evalkit.metrics.base import MetricContext
from evalkit.metrics.clip_models import (
    TINY_ARCH,
    TINY_RANDOM,
    clip_cache_dir,
    fetch_clip,
    hub_offline,
    load_clip,
)
from evalkit.metrics.clip_score import DEFAULT_BATCH_SIZE, ClipScore, make_clip_score
from evalkit.suites.base import Item, Suite

PROMPTS = [
    ("p0", "a red cube on a blue sphere", "colors"),
    ("p1", "two dogs playing in the snow", "counting"),
    ("p2", "a green triangle left of a yellow circle", "positional"),
    ("p3", "three cats", "counting"),
    ("p4", "a purple banana", "colors"),
    ("p5", "a stop sign", None),
]


class _Suite(Suite):
    name = "clip-test"

    def items(self) -> list[Item]:
        return [Item(i, p, c) for i, p, c in PROMPTS]


@pytest.fixture(scope="module")
def tiny():
    return load_clip(TINY_RANDOM, allow_random_weights=True)


def _metric(tiny, batch_size: int = 64, n_resamples: int = 500) -> ClipScore:
    model, preprocess, tokenizer, info = tiny
    return ClipScore(
        model, preprocess, tokenizer, info, batch_size=batch_size, n_resamples=n_resamples
    )


def _images(n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g)


def _smooth_images(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Natural-looking (low-frequency) images: upsampled coarse noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 6, 6), generator=g) * 255
    return (
        torch.nn.functional.interpolate(coarse, size=size, mode="bilinear").round().to(torch.uint8)
    )


def _pairs(k: int) -> tuple[list[Item], list[int]]:
    """Every prompt with ``k`` images: items and sample indices, one per image."""
    items = [Item(i, p, c) for i, p, c in PROMPTS for _ in range(k)]
    return items, [s for _ in PROMPTS for s in range(k)]


# ---------------------------------------------------------------- torchmetrics oracle


class _OpenClipAsHF(torch.nn.Module):
    """Exposes an open_clip model through the two methods torchmetrics' CLIPScore calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = (
            types.SimpleNamespace()
        )  # no text_config: torchmetrics skips its own truncation

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.model.encode_text(input_ids)


class _OpenClipProcessor:
    """A CLIPProcessor look-alike: open_clip's own PIL transform and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.transform = image_transform_v2(
            PreprocessCfg(**model.visual.preprocess_cfg), is_train=False
        )
        self.tokenizer = tokenizer

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True) -> dict:
        from torchvision.transforms.functional import to_pil_image

        if images is not None:
            return {"pixel_values": torch.stack([self.transform(to_pil_image(i)) for i in images])}
        ids = self.tokenizer(text)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_torchmetrics_scale_matches_torchmetrics_clipscore_on_same_model(tiny):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchmetrics.multimodal.clip_score import CLIPScore

    model, _, tokenizer, _ = tiny
    adapter, processor = _OpenClipAsHF(model).eval(), _OpenClipProcessor(model, tokenizer)
    items, samples = _pairs(2)
    images = _images(
        len(items)
    )  # 32x32: open_clip's PIL resize is the identity, no resampler differences
    ours = _metric(tiny, batch_size=5)
    ours.update(images, items, samples)
    result = ours.compute()

    reference = CLIPScore(model_name_or_path=lambda: (adapter, processor))
    with torch.no_grad():
        for start in range(0, len(items), 4):
            chunk = slice(start, start + 4)
            reference.update(list(images[chunk]), [i.prompt for i in items[chunk]])
        unclamped = float(reference.score / reference.n_samples)
        clamped = float(reference.compute())
        per_pair, _ = _clip_score_update(
            list(images), [i.prompt for i in items], adapter, processor
        )

    assert unclamped > 0, "fixture should give a positive mean so the clamp is not what agrees"
    assert result.values["clip_score_torchmetrics"] == pytest.approx(clamped, rel=1e-5)
    mean_over_images = float(np.mean([result.per_item[i.id] for i in items]))  # equal K per prompt
    assert 100 * mean_over_images == pytest.approx(unclamped, rel=1e-5)
    per_prompt = per_pair.double().view(len(PROMPTS), 2).mean(dim=1) / 100
    for (pid, _, _), ref in zip(PROMPTS, per_prompt.tolist(), strict=True):
        assert result.per_item[pid] == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_tensor_preprocessing_matches_open_clip_pil_pipeline_within_one_level(tiny):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.transforms.functional import to_pil_image

    model, preprocess, _, _ = tiny
    pil = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    for size in [(32, 32), (48, 40), (100, 37), (20, 28), (256, 256)]:
        images = _smooth_images(3, size)
        ours = preprocess(images)
        theirs = torch.stack([pil(to_pil_image(i)) for i in images])
        assert ours.shape == theirs.shape == (3, 3, 32, 32)
        levels = (ours - theirs).abs() * std * 255  # difference in uint8 levels
        assert levels.max() <= 1.0 + 1e-3, size


def test_preprocessing_recipe_records_resize_crop_and_normalisation(tiny):
    recipe = tiny[1].recipe()
    assert recipe["interpolation"] == "bicubic" and recipe["antialias"] is True
    assert recipe["crop"] == "center 32x32"
    assert recipe["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert recipe["std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])


# ---------------------------------------------------------------- invariances and conventions


def _updated(metric: ClipScore, images, items, samples, sizes) -> ClipScore:
    """``metric`` fed the pairs in consecutive updates of ``sizes`` (cycled) images."""
    start, k = 0, 0
    while start < len(items):
        size = sizes[k % len(sizes)]
        metric.update(
            images[start : start + size], items[start : start + size], samples[start : start + size]
        )
        start, k = start + size, k + 1
    return metric


def test_score_does_not_depend_on_batch_size_or_update_split(tiny):
    # 6 prompts × 3 images = 18 images over micro-batches of 4: four full ones and a padded one
    items, samples = _pairs(3)
    images = _images(len(items), size=(40, 48))
    whole = _metric(tiny, batch_size=4)
    whole.update(images, items, samples)
    a = whole.compute()
    for sizes in ([1], [3], [5], [2, 7, 1]):
        b = _updated(_metric(tiny, batch_size=4), images, items, samples, sizes).compute()
        assert b.per_item == a.per_item, f"updates of {sizes}"  # bit for bit
        assert b.value == a.value and b.values == a.values and b.interval == a.interval


def test_text_and_image_encoders_run_on_full_micro_batches_only(tiny, monkeypatch):
    model = tiny[0]
    shapes: list[tuple[str, int]] = []
    for name in ("encode_image", "encode_text"):
        original = getattr(model, name)

        def spy(x, _name=name, _original=original, **kw):
            shapes.append((_name, x.shape[0]))
            return _original(x, **kw)

        monkeypatch.setattr(model, name, spy)
    items, samples = _pairs(2)  # 12 images, 6 prompts
    metric = _updated(_metric(tiny, batch_size=5), _images(len(items)), items, samples, [3])
    metric.compute()
    assert shapes and all(n == 5 for _, n in shapes)
    assert sum(1 for name, _ in shapes if name == "encode_image") == 3  # 5 + 5 + 2 padded
    assert metric.compute().manifest["batch_size"] == 5


def test_default_batch_size_is_fixed_not_the_runs_batch_size(tmp_path):
    ctx = MetricContext(
        suite=_Suite(), resolution=64, cache_dir=tmp_path, allow_random_weights=True, batch_size=7
    )
    metric = make_clip_score({"model": TINY_RANDOM}, ctx)
    assert metric.batch_size == DEFAULT_BATCH_SIZE == 32


def test_results_are_deterministic_across_fresh_model_loads(tiny):
    items, samples = _pairs(2)
    images = _images(len(items))
    fresh = load_clip(TINY_RANDOM, allow_random_weights=True)
    assert fresh[3].weights_sha256 == tiny[3].weights_sha256
    results = []
    for loaded in (tiny, fresh):
        metric = _metric(loaded)
        metric.update(images, items, samples)
        results.append(metric.compute().to_dict())
    assert results[0] == results[1]


def test_scales_relate_as_documented(tiny):
    items, samples = _pairs(2)
    metric = _metric(tiny)
    metric.update(_images(len(items)), items, samples)
    r = metric.compute()
    per_prompt = np.array(list(r.per_item.values()))
    assert r.value == pytest.approx(per_prompt.mean(), rel=1e-12)
    assert r.values["clip_score_x100"] == pytest.approx(100 * r.value, rel=1e-12)
    # equal images per prompt: mean over images == mean over prompts
    assert r.values["clip_score_torchmetrics"] == pytest.approx(max(100 * r.value, 0.0), rel=1e-9)
    assert 0.0 <= r.values["hessel_clipscore"] <= 2.5
    assert all(-1.0 <= v <= 1.0 for v in per_prompt)
    assert r.manifest["num_images"] == len(items) and r.manifest["num_prompts"] == len(PROMPTS)
    assert r.manifest["backbone"] == TINY_RANDOM
    assert r.manifest["weights_sha256"] == tiny[3].weights_sha256


def test_per_category_means_and_intervals_contain_the_means(tiny):
    items, samples = _pairs(2)
    metric = _metric(tiny)
    metric.update(_images(len(items), seed=3), items, samples)
    r = metric.compute()
    lo, hi = r.interval
    assert lo <= r.value <= hi
    assert set(r.per_category) == {"colors", "counting", "positional"}
    for cat, entry in r.per_category.items():
        ids = [pid for pid, _, c in PROMPTS if c == cat]
        assert entry["n"] == len(ids)
        assert entry["value"] == pytest.approx(np.mean([r.per_item[i] for i in ids]), rel=1e-12)
        assert entry["interval"][0] <= entry["value"] <= entry["interval"][1]


def test_prompt_is_encoded_once_per_item(tiny, monkeypatch):
    encoded: list[str] = []
    original = ClipScore._encode_texts
    monkeypatch.setattr(
        ClipScore, "_encode_texts", lambda self, p: encoded.extend(p) or original(self, p)
    )
    metric = _metric(tiny, batch_size=4)
    items, samples = _pairs(3)
    images = _images(len(items))
    metric.update(images[:9], items[:9], samples[:9])
    metric.update(images[9:], items[9:], samples[9:])
    metric.compute()
    assert sorted(encoded) == sorted(p for _, p, _ in PROMPTS)


def test_adding_the_same_image_twice_is_refused(tiny):
    metric = _metric(tiny)
    item = Item("p0", "a red cube")
    metric.update(_images(1), [item], [0])
    with pytest.raises(InputError, match="added twice"):
        metric.update(_images(1), [item], [0])


def test_same_item_id_with_another_prompt_is_refused(tiny):
    metric = _metric(tiny)
    with pytest.raises(InputError, match="two different prompts"):
        metric.update(_images(2), [Item("a", "one"), Item("a", "two")], [0, 1])


def test_non_uint8_images_are_refused(tiny):
    with pytest.raises(InputError, match="uint8"):
        _metric(tiny).update(torch.rand(1, 3, 32, 32), [Item("a", "x")], [0])


def test_compute_without_images_is_an_error(tiny):
    with pytest.raises(InputError, match="no images"):
        _metric(tiny).compute()


def test_overlong_prompt_is_truncated_with_one_warning(tiny, capsys):
    long_a = "a very detailed photograph of " + "a small red cube and " * 40
    long_b = "an oil painting of " + "many blue birds " * 50
    items = [Item("short", "a cat"), Item("long_a", long_a), Item("long_b", long_b)]
    metric = _metric(tiny)
    metric.update(_images(3), items, [0, 0, 0])
    r = metric.compute()
    err = capsys.readouterr().err
    assert err.count("truncated") == 1 and "long_a" in err
    assert r.manifest["truncated_prompts"] == 2
    assert np.isfinite(r.per_item["long_b"])


# ---------------------------------------------------------------- weights resolution


def _ctx(tmp_path: Path, allow: bool = False) -> MetricContext:
    return MetricContext(
        suite=_Suite(), resolution=64, cache_dir=tmp_path, allow_random_weights=allow
    )


def test_registry_entry_resolves_to_make_clip_score():
    from evalkit.registry import METRICS

    assert METRICS.get("clip_score") is make_clip_score


def test_missing_weights_error_names_the_fetch_command(tmp_path):
    with pytest.raises(MissingWeightsError) as exc:
        make_clip_score({}, _ctx(tmp_path))
    message = str(exc.value)
    assert "evalkit fetch clip --model ViT-L-14-quickgelu --pretrained openai" in message
    assert "--weights PATH" in message


def test_tiny_random_is_refused_without_allow_random_weights(tmp_path):
    with pytest.raises(UsageError, match="allow-random-weights"):
        make_clip_score({"model": TINY_RANDOM}, _ctx(tmp_path))


def test_tiny_random_with_allow_random_weights_is_uncalibrated(tmp_path):
    metric = make_clip_score({"model": TINY_RANDOM, "batch_size": 2}, _ctx(tmp_path, allow=True))
    metric.update(_images(2), [Item("a", "x"), Item("b", "y")], [0, 0])
    result = metric.compute()
    assert result.uncalibrated is True
    assert metric.batch_size == 2


def test_unknown_option_and_bad_batch_size_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown option"):
        make_clip_score({"modle": "x"}, _ctx(tmp_path, allow=True))
    with pytest.raises(UsageError, match="batch_size"):
        make_clip_score({"model": TINY_RANDOM, "batch_size": 0}, _ctx(tmp_path, allow=True))


def test_unknown_model_and_quickgelu_mismatch_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown CLIP model"):
        load_clip("ViT-Q-99", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="ViT-L-14-quickgelu"):
        load_clip("ViT-L-14", "openai", cache_dir=tmp_path)


def _saved_tiny_weights(tiny, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save(tiny[0].state_dict(), path)
    return path


def _text_features(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(tokenizer(["a red cube"]))


def test_fetch_from_local_file_fills_cache_and_load_verifies_sha256(tiny, tmp_path):
    source = _saved_tiny_weights(tiny, tmp_path)
    cache = tmp_path / "cache"
    installed = fetch_clip(TINY_ARCH, "unit", cache_dir=cache, source=source)
    assert installed.parent == clip_cache_dir(TINY_ARCH, "unit", cache)
    sidecar = installed.with_name(installed.name + ".sha256").read_text().split()[0]
    assert sidecar == sha256_file(source)

    model, _, tokenizer, info = load_clip(TINY_ARCH, "unit", cache_dir=cache)
    assert info.weights_source == "cache" and info.weights_sha256 == sidecar
    assert info.uncalibrated is True  # the toy architecture, whatever its weights
    assert torch.equal(_text_features(model, tokenizer), _text_features(tiny[0], tiny[2]))

    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    installed.write_bytes(bytes(data))
    with pytest.raises(MissingWeightsError, match="sha256"):
        load_clip(TINY_ARCH, "unit", cache_dir=cache)


def test_explicit_weights_path_wins_over_the_cache(tiny, tmp_path):
    source = _saved_tiny_weights(tiny, tmp_path)
    model, _, _, info = load_clip(
        TINY_ARCH, "unit", weights_path=source, cache_dir=tmp_path / "empty"
    )
    assert info.weights_source == "weights_path" and info.weights_sha256 == sha256_file(source)
    with pytest.raises(InputError, match="not found"):
        load_clip(TINY_ARCH, "unit", weights_path=tmp_path / "nope.pt")


def test_failed_download_is_a_clear_missing_weights_error(tmp_path, monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(MissingWeightsError) as exc:
        fetch_clip("ViT-B-32-quickgelu", "openai", cache_dir=tmp_path)
    message = str(exc.value)
    assert "could not download" in message and "Name or service not known" in message
    assert "--weights PATH" in message
    assert not clip_cache_dir("ViT-B-32-quickgelu", "openai", tmp_path).exists()


def test_fetch_of_unknown_tag_lists_the_known_tags(tmp_path):
    with pytest.raises(UsageError, match="openai"):
        fetch_clip("ViT-B-32-quickgelu", "no-such-tag", cache_dir=tmp_path)


def test_hub_offline_sets_and_restores_the_offline_flag(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = constants.HF_HUB_OFFLINE
    with hub_offline():
        assert constants.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert before == constants.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ
