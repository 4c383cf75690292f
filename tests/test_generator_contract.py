"""The generator contract (evalkit.testing) on every registered model, and on broken generators.

Every entry of the model registry gets a tiny configuration here (diffusers once per pipeline
family, on the tiny pipelines of tests/fixtures_diffusers.py; ``images:DIR`` on a folder of
PNGs); a built-in without one fails, model cards whose weights live on the hub are skipped with
the reason. The second half breaks one rule at a time and checks the contract catches it.
Generators are reached only through the registry.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.errors import GenerationError, MissingWeightsError
from evalkit.generators.base import (
    GenerationRequest,
    Generator,
    GeneratorContext,
    StageImages,
    float_to_uint8,
)
from evalkit.registry import MODELS
from evalkit.testing import (
    ContractViolation,
    check_batch_independence,
    check_fingerprint,
    check_generator,
    check_invalid_output_refused,
    check_nan_refused,
    check_output_format,
    check_request_identity,
    check_stages,
    contract_requests,
)
from evalkit.testing import generator_contract as contract
from tests.conftest import TinySuite
from tests.fixtures_fid import one_thread  # noqa: F401 (module fixture used by name)

RES = 32
HAS_DIFFUSERS = all(importlib.util.find_spec(m) for m in ("diffusers", "transformers"))
DIFFUSERS_KINDS = ("sd", "sdxl", "pixart", "if")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if HAS_DIFFUSERS:
        import huggingface_hub.constants as hub_constants

        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Case:
    """One model's tiny configuration for the contract."""

    model: str
    options: dict[str, Any]
    context: GeneratorContext
    variations: list[dict[str, Any]] = field(default_factory=list)
    neutral: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- the cases


