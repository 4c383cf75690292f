"""Any diffusers text-to-image pipeline behind the :class:`Generator` interface (``adapter = "diffusers"``).

Model card example (``adapter = "diffusers"``)::

    name = "sd-v1-5"
    adapter = "diffusers"
    [weights.pipeline]
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # or: path = "local/folder"
    [sampling]
    steps = 50
    guidance = 7.5

DeepFloyd IF is a two-stage cascade: ``[weights.pipeline]`` names stage I (``IFPipeline``)
and ``[weights.stage2]`` the super-resolution stage (``IFSuperResolutionPipeline``, loaded
without its text encoder); the prompt is encoded once by stage I's ``encode_prompt`` and the
embeddings go to both stages. ``steps``/``guidance`` then take one value per stage.

Offline first: pipelines load with ``local_files_only=True`` (a hub id must already be in the
Hugging Face cache) unless the option ``fetch=true`` is given. Safety checkers and
watermarkers are never loaded. Every image draws its noise from its own CPU
``torch.Generator`` seeded with the request's seed, and every pipeline call has exactly
``batch_size`` images (the option, default 4; the last call of a ``generate`` is padded with
copies of its first request and the copies dropped, see :mod:`evalkit.batching`), so every
network runs at one shape and images are bit-identical whatever the runner's batch size. On a
CPU the pipeline uses the process's intra-op threads, so its low bits may depend on the thread
count (recorded in the manifest); the in-repo Imagen does not have this limitation.

Composable prompts (``"a red cube AND a blue sphere NOT fog:0.5"``) are sampled with
Composable Diffusion on UNet pipelines (Stable Diffusion 1.x/2.x, SDXL, DeepFloyd IF): the
pipeline's own denoising loop runs unchanged while its UNet call is widened from
``[uncond, cond]`` to ``[uncond, concept_1 … concept_k]`` per image (one batched forward) and
folded back so the pipeline's guidance step computes
``ε_u + g · Σᵢ wᵢ (εᵢ − ε_u)``. Other pipelines (PixArt, …) refuse composed prompts.

Modules: :mod:`~evalkit.generators.diffusers.options` (option keys and values, pipeline
sources), :mod:`~evalkit.generators.diffusers.hub` (local folders, the Hugging Face cache,
weight hashes), :mod:`~evalkit.generators.diffusers.loading` (loading a stage, pipeline
introspection), :mod:`~evalkit.generators.diffusers.composable_unet` (the widened UNet call),
:mod:`~evalkit.generators.diffusers.sampling` (SD vs IF sampling, the generator); this module
holds the registry factory :func:`make_diffusers_generator`. Inside this package ``import
diffusers`` is the Hugging Face library (absolute imports), never this package.
"""

from __future__ import annotations

from typing import Any

from evalkit.errors import UsageError
from evalkit.generators.base import Generator, GeneratorContext
from evalkit.generators.diffusers.composable_unet import composed_unet
from evalkit.generators.diffusers.hub import folder_digest, pipeline_files, resolve_pipeline_folder
from evalkit.generators.diffusers.loading import (
    call_default,
    check_cascade,
    load_stage,
    native_size,
    pipeline_call_kwargs,
    place_pipeline,
    set_scheduler,
)
from evalkit.generators.diffusers.options import (
    OFFLOAD,
    OPTION_KEYS,
    WHERE,
    parse_dtype,
    per_stage,
    pipeline_sources,
)
from evalkit.generators.diffusers.sampling import ADAPTER_VERSION, DiffusersGenerator, Stage
from evalkit.options import as_bool, as_choice, as_float, as_int, check_known

__all__ = [
    "ADAPTER_VERSION",
    "OPTION_KEYS",
    "DiffusersGenerator",
    "composed_unet",
    "folder_digest",
    "make_diffusers_generator",
    "pipeline_files",
    "resolve_pipeline_folder",
]


def make_diffusers_generator(options: dict[str, Any], context: GeneratorContext) -> Generator:
    """Load a diffusers pipeline (offline unless ``fetch``) and wrap it as a :class:`Generator`.

    The pipeline comes from ``options["pipeline"]`` or the card's ``[weights.pipeline]``; a
    DeepFloyd IF stage I may be followed by ``stage2`` (option or ``[weights.stage2]``).
    """
    options = dict(options)
    check_known(options, OPTION_KEYS, WHERE)
    card = options.get("card") or context.extra.get("card")
    device = str(context.device)
    dtype = parse_dtype(options.get("dtype"), device)
    offload = as_choice(options.get("offload", "none"), OFFLOAD, "offload", WHERE)
    if offload != "none" and not device.startswith("cuda"):
        raise UsageError(f"diffusers option offload={offload} needs a CUDA device, not {device!r}")
    variant = None if options.get("variant") in (None, "") else str(options["variant"])
    batch_size = as_int(options.get("batch_size", 4), "batch_size", WHERE, minimum=1)
    sources = [s for s in pipeline_sources(options, card) if s is not None]
    steps = per_stage(options.get("steps"), len(sources), "steps")
    guidance = per_stage(options.get("guidance"), len(sources), "guidance")

    fetch = as_bool(options.get("fetch", False), "fetch", WHERE)
    loaded = [
        load_stage(src, k == 1, variant, fetch, dtype, context.cache_dir)
        for k, src in enumerate(sources)
    ]
    is_if = check_cascade([pipe for pipe, _, _ in loaded], options)
    call_kwargs = pipeline_call_kwargs(loaded[0][0], options.get("pipeline_kwargs"))
    stages = []
    for (pipe, ident, digest), s, g in zip(loaded, steps, guidance, strict=True):
        if options.get("scheduler"):
            set_scheduler(pipe, options["scheduler"])
        place_pipeline(pipe, device, offload)
        s = call_default(pipe, "num_inference_steps") if s is None else s
        g = call_default(pipe, "guidance_scale") if g is None else g
        s = as_int(s, "steps", WHERE, minimum=1)
        stages.append(Stage(pipe, ident, digest, s, as_float(g, "guidance", WHERE)))

    native = options.get("native_resolution")
    if native is not None:
        native = as_int(native, "native_resolution", WHERE, minimum=8)
    else:
        native = native_size(stages[-1].pipe)
        if native is None:
            raise UsageError(
                f"diffusers: cannot tell the output size of {type(stages[-1].pipe).__name__}; "
                "pass --model-opt native_resolution=N"
            )
    noise_level = None
    if is_if and len(stages) == 2:
        noise_level = options.get("noise_level")
        if noise_level is None:
            noise_level = call_default(stages[1].pipe, "noise_level")
        noise_level = as_int(noise_level, "noise_level", WHERE, minimum=0)
    negative = options.get("negative_prompt")
    return DiffusersGenerator(
        stages,
        context,
        name=card.name if card is not None else "diffusers",
        dtype=dtype,
        offload=offload,
        batch_size=batch_size,
        negative_prompt=None if negative in (None, "") else str(negative),
        composable=as_bool(options.get("composable", True), "composable", WHERE),
        native_resolution=native,
        noise_level=noise_level,
        call_kwargs=call_kwargs,
    )
