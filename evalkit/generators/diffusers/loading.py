"""Loading diffusers pipelines: one stage from its folder, safety checker and watermarker off.

Also the introspection of a loaded pipeline the adapter relies on: its family (SD, SDXL,
IF), its ``__call__`` arguments and defaults, its native size, its scheduler and placement.
``diffusers`` is imported inside the functions: it is an optional extra and heavy to import.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from evalkit.errors import InputError, UsageError
from evalkit.generators.diffusers.hub import folder_digest, resolve_pipeline_folder
from evalkit.generators.diffusers.options import (
    RESERVED_CALL_KWARGS,
    SCHEDULER_ALIASES,
    PipelineSource,
)


def load_stage(
    source: PipelineSource,
    second: bool,
    variant: str | None,
    fetch: bool,
    dtype: torch.dtype,
    cache_dir: str | None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(pipeline, identity, weights digest) of one stage; stage II is loaded without text encoder."""
    skip = _skip_for_download(drop_text_encoder=second)
    folder, ident = resolve_pipeline_folder(source, variant=variant, fetch=fetch, skip=skip)
    ident["variant"] = variant
    digest = folder_digest(folder, variant, cache_dir, exclude=skip)
    if source.sha256 is not None and digest["sha256"] != source.sha256.lower():
        raise InputError(
            f"diffusers pipeline {source.name}: weights sha256 {digest['sha256']} differs from "
            f"the card's {source.sha256}; the files changed or the card is out of date"
        )
    pipe = _load_pipeline(folder, dtype, variant, drop_text_encoder=second)
    return pipe, ident, digest


def _load_pipeline(
    folder: Path, dtype: torch.dtype, variant: str | None, drop_text_encoder: bool = False
) -> Any:
    """Load a pipeline folder with safety checker and watermarker disabled."""
    import diffusers
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(folder)
    class_name = config.get("_class_name")
    pipe_cls = getattr(diffusers, class_name, None) if isinstance(class_name, str) else None
    params = inspect.signature(pipe_cls.__init__).parameters if pipe_cls is not None else {}
    overrides: dict[str, Any] = {}
    for component in _skipped_components(config, drop_text_encoder):
        overrides[component] = None
    if "requires_safety_checker" in params:
        overrides["requires_safety_checker"] = False
    if "add_watermarker" in params:
        overrides["add_watermarker"] = False
    # newer diffusers take ``dtype`` and deprecate ``torch_dtype``; older ones know only the latter
    from diffusers.pipelines import pipeline_utils

    overrides["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = dtype
    try:
        pipe = DiffusionPipeline.from_pretrained(
            folder, variant=variant, local_files_only=True, **overrides
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"diffusers: cannot load the pipeline in {folder}: {exc}") from exc
    if any(tag in type(pipe).__name__ for tag in ("Img2Img", "Inpaint")):
        pipe = _as_text_to_image(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _as_text_to_image(pipe: Any) -> Any:
    """The text-to-image pipeline sharing ``pipe``'s components (a folder saved as img2img)."""
    from diffusers import AutoPipelineForText2Image

    try:
        return AutoPipelineForText2Image.from_pipe(pipe)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"diffusers: {type(pipe).__name__} is not a text-to-image pipeline and has no "
            f"text-to-image counterpart ({exc})"
        ) from exc


def _skipped_components(config: dict[str, Any], drop_text_encoder: bool) -> list[str]:
    """Components never loaded: safety checker (with its feature extractor) and watermarker."""
    names = []
    if "safety_checker" in config:
        names += ["safety_checker", "feature_extractor"]
    if "watermarker" in config:
        names.append("watermarker")
    if drop_text_encoder:
        names += [n for n in ("text_encoder", "tokenizer") if n in config]
    return names


def _skip_for_download(drop_text_encoder: bool) -> list[str]:
    """Components not downloaded (they are never loaded)."""
    names = ["safety_checker", "feature_extractor", "watermarker"]
    return names + (["text_encoder", "tokenizer"] if drop_text_encoder else [])


def check_cascade(pipes: list[Any], options: dict[str, Any]) -> bool:
    """True for DeepFloyd IF; refuses a stage II that is not IF super-resolution."""
    from diffusers import IFSuperResolutionPipeline

    is_if = pipeline_family(pipes[0]) == "if"
    if len(pipes) == 2 and not is_if:
        raise UsageError(
            f"diffusers option stage2 is for DeepFloyd IF cascades; {type(pipes[0]).__name__} "
            "is a single-stage pipeline"
        )
    if len(pipes) == 2 and not isinstance(pipes[1], IFSuperResolutionPipeline):
        raise UsageError(
            f"diffusers stage2 must be an IFSuperResolutionPipeline, got {type(pipes[1]).__name__}"
        )
    if not is_if and "noise_level" in options:
        raise UsageError("diffusers option noise_level applies to DeepFloyd IF stage II only")
    if is_if and len(pipes) == 1 and options.get("native_resolution") is not None:
        raise UsageError("native_resolution applies to IF stage II; stage I has a fixed size")
    return is_if


def pipeline_family(pipe: Any) -> str | None:
    """``"sd"``, ``"sdxl"`` or ``"if"`` for the pipelines composable prompts support, else None."""
    from diffusers import IFPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, IFPipeline):
        return "if"
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    return None


