"""Options of the ``diffusers`` model: the known keys, their values, and where pipelines come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from evalkit.errors import UsageError
from evalkit.options import as_choice
from evalkit.spec import parse_value

#: the component named in option errors
WHERE = "model 'diffusers'"

SAMPLING_KEYS = (
    "steps",
    "guidance",
    "negative_prompt",
    "scheduler",
    "noise_level",
    "native_resolution",
    "pipeline_kwargs",
)
OPTION_KEYS = {
    "card",
    "pipeline",
    "stage2",
    "revision",
    "stage2_revision",
    "variant",
    "dtype",
    "offload",
    "fetch",
    "composable",
    "batch_size",
    *SAMPLING_KEYS,
}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
OFFLOAD = ("none", "model", "sequential")
SCHEDULER_ALIASES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
#: ``__call__`` arguments the adapter sets itself (``pipeline_kwargs`` may not)
RESERVED_CALL_KWARGS = {
    "prompt",
    "negative_prompt",
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "num_inference_steps",
    "guidance_scale",
    "generator",
    "output_type",
    "height",
    "width",
    "image",
    "noise_level",
    "num_images_per_prompt",
    "return_dict",
}
#: settings that do not change the pixels (recorded, but kept out of the fingerprint)
NON_PIXEL_SETTINGS = ("offload",)


def per_stage(value: Any, n: int, key: str) -> list[Any]:
    """One value per stage: a scalar for all, a list, or a comma-separated string (command line)."""
    if isinstance(value, str) and "," in value:
        value = [parse_value(v.strip()) for v in value.split(",")]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            what = "a cascade of 2 stages" if n == 2 else "a single-stage pipeline"
            raise UsageError(f"diffusers option {key!r} has {len(value)} values for {what}")
        return list(value)
    return [value] * n


def parse_dtype(value: Any, device: str) -> torch.dtype:
    """The ``dtype`` option; default float32 on CPU, float16 on CUDA."""
    if value is None:
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return DTYPES[as_choice(value, DTYPES, "dtype", WHERE)]


def dtype_name(dtype: torch.dtype) -> str:
    """``"float16"`` for ``torch.float16``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class PipelineSource:
    """Where one pipeline comes from: a local folder or a hub id (+ revision, card sha256)."""

    name: str
    revision: str | None = None
    sha256: str | None = None


def _card_source(card: Any, key: str) -> PipelineSource | None:
    """The card's ``[weights.<key>]`` as a source, if the card has one."""
    if card is None or key not in card.weights:
        return None
    w = card.weights[key]
    name = str(w.path) if w.path is not None else w.hub_id
    return PipelineSource(name, sha256=w.sha256)


def pipeline_sources(
    options: dict[str, Any], card: Any
) -> tuple[PipelineSource, PipelineSource | None]:
    """Stage I (or the only pipeline) and the optional super-resolution stage."""
    first = _card_source(card, "pipeline")
    if options.get("pipeline") is not None:
        first = PipelineSource(str(options["pipeline"]))
    if first is None:
        raise UsageError(
            "diffusers: no pipeline given; pass --model-opt pipeline=HUB_ID_OR_FOLDER "
            "or use a model card with [weights.pipeline] (see `evalkit list models`)"
        )
    second = _card_source(card, "stage2")
    if "stage2" in options:
        value = options["stage2"]
        second = None if value in (None, False, "", "none") else PipelineSource(str(value))
    first = PipelineSource(first.name, options.get("revision"), first.sha256)
    if second is not None:
        second = PipelineSource(second.name, options.get("stage2_revision"), second.sha256)
    return first, second
