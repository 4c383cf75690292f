"""The in-repo Imagen cascade behind the :class:`Generator` interface.

Model card example (``adapter = "imagen"``)::

    [weights.base]
    path = "imagen_tiny/base.safetensors"
    sha256 = "…"
    [weights.sr64]
    path = "imagen_tiny/sr64.safetensors"
    sha256 = "…"
    [sampling]
    steps = [64, 32]        # one value for every stage, or one per stage
    guidance = [5.0, 2.0]
    aug_level = 0.2          # super-resolution stages only

With no card (neither the ``card`` option nor ``context.extra["card"]``), no ``checkpoints``
and no ``random`` option, the bundled model card ``evalkit/model_cards/imagen-shapes.toml`` is used
(:data:`DEFAULT_CARD`), so ``evalkit run --model imagen`` works offline out of the box; its
``[sampling]``/``[options]`` are defaults that explicit options override.

Without weights, ``random = "tiny"`` (or ``"shapes"``, the bundled model's configs) builds
randomly initialised stages, allowed only with ``context.allow_random_weights`` (the
generator is then marked uncalibrated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import evalkit
from evalkit.batching import single_threaded_ops
from evalkit.cards import BUNDLED_CARDS_DIR, load_card
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.generators.base import (
    GenerationRequest,
    Generator,
    GeneratorContext,
    StageImages,
    float_to_uint8,
)
from evalkit.hashing import sha256_file, sha256_json
from evalkit.imagen import CODE_VERSION
from evalkit.imagen.cascade import Cascade, Stage
from evalkit.imagen.checkpoint import load_stage
from evalkit.imagen.presets import CASCADES, TINY_TEXT, preset
from evalkit.imagen.text_encoders import build_text_encoder
from evalkit.imagen.unet import build_model, randomize_
from evalkit.options import as_bool, as_int, check_known
from evalkit.spec import parse_value

#: the component named in option errors
WHERE = "model 'imagen'"
#: the card ``--model imagen`` uses when given no card, checkpoints or random option
DEFAULT_CARD = BUNDLED_CARDS_DIR / "imagen-shapes.toml"

SAMPLING_KEYS = (
    "steps",
    "guidance",
    "sampler",
    "eta",
    "thresholding",
    "percentile",
    "max_threshold",
    "aug_level",
)
OPTION_KEYS = {
    "card",
    "checkpoints",
    "stages",
    "random",
    "random_seed",
    "text_encoder",
    "text_encoder_path",
    "fetch",
    "composable",
    "forward_batch",
    "batch_size",
    *SAMPLING_KEYS,
}


def _per_stage(value: Any, n: int, key: str) -> list[Any]:
    """A scalar for every stage, or one value per stage (a list, or ``"4,1"`` from the command line)."""
    if isinstance(value, str) and "," in value:
        value = [parse_value(v) for v in value.split(",")]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise UsageError(f"imagen option {key!r} has {len(value)} values for {n} stages")
        return list(value)
    return [value] * n


def _checkpoint_specs(options: dict[str, Any]) -> list[tuple[str, Path, str | None]]:
    """(key, path, sha256) of every stage checkpoint named by the card or the ``checkpoints`` option."""
    specs: list[tuple[str, Path, str | None]] = []
    card = options.get("card")
    if card is not None and card.weights:
        wanted = options.get("stages") or [k for k in card.weights if k != "text_encoder"]
        for key in wanted:
            if key not in card.weights:
                raise UsageError(
                    f"model card {card.path}: no weights.{key} (have {sorted(card.weights)})"
                )
            w = card.weights[key]
            if w.path is None:
                raise MissingWeightsError(
                    f"model card {card.path}: weights.{key} has only a hub id ({w.hub_id}); "
                    f"run `evalkit fetch {card.name}` first"
                )
            specs.append((key, w.path, w.sha256))
    for i, item in enumerate(options.get("checkpoints") or []):
        if isinstance(item, dict):
            specs.append(
                (str(item.get("key", f"stage{i}")), Path(item["path"]), item.get("sha256"))
            )
        else:
            specs.append((f"stage{i}", Path(item), None))
    return specs


def _load_stages(specs, device: str) -> tuple[list[Any], dict[str, str]]:
    stages, hashes = [], {}
    for key, path, sha in specs:
        if not path.is_file():
            raise MissingWeightsError(
                f"Imagen checkpoint for stage {key!r} not found at {path}; train it with "
                "`evalkit train imagen` (or copy the file there), or run with random weights "
                "(--allow-random-weights, option random='tiny') for plumbing only"
            )
        actual = sha256_file(path)
        if sha is not None and actual != sha.lower():
            raise InputError(
                f"Imagen checkpoint {path} (stage {key!r}) has sha256 {actual}, the card expects {sha}: "
                "the file is corrupt or the card is out of date"
            )
        stages.append(load_stage(path, device=device))
        hashes[key] = actual
    order = sorted(range(len(stages)), key=lambda i: stages[i].config.resolution)
    return [stages[i] for i in order], hashes


def text_encoder_spec(value: Any) -> dict[str, Any]:
    """``"tiny"``, ``"minilm"``, ``"t5:<name>"`` or a spec dict → spec dict."""
    if isinstance(value, dict):
        return dict(value)
    if value in (None, "tiny"):
        return dict(TINY_TEXT)
    if value == "minilm":
        return {
            "kind": "minilm",
            "name": "sentence-transformers/all-MiniLM-L6-v2",
            "max_length": 64,
        }
    if isinstance(value, str) and value.startswith("t5:"):
        return {"kind": "t5", "name": value[3:], "max_length": 128, "dtype": "float32"}
    raise UsageError(
        f"imagen option text_encoder {value!r}: use 'tiny', 'minilm', 't5:<name>' or a spec table"
    )


def _random_stages(
    options: dict[str, Any], encoder, device: str
) -> tuple[list[Any], dict[str, Any]]:
    name = options.get("random") or "tiny"
    names = CASCADES.get(name, (name,)) if isinstance(name, str) else tuple(name)
    seed = as_int(options.get("random_seed", 0), "random_seed", WHERE)
    stages = []
    for k, preset_name in enumerate(names):
        cfg = preset(preset_name)
        model_cfg = dataclasses.replace(cfg.model, text_dim=encoder.dim)
        cfg = cfg.replace(model=model_cfg, text_encoder=dict(encoder.spec))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            model = build_model(cfg.model)
        stages.append(Stage(cfg, randomize_(model, seed + k).to(device)))
    ident = {
        "presets": list(names),
        "seed": seed,
        "configs": sha256_json([s.config.to_dict() for s in stages]),
    }
    return stages, ident


class ImagenGenerator(Generator):
    """A :class:`~evalkit.imagen.cascade.Cascade` with per-stage sampling settings."""

    def __init__(
        self,
        cascade,
        sampling,
        weights: dict[str, Any],
        context: GeneratorContext,
        options: dict[str, Any],
        uncalibrated: bool,
        name: str,
    ):
        self.cascade, self.sampling, self.weights, self.context = (
            cascade,
            sampling,
            weights,
            context,
        )
        self.composable = as_bool(options.get("composable", True), "composable", WHERE)
        self.batch_size = as_int(options.get("batch_size", 16), "batch_size", WHERE, minimum=1)
        self.uncalibrated, self.name = uncalibrated, name

    @property
    def native_resolution(self) -> int:
        return self.cascade.resolution

    def settings(self) -> dict[str, Any]:
        native, target = self.native_resolution, self.context.resolution
        return {
            "stages": [
                {"name": st.config.name, "resolution": st.config.resolution, **s.to_dict()}
                for st, s in zip(self.cascade.stages, self.sampling, strict=True)
            ],
            "composable": self.composable,
            "forward_batch": self.cascade.forward_batch,
            "native_resolution": native,
            "resize": None
            if native == target
            else {"from": native, "to": target, "method": "bicubic-antialias"},
        }

    def fingerprint(self) -> dict[str, Any]:
        return {
            "adapter": "imagen",
            "weights": self.weights,
            "text_encoder": self.cascade.encoder.spec,
            "settings": self.settings(),
            "code_version": f"evalkit-{evalkit.__version__}/{CODE_VERSION}",
        }

    def sample(self, requests: Sequence[GenerationRequest], return_stages: bool = False):
        """The cascade's float output (every stage's too when ``return_stages``) for ``requests``."""
        return self.cascade.sample(
            [r.prompt for r in requests],
            [r.seed for r in requests],
            self.sampling,
            return_stages=return_stages,
            composable=self.composable,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        chunks = []
        with single_threaded_ops(self.cascade.device):  # the resize too, on a CPU
            for start in range(0, len(requests), self.batch_size):
                images = self.sample(requests[start : start + self.batch_size]).images
                chunks.append(float_to_uint8(self._resize(images)))
        if not chunks:
            r = self.context.resolution
            return torch.zeros(0, 3, r, r, dtype=torch.uint8)
        return torch.cat(chunks)

    def stage_names(self) -> list[str]:
        """``"<stage name>@<resolution>"`` per stage, base first (e.g. ``["base@32", "sr64@64"]``)."""
        return [f"{st.config.name}@{st.config.resolution}" for st in self.cascade.stages]

    def stage_resolutions(self) -> list[int]:
        """Each stage's native side length, base first."""
        return [st.config.resolution for st in self.cascade.stages]

    def generate_stages(self, requests: Sequence[GenerationRequest]) -> list[StageImages]:
        """Every stage's images at the context resolution, from one cascade pass per batch.

        Each stage is resized like :meth:`generate`'s output, so the last entry equals
        ``generate(requests)`` bit for bit; ``latency_s`` sums the stage's time over the batches.
        """
        names = self.stage_names()
        chunks: list[list[torch.Tensor]] = [[] for _ in names]
        latency = [0.0] * len(names)
        with single_threaded_ops(self.cascade.device):
            for start in range(0, len(requests), self.batch_size):
                out = self.sample(requests[start : start + self.batch_size], return_stages=True)
                for k, images in enumerate(out.stages):
                    chunks[k].append(float_to_uint8(self._resize(images)))
                    latency[k] += out.latency_s[k]
        r = self.context.resolution
        empty = torch.zeros(0, 3, r, r, dtype=torch.uint8)
        return [
            StageImages(
                name=name,
                native_resolution=st.config.resolution,
                images=torch.cat(parts) if parts else empty,
                latency_s=seconds,
            )
            for name, st, parts, seconds in zip(
                names, self.cascade.stages, chunks, latency, strict=True
            )
        ]

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        r = self.context.resolution
        if images.shape[-1] == r:
            return images
        out = F.interpolate(
            images.float(), size=(r, r), mode="bicubic", antialias=True, align_corners=False
        )
        return out.clamp(-1.0, 1.0)