def pipeline_call_kwargs(pipe: Any, given: Any) -> dict[str, Any]:
    """Extra ``__call__`` arguments: the user's, plus reproducibility defaults the pipeline takes."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise UsageError("diffusers option pipeline_kwargs must be a table of __call__ arguments")
    reserved = sorted(set(given) & RESERVED_CALL_KWARGS)
    if reserved:
        raise UsageError(
            f"diffusers option pipeline_kwargs may not set {reserved} (the adapter does)"
        )
    params = call_params(pipe)
    unknown = sorted(k for k in given if k not in params)
    if unknown:
        raise UsageError(
            f"diffusers option pipeline_kwargs: {type(pipe).__name__} takes no {unknown}"
        )
    out = dict(given)
    # caption cleaning needs optional packages (bs4, ftfy) and silently changes prompts without
    # them; resolution binning only matters for non-square sizes: both off unless asked for
    if "clean_caption" in params:
        out.setdefault("clean_caption", False)
        if out["clean_caption"]:
            import importlib.util

            missing = [m for m in ("bs4", "ftfy") if importlib.util.find_spec(m) is None]
            if missing:
                raise UsageError(f"pipeline_kwargs clean_caption=true needs {missing} installed")
    if "use_resolution_binning" in params:
        out.setdefault("use_resolution_binning", False)
    return out


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace ``pipe``'s scheduler by the class ``name`` (or alias), keeping its config."""
    import diffusers
    from diffusers import SchedulerMixin

    class_name = SCHEDULER_ALIASES.get(str(name).lower(), str(name))
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise UsageError(
            f"diffusers option scheduler {name!r}: not a diffusers scheduler class; use a class "
            f"name (e.g. DDIMScheduler) or one of {sorted(SCHEDULER_ALIASES)}"
        )
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def place_pipeline(pipe: Any, device: str, offload: str) -> None:
    """Move ``pipe`` to ``device``, or set up model / sequential CPU offload."""
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def native_size(pipe: Any) -> int | None:
    """The side length a pipeline makes by default (UNet/transformer sample size × VAE factor)."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = getattr(getattr(model, "config", None), "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int):
        return None
    factor = getattr(pipe, "vae_scale_factor", 1) if getattr(pipe, "vae", None) is not None else 1
    return size * int(factor)


def call_params(pipe: Any) -> dict[str, inspect.Parameter]:
    """The parameters of ``pipe.__call__`` by name."""
    return dict(inspect.signature(pipe.__call__).parameters)


def call_default(pipe: Any, name: str) -> Any:
    """The default of ``pipe.__call__``'s argument ``name``; UsageError when it has none."""
    param = call_params(pipe).get(name)
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        raise UsageError(
            f"diffusers: {type(pipe).__name__} has no default {name}; pass it as an option"
        )
    return param.default