@pytest.fixture(scope="module")
def pipes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny diffusers pipelines, saved once for the module."""
    from tests import fixtures_diffusers as fx

    root = tmp_path_factory.mktemp("pipes")
    if1, if2 = fx.save_if_pipelines(root / "if1", root / "if2")
    return {
        "sd": fx.save_sd_pipeline(root / "sd", with_safety_checker=False),
        "sdxl": fx.save_sdxl_pipeline(root / "sdxl"),
        "pixart": fx.save_pixart_pipeline(root / "pixart"),
        "if1": if1,
        "if2": if2,
    }


def _png_folder(root: Path, suite: TinySuite) -> Path:
    """One random 32 px PNG per item of ``suite``, named ``<item-id>_0.png``."""
    folder = root / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for item in suite.items():
        pixels = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{item.id}_0.png")
    return folder


def _manifest(root: Path, name: str, mapping: dict[str, str]) -> str:
    path = root / name
    lines = [json.dumps({"path": f, "id": i}) for i, f in mapping.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def case_for(param: str, request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    """The contract configuration of registry entry ``param`` (``diffusers[kind]`` per family)."""
    random_ok = GeneratorContext(resolution=RES, allow_random_weights=True)
    if param == "toy":
        return Case(
            "toy",
            {"native_resolution": 16},
            GeneratorContext(resolution=RES),
            variations=[{"num_blobs": 2}, {"noise": 3.0}, {"native_resolution": 24}],
            neutral=[{"delay_s": 0.001}],
        )
    if param == "reference":
        return Case("reference", {}, GeneratorContext(resolution=RES, suite=TinySuite(n=4)))
    if param == "images:DIR":
        suite = TinySuite(n=4)
        folder = _png_folder(tmp_path, suite)
        ids = [i.id for i in suite.items()]
        files = {i: f"{i}_0.png" for i in ids}
        swapped = {**files, ids[0]: files[ids[1]], ids[1]: files[ids[0]]}
        return Case(
            f"images:{folder}",
            {},
            GeneratorContext(resolution=RES, suite=suite),
            # the files act per request: a manifest that swaps two files changes their identities
            variations=[{"manifest": _manifest(tmp_path, "swapped.jsonl", swapped)}],
            neutral=[{"manifest": _manifest(tmp_path, "same.jsonl", files)}],
        )
    if param == "imagen":
        return Case(
            "imagen",
            {"random": "tiny", "steps": 2},
            random_ok,
            variations=[
                {"steps": 3},
                {"guidance": 2.0},
                {"sampler": "ddpm"},
                {"eta": 0.5},
                {"thresholding": "static"},
                {"aug_level": 0.3},
                {"random_seed": 1},
                {"forward_batch": 2},
                {"composable": False},
            ],
            neutral=[{"batch_size": 1}],
        )
    if param == "imagen-shapes":
        return Case("imagen-shapes", {"steps": "2,1"}, GeneratorContext(resolution=64))
    if param == "rerank":
        return Case(
            "rerank",
            {"model": "toy", "n": 3, "clip_model": "tiny-random", "batch_size": 2},
            random_ok,
            variations=[{"n": 2}, {"batch_size": 3}, {"model_opts": {"noise": 2.0}}],
        )
    if param.startswith("diffusers["):
        if not HAS_DIFFUSERS:
            pytest.skip("diffusers/transformers not installed")
        kind = param[len("diffusers[") : -1]
        pipes = request.getfixturevalue("pipes")
        options: dict[str, Any] = {"steps": 2, "batch_size": 2}
        if kind == "if":
            options.update(pipeline=str(pipes["if1"]), stage2=str(pipes["if2"]))
        else:
            options["pipeline"] = str(pipes[kind])
        if kind == "pixart":
            options["composable"] = False  # PixArt has no UNet to compose on: AND is literal
        variations = [
            {"steps": 3},
            {"guidance": 3.0},
            {"negative_prompt": "fog"},
            {"batch_size": 3},
            {"scheduler": "ddim" if kind == "if" else "ddpm"},  # IF's own is DDPM
        ]
        if kind == "if":
            variations.append({"noise_level": 100})
        return Case("diffusers", options, GeneratorContext(resolution=RES), variations)
    raise KeyError(param)


def registry_params() -> list[Any]:
    """Every registry entry (diffusers once per pipeline family) plus ``images:DIR``."""
    params: list[Any] = []
    for name, entry in MODELS.entries().items():
        if name == "diffusers":
            params += [f"diffusers[{k}]" for k in DIFFUSERS_KINDS]
        elif entry.source == "built-in" or name == "imagen-shapes":
            params.append(name)
        elif name.endswith(("sd-v1-5", "sdxl-base-1.0", "pixart-alpha-512", "deepfloyd-if-i-xl")):
            reason = f"model card {name}: weights on the hub (its adapter runs as diffusers[*])"
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
        else:
            reason = f"{entry.source}: not a built-in; its own package runs the contract"
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
    return params + ["images:DIR"]


@pytest.mark.parametrize("param", registry_params())
def test_registered_model_keeps_the_generator_contract(param, request, tmp_path):
    case = case_for(param, request, tmp_path)
    try:
        report = check_generator(
            case.model,
            case.options,
            case.context,
            variations=case.variations,
            neutral=case.neutral,
            batch_sizes=(1, 3),
        )
    except MissingWeightsError as exc:  # the bundled card's text encoder not in the cache
        pytest.skip(f"{param}: {exc}")
    assert {"output format", "batch independence", "fingerprint"} <= set(report.passed)
    assert "invalid output refused" in report.passed


def test_every_built_in_model_has_a_contract_case(request, tmp_path):
    built_in = [n for n, e in MODELS.entries().items() if e.source == "built-in"]
    assert {"toy", "reference", "imagen", "rerank", "diffusers"} <= set(built_in)
    for name in built_in:
        param = "diffusers[sd]" if name == "diffusers" else name
        if param.startswith("diffusers[") and not HAS_DIFFUSERS:
            continue
        assert case_for(param, request, tmp_path).model in (name, "diffusers")


def test_models_with_networks_are_checked_for_nan_and_staged_ones_per_stage():
    """The NaN and stage rules really run on the models that have networks and stages."""
    context = GeneratorContext(resolution=RES, allow_random_weights=True)
    report = check_generator("imagen", {"random": "tiny", "steps": 1}, context)
    assert "NaN refused" in report.passed and "per-stage outputs" in report.passed
    toy = check_generator("toy", {}, GeneratorContext(resolution=RES))
    assert set(toy.skipped) == {"NaN refused", "per-stage outputs"}


# --------------------------------------------------------------------------- broken generators


def _noise_image(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, n, n), generator=gen, dtype=torch.uint8)


class SeededToy(Generator):
    """A correct minimal generator: each image from its own seed; knobs break one rule each."""

    name = "seeded-toy"

    def __init__(self, options: dict[str, Any], context: GeneratorContext) -> None:
        self.resolution = context.resolution
        self.level = int(options.pop("level", 0))
        self.shared_rng = bool(options.pop("shared_rng", False))
        self.forget_level = bool(options.pop("forget_level", False))
        self.output = str(options.pop("output", "uint8"))
        self.seedless_identity = bool(options.pop("seedless_identity", False))
        self.ignore_seed = bool(options.pop("ignore_seed", False))
        self.chunk = int(options.pop("chunk", 0))  # "neutral" unless chunk_changes_pixels
        self.chunk_changes_pixels = bool(options.pop("chunk_changes_pixels", False))
        assert not options, options

    @property
    def native_resolution(self) -> int:
        return self.resolution

    def fingerprint(self) -> dict[str, Any]:
        return {"model": self.name, "level": 0 if self.forget_level else self.level}

    def request_identity(self, request: GenerationRequest) -> dict[str, Any]:
        if self.seedless_identity:
            return {"prompt": request.prompt}
        return {"prompt": request.prompt, "seed": request.seed}

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        shared = torch.Generator().manual_seed(requests[0].seed)
        images = []
        for r in requests:
            seed = 7 if self.ignore_seed else r.seed
            gen = shared if self.shared_rng else torch.Generator().manual_seed(seed)
            image = _noise_image(gen, self.resolution)
            image = image // 2 + self.level
            if self.chunk_changes_pixels:
                image = image + self.chunk
            images.append(image)
        out = torch.stack(images)
        if self.output == "float":
            return out.float()
        if self.output == "hwc":
            return out.permute(0, 2, 3, 1).contiguous()
        if self.output == "short":
            return out[:-1]
        return out


def seeded_toy(options: dict[str, Any], context: GeneratorContext) -> Generator:
    return SeededToy(dict(options), context)


CTX = GeneratorContext(resolution=8)


def _violation(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(ContractViolation, match=match):
        call()


def test_a_correct_minimal_generator_passes_every_applicable_rule():
    report = check_generator(seeded_toy, {}, CTX, variations=[{"level": 1}], neutral=[{"chunk": 3}])
    assert report.passed == [
        "output format",
        "batch independence",
        "request identity",
        "fingerprint",
        "invalid output refused",
    ]


@pytest.mark.parametrize(
    ("output", "match"),
    [("float", "dtype torch.float32"), ("hwc", r"shape \(4, 8, 8, 3\)"), ("short", r"\(3, 3")],
)
def test_output_of_wrong_dtype_layout_or_count_breaks_the_format_rule(output, match):
    gen = seeded_toy({"output": output}, CTX)
    _violation(lambda: check_output_format(gen, contract_requests(CTX), 8), match)


def test_noise_from_a_shared_rng_breaks_batch_independence():
    gen = seeded_toy({"shared_rng": True}, CTX)
    _violation(
        lambda: check_batch_independence(gen, contract_requests(CTX), 8),
        "batches of 1 give other pixels",
    )


def test_identity_without_the_seed_that_the_pixels_use_breaks_the_identity_rule():
    gen = seeded_toy({"seedless_identity": True}, CTX)
    _violation(
        lambda: check_request_identity(gen, contract_requests(CTX), 8),
        "same request identity but other pixels",
    )


def test_ignoring_the_seed_breaks_the_identity_rule_unless_declared_seed_insensitive():
    gen = seeded_toy({"ignore_seed": True}, CTX)
    requests = contract_requests(CTX)
    _violation(lambda: check_request_identity(gen, requests, 8), "another seed")
    check_request_identity(gen, requests, 8, seed_sensitive=False)


def test_option_missing_from_the_fingerprint_breaks_the_fingerprint_rule():
    opts = {"forget_level": True}
    _violation(
        lambda: check_fingerprint(seeded_toy, opts, CTX, variations=[{"level": 1}]),
        "level=1: fingerprint and request identities unchanged",
    )


def test_neutral_option_that_changes_pixels_breaks_the_fingerprint_rule():
    opts = {"chunk_changes_pixels": True}
    _violation(
        lambda: check_fingerprint(seeded_toy, opts, CTX, neutral=[{"chunk": 1}]),
        r"chunk=1 \(declared pixel-neutral\) changed the pixels",
    )


def test_two_variations_with_the_same_keys_break_the_fingerprint_rule():
    _violation(
        lambda: check_fingerprint(seeded_toy, {}, CTX, variations=[{"level": 1}, {"level": 1}]),
        "same keys as level=1",
    )


class StagedToy(SeededToy):
    """SeededToy with two stages; ``wrong_last`` makes the last stage differ from generate."""

    name = "staged-toy"

    def __init__(self, options: dict[str, Any], context: GeneratorContext) -> None:
        self.wrong_last = bool(options.pop("wrong_last", False))
        super().__init__(options, context)

    def stage_names(self) -> list[str]:
        return ["base@4", "sr@8"]

    def stage_resolutions(self) -> list[int]:
        return [4, 8]

    def generate_stages(self, requests: Sequence[GenerationRequest]) -> list[StageImages]:
        final = self.generate(requests)
        if self.wrong_last:
            final = final ^ 1
        return [StageImages("base@4", 4, final // 2, 0.0), StageImages("sr@8", 8, final, 0.0)]


def test_last_stage_unequal_to_generate_breaks_the_stage_rule():
    requests = contract_requests(CTX)
    assert check_stages(StagedToy({}, CTX), requests, 8) is True
    assert check_stages(SeededToy({}, CTX), requests, 8) is False
    _violation(
        lambda: check_stages(StagedToy({"wrong_last": True}, CTX), requests, 8),
        "last stage's images differ",
    )


class NetToy(SeededToy):
    """A generator with a network: float output of a linear layer, NaN handled or swallowed."""

    name = "net-toy"

    def __init__(self, options: dict[str, Any], context: GeneratorContext) -> None:
        self.swallow_nan = bool(options.pop("swallow_nan", False))
        super().__init__(options, context)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        x = super().generate(requests).float() / 255.0
        with torch.no_grad():
            y = self.net(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.swallow_nan:
            y = torch.nan_to_num(y)
        return float_to_uint8(y)


def net_toy(options: dict[str, Any], context: GeneratorContext) -> Generator:
    return NetToy(dict(options), context)


def test_nan_from_the_network_must_raise_generation_error_not_be_swallowed():
    requests = contract_requests(CTX)
    assert check_nan_refused(net_toy, {}, CTX, requests) is True
    _violation(lambda: check_nan_refused(net_toy, {"swallow_nan": True}, CTX, requests), "accepted")
    assert (
        check_nan_refused(seeded_toy, {}, CTX, requests) is False
    )  # no network: nothing to poison


def test_nan_hooks_are_removed_after_the_check():
    requests = contract_requests(CTX)
    gen = net_toy({}, CTX)
    check_nan_refused(lambda options, context: gen, {}, CTX, requests)
    assert not gen.net[0]._forward_hooks and not gen.net._forward_hooks
    check_output_format(gen, requests, 8)  # the same object generates again


def test_invalid_output_rule_fails_when_the_runner_validation_lets_bad_output_through(
    monkeypatch,
):
    images = seeded_toy({}, CTX).generate(contract_requests(CTX))
    check_invalid_output_refused(images, 8, "seeded-toy")

    def lax_check(images, n, resolution, model):
        return images

    monkeypatch.setattr(contract, "check_output", lax_check)
    _violation(
        lambda: check_invalid_output_refused(images, 8, "seeded-toy"),
        "one image fewer than requests: accepted",
    )


def test_nan_and_infinity_are_refused_by_float_to_uint8_with_exit_code_6():
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(2, 3, 4, 4)
        x[1, 2, 3, 3] = bad
        with pytest.raises(GenerationError, match="NaN or infinite values in 1 image") as info:
            float_to_uint8(x)
        assert info.value.exit_code == 6


def test_check_generator_reports_every_violation_at_once():
    with pytest.raises(ContractViolation) as info:
        check_generator(
            seeded_toy,
            {"shared_rng": True, "forget_level": True},
            CTX,
            variations=[{"level": 1}],
        )
    message = str(info.value)
    assert "batch independence" in message and "fingerprint" in message