def _with_default_card(options: dict[str, Any], context: GeneratorContext) -> dict[str, Any]:
    """``options`` with the card to use: the given one, the registry's, or the bundled :data:`DEFAULT_CARD`."""
    if options.get("card") is not None:
        return options
    card = context.extra.get("card")
    if card is not None:
        return {**options, "card": card}
    if options.get("checkpoints") or options.get("random"):
        return options
    if not DEFAULT_CARD.is_file():
        raise MissingWeightsError(
            f"imagen: no card, checkpoints or random option given, and the bundled card {DEFAULT_CARD} "
            "is missing; reinstall evalkit (the card and its weights ship in evalkit/model_cards/), "
            "train one (scripts/train_bundled_imagen.sh), or pass --model-opt checkpoints=[...]"
        )
    card = load_card(DEFAULT_CARD)
    return {**card.options, **card.sampling, **options, "card": card}


def make_imagen_generator(options: dict[str, Any], context: GeneratorContext) -> Generator:
    """Build the cascade from card weights / ``checkpoints`` (sha256-verified) or, if allowed, random weights.

    With none of card, checkpoints and random, the bundled card :data:`DEFAULT_CARD` is used.
    """
    options = dict(options)
    check_known(options, OPTION_KEYS, WHERE)
    options = _with_default_card(options, context)
    card = options.get("card")
    device = context.device
    specs = _checkpoint_specs(options)
    text_load: dict[str, Any] = {}
    if options.get("text_encoder_path"):
        text_load["path"] = str(options["text_encoder_path"])
    if as_bool(options.get("fetch", False), "fetch", WHERE):
        text_load["fetch"] = True
    weights: dict[str, Any]  # stage key → checkpoint sha256, or {"random": presets and seed}
    if specs:
        if options.get("random"):
            raise UsageError(
                "imagen options: give either checkpoints (card weights) or random, not both"
            )
        stages, weights = _load_stages(specs, device)
        encoder = build_text_encoder(stages[0].config.text_encoder, context.cache_dir, **text_load)
        uncalibrated = False
    else:
        if not context.allow_random_weights:
            where = (
                f"model card {card.path} declares no weights"
                if card is not None
                else "no checkpoints given"
            )
            raise MissingWeightsError(
                f"imagen: {where}; point the card's [weights.<stage>] at trained checkpoints, "
                "or allow random weights (--allow-random-weights) for plumbing tests only"
            )
        encoder = build_text_encoder(
            text_encoder_spec(options.get("text_encoder")), context.cache_dir, **text_load
        )
        stages, ident = _random_stages(options, encoder, device)
        weights = {"random": ident}
        uncalibrated = True
    encoder.to(device)
    forward_batch = options.get("forward_batch", 4)
    if forward_batch is not None:  # None or 0: the whole batch in one forward
        forward_batch = as_int(forward_batch, "forward_batch", WHERE, minimum=0) or None
    cascade = Cascade(encoder, stages, device=device, forward_batch=forward_batch)
    n = len(stages)
    overrides = {k: _per_stage(options[k], n, k) for k in SAMPLING_KEYS if k in options}
    sampling = []
    for k, st in enumerate(stages):
        changes = {key: vals[k] for key, vals in overrides.items()}
        sampling.append(st.config.sampling.replace(**changes))
    name = card.name if card is not None else "imagen"
    return ImagenGenerator(cascade, sampling, weights, context, options, uncalibrated, name)
