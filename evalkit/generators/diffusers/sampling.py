"""Sampling a loaded diffusers pipeline: the :class:`DiffusersGenerator`.

Stable Diffusion, SDXL, PixArt and other single-stage pipelines are called once per micro-batch
(:meth:`DiffusersGenerator._sample_single`); the DeepFloyd IF cascade encodes the prompts once
with stage I and passes the embeddings through both stages
(:meth:`DiffusersGenerator._sample_if`). Composed prompts go through
:mod:`evalkit.generators.diffusers.composable_unet`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import evalkit
from evalkit.batching import micro_batches
from evalkit.composable import Concept, is_composed, parse_composable
from evalkit.errors import GenerationError, UsageError
from evalkit.generators.base import (
    GenerationRequest,
    Generator,
    GeneratorContext,
    float_to_uint8,
)
from evalkit.generators.diffusers.composable_unet import Composition, composed_unet
from evalkit.generators.diffusers.loading import call_params, pipeline_family
from evalkit.generators.diffusers.options import NON_PIXEL_SETTINGS, dtype_name

#: bumped when the adapter changes the pixels it makes
ADAPTER_VERSION = "diffusers-adapter-v1"


@dataclass
class Stage:
    """One loaded pipeline with its sampling settings."""

    pipe: Any
    source: dict[str, Any]
    weights: dict[str, Any]
    steps: int
    guidance: float


class DiffusersGenerator(Generator):
    """A diffusers pipeline (or the DeepFloyd IF stage I + II cascade)."""

    def __init__(
        self,
        stages: list[Stage],
        context: GeneratorContext,
        *,
        name: str,
        dtype: torch.dtype,
        offload: str,
        batch_size: int,
        negative_prompt: str | None,
        composable: bool,
        native_resolution: int,
        noise_level: int | None,
        call_kwargs: dict[str, Any],
    ) -> None:
        self.stages, self.context, self.name = stages, context, name
        self.dtype, self.offload, self.batch_size = dtype, offload, batch_size
        self.negative_prompt, self.composable = negative_prompt, composable
        self._native, self.noise_level, self.call_kwargs = (
            native_resolution,
            noise_level,
            call_kwargs,
        )
        self.family = pipeline_family(stages[0].pipe)

    @property
    def pipe(self) -> Any:
        """The (first-stage) pipeline."""
        return self.stages[0].pipe

    @property
    def native_resolution(self) -> int:
        return self._native

    @property
    def pipeline_class(self) -> str:
        return "+".join(type(st.pipe).__name__ for st in self.stages)

    def settings(self) -> dict[str, Any]:
        native, target = self._native, self.context.resolution
        one = len(self.stages) == 1
        steps = [st.steps for st in self.stages]
        guidance = [st.guidance for st in self.stages]
        schedulers = [type(st.pipe.scheduler).__name__ for st in self.stages]
        out: dict[str, Any] = {
            "pipeline_class": self.pipeline_class,
            "steps": steps[0] if one else steps,
            "guidance": guidance[0] if one else guidance,
            "scheduler": schedulers[0] if one else schedulers,
            "negative_prompt": self.negative_prompt,
            "dtype": dtype_name(self.dtype),
            "safety_checker": "disabled",
            "watermarker": "disabled",
            "composable": self.composable,
            "pipeline_kwargs": dict(self.call_kwargs),
            "output_type": "np",
            "seeding": "one CPU torch.Generator per image, seeded with the request seed",
            "offload": self.offload,
            # images per pipeline call, the last call padded: fixes the low bits of the pixels
            "batch_size": self.batch_size,
            "native_resolution": native,
            "resize": None
            if native == target
            else {"from": native, "to": target, "method": "bicubic-antialias"},
        }
        if self.family == "if":
            out["prompt_encoding"] = "stage I encode_prompt, once, shared by all stages"
            if not one:
                out["noise_level"] = self.noise_level
        return out

    def fingerprint(self) -> dict[str, Any]:
        import diffusers  # optional extra; loaded already once a pipeline is
        import transformers

        settings = {k: v for k, v in self.settings().items() if k not in NON_PIXEL_SETTINGS}
        return {
            "adapter": "diffusers",
            "pipeline_class": self.pipeline_class,
            "model": [{**st.source, "weights": st.weights} for st in self.stages],
            "dtype": dtype_name(self.dtype),
            "scheduler": [
                {
                    "class": type(st.pipe.scheduler).__name__,
                    **_jsonable(dict(st.pipe.scheduler.config)),
                }
                for st in self.stages
            ],
            "settings": settings,
            "diffusers_version": diffusers.__version__,
            "transformers_version": transformers.__version__,
            "code_version": f"evalkit-{evalkit.__version__}/{ADAPTER_VERSION}",
        }

    # -- generation

    def _concepts(self, prompt: str) -> list[Concept] | None:
        """The prompt's concepts when it is composed (and composition is on), else None."""
        if not self.composable:
            return None
        concepts = parse_composable(prompt)
        return concepts if is_composed(concepts) else None

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        r = self.context.resolution
        out = torch.zeros(len(requests), 3, r, r, dtype=torch.uint8)
        parsed = [self._concepts(req.prompt) for req in requests]
        plain = [i for i, c in enumerate(parsed) if c is None]
        composed = [i for i, c in enumerate(parsed) if c is not None]
        if composed:
            self._check_composable()
        # plain and composed prompts never share a pipeline call, so neither changes the other;
        # every call has exactly batch_size images (the last padded with copies of its first)
        for group in (plain, composed):
            for where, idx in micro_batches(group, self.batch_size):
                images = self._sample([requests[i] for i in idx], [parsed[i] for i in idx])
                real = images[: where.stop - where.start]
                out[group[where]] = float_to_uint8(self._resize(real), (0.0, 1.0))
        return out

    def _check_composable(self) -> None:
        if self.family is None:
            raise UsageError(
                f"composable prompts (AND/NOT) are supported for Stable Diffusion, SDXL and "
                f"DeepFloyd IF pipelines, not {type(self.pipe).__name__}; rewrite the prompts or "
                "pass --model-opt composable=false to read AND/NOT literally"
            )
        if any(st.guidance <= 1.0 for st in self.stages):
            raise UsageError(
                "composable prompts (AND/NOT) need guidance > 1 in every stage (the concepts "
                "are combined in the pipeline's classifier-free guidance step)"
            )

    def _generators(self, requests: Sequence[GenerationRequest]) -> list[torch.Generator]:
        """One fresh generator per row (a padding copy of a request gets its own)."""
        return [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]

    def _encode_concepts(
        self, encode: Any, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``encode(chunk) -> (embeds, pooled or None)`` on fixed micro-batches of concept texts."""
        embeds, pooled = [], []
        for where, chunk in micro_batches(list(texts), self.batch_size):
            e, p = encode(chunk)
            embeds.append(e[: where.stop - where.start])
            if p is not None:
                pooled.append(p[: where.stop - where.start])
        return torch.cat(embeds), (torch.cat(pooled) if pooled else None)

    def _negatives(self, n: int) -> list[str] | None:
        return None if self.negative_prompt is None else [self.negative_prompt] * n

    def _sample(
        self, requests: Sequence[GenerationRequest], concepts: Sequence[list[Concept] | None]
    ) -> torch.Tensor:
        """Float images (N, 3, native, native) in [0, 1]."""
        generators = self._generators(requests)
        if self.family == "if":
            images = self._sample_if(requests, concepts, generators)
        else:
            images = self._sample_single(requests, concepts, generators)
        return self._to_tensor(images, len(requests))

    def _sample_single(self, requests, concepts, generators) -> Any:
        st = self.stages[0]
        kwargs = dict(self.call_kwargs)
        if "height" in call_params(st.pipe):
            kwargs["height"] = kwargs["width"] = self._native
        prompts = [c[0].text if c else r.prompt for r, c in zip(requests, concepts, strict=True)]
        call = {
            "prompt": prompts,
            "num_inference_steps": st.steps,
            "guidance_scale": st.guidance,
            "generator": generators,
            "output_type": "np",
            **kwargs,
        }
        if self.negative_prompt is not None:  # else the pipeline's own default ("" or None)
            call["negative_prompt"] = self._negatives(len(prompts))
        if concepts[0] is None:
            return st.pipe(**call).images
        composition = self._composition_sd(concepts)
        with composed_unet(st.pipe.unet, composition):
            return st.pipe(**call).images

    def _composition_sd(self, concepts: Sequence[list[Concept]]) -> Composition:
        pipe = self.pipe
        texts = [c.text for cs in concepts for c in cs]
        device = pipe._execution_device

        def encode(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
            if self.family == "sdxl":
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=chunk,
                    device=device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                )
                return embeds, pooled
            return pipe.encode_prompt(chunk, device, 1, False)[0], None

        with torch.no_grad():
            embeds, pooled = self._encode_concepts(encode, texts)
        weights = [[c.weight for c in cs] for cs in concepts]
        return Composition(weights, embeds, pooled, unet_rows=2 * self.batch_size)

    def _sample_if(self, requests, concepts, generators) -> Any:
        first = self.stages[0]
        pipe = first.pipe
        device = pipe._execution_device
        prompts = [c[0].text if c else r.prompt for r, c in zip(requests, concepts, strict=True)]
        with torch.no_grad():
            embeds, negative = pipe.encode_prompt(
                prompts,
                do_classifier_free_guidance=True,
                num_images_per_prompt=1,
                device=device,
                negative_prompt=self._negatives(len(prompts)),
                clean_caption=False,
            )
            composition = None
            if concepts[0] is not None:
                texts = [c.text for cs in concepts for c in cs]
                concept_embeds, _ = self._encode_concepts(
                    lambda chunk: (
                        pipe.encode_prompt(
                            chunk,
                            do_classifier_free_guidance=False,
                            num_images_per_prompt=1,
                            device=device,
                            clean_caption=False,
                        )[0],
                        None,
                    ),
                    texts,
                )
                weights = [[c.weight for c in cs] for cs in concepts]
                composition = Composition(
                    weights,
                    concept_embeds,
                    learned_variance=True,
                    unet_rows=2 * self.batch_size,
                )
        last = len(self.stages) - 1
        images: Any = None
        for k, st in enumerate(self.stages):
            call = {
                "prompt_embeds": embeds,
                "negative_prompt_embeds": negative,
                "num_inference_steps": st.steps,
                "guidance_scale": st.guidance,
                "generator": generators,
                "output_type": "np" if k == last else "pt",
            }
            if k == 0:
                call.update(self.call_kwargs)
            else:
                call.update(
                    image=images,
                    noise_level=self.noise_level,
                    height=self._native,
                    width=self._native,
                )
            context = (
                composed_unet(st.pipe.unet, composition)
                if composition is not None
                else contextlib.nullcontext()
            )
            with context:
                images = st.pipe(**call).images
        return images

    def _to_tensor(self, images: Any, n: int) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != n:
            raise GenerationError(
                f"diffusers pipeline {self.pipeline_class} returned {type(images).__name__} "
                f"{getattr(images, 'shape', '')}; expected {n} images"
            )
        h, w = images.shape[-2:]
        if (h, w) != (self._native, self._native):
            raise GenerationError(
                f"diffusers pipeline {self.pipeline_class} made {h}×{w} images, expected "
                f"{self._native}×{self._native}; set --model-opt native_resolution=N"
            )
        return images.float().cpu()

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        r = self.context.resolution
        if images.shape[-1] == r:
            return images
        out = F.interpolate(
            images, size=(r, r), mode="bicubic", antialias=True, align_corners=False
        )
        return out.clamp(0.0, 1.0)


def _jsonable(obj: Any) -> Any:
    """JSON-able form of a scheduler config (tuples → lists; odd values → strings)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return str(obj)
