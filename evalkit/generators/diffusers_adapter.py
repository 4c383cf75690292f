"""Any diffusers text-to-image pipeline behind the :class:`Generator` interface.

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
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import evalkit
from evalkit.atomic import atomic_write_json
from evalkit.batching import micro_batches, run_in_micro_batches
from evalkit.errors import GenerationError, InputError, MissingWeightsError, UsageError
from evalkit.generators.base import (
    GenerationRequest,
    Generator,
    GeneratorContext,
    float_to_uint8,
)
from evalkit.hashing import sha256_file, sha256_json
from evalkit.imagen.composable import Concept, is_composed, parse_composable

ADAPTER_VERSION = "diffusers-adapter-v1"

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
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_SUFFIXES = (".json", ".txt", ".model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# in-process memo of file hashes: (resolved path, size, mtime_ns) -> sha256
_FILE_HASHES: dict[str, str] = {}


# --------------------------------------------------------------------------- options


def _per_stage(value: Any, n: int, key: str) -> list[Any]:
    """One value per stage: a scalar for all, a list, or a comma-separated string (command line)."""
    if isinstance(value, str) and "," in value:
        value = [v.strip() for v in value.split(",")]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            what = "a cascade of 2 stages" if n == 2 else "a single-stage pipeline"
            raise UsageError(f"diffusers option {key!r} has {len(value)} values for {what}")
        return list(value)
    return [value] * n


def _as_int(value: Any, key: str, minimum: int = 1) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"diffusers option {key!r} must be an integer, got {value!r}") from exc
    if out < minimum or out != float(value):
        raise UsageError(f"diffusers option {key!r} must be an integer ≥ {minimum}, got {value!r}")
    return out


def _as_float(value: Any, key: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"diffusers option {key!r} must be a number, got {value!r}") from exc
    if not math.isfinite(out):
        raise UsageError(f"diffusers option {key!r} must be finite, got {value!r}")
    return out


def _dtype(value: Any, device: str) -> torch.dtype:
    """The ``dtype`` option; default float32 on CPU, float16 on CUDA."""
    if value is None:
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if str(value) not in DTYPES:
        raise UsageError(f"diffusers option dtype {value!r}: use float32, float16 or bfloat16")
    return DTYPES[str(value)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class _Source:
    """Where one pipeline comes from: a local folder or a hub id (+ revision, card sha256)."""

    name: str
    revision: str | None = None
    sha256: str | None = None


def _card_source(card: Any, key: str) -> _Source | None:
    if card is None or key not in card.weights:
        return None
    w = card.weights[key]
    name = str(w.path) if w.path is not None else w.hub_id
    return _Source(name, sha256=w.sha256)


def _sources(options: dict[str, Any], card: Any) -> tuple[_Source, _Source | None]:
    """Stage I (or the only pipeline) and the optional super-resolution stage."""
    first = _card_source(card, "pipeline")
    if options.get("pipeline") is not None:
        first = _Source(str(options["pipeline"]))
    if first is None:
        raise UsageError(
            "diffusers: no pipeline given; pass --model-opt pipeline=HUB_ID_OR_FOLDER "
            "or use a model card with [weights.pipeline] (see `evalkit list models`)"
        )
    second = _card_source(card, "stage2")
    if "stage2" in options:
        value = options["stage2"]
        second = None if value in (None, False, "", "none") else _Source(str(value))
    first = _Source(first.name, options.get("revision"), first.sha256)
    if second is not None:
        second = _Source(second.name, options.get("stage2_revision"), second.sha256)
    return first, second


# --------------------------------------------------------------------------- loading


def _looks_local(name: str) -> bool:
    return not _HUB_ID.match(name) or name.startswith((".", "/", "~"))


def _fetch_hint(name: str) -> str:
    return (
        f"run once online with --model-opt fetch=true (downloads {name} into the Hugging Face "
        "cache; gated repositories such as DeepFloyd IF need `hf auth login` and the licence "
        "accepted on the hub first), or pass a local folder saved with save_pretrained: "
        "--model-opt pipeline=/path/to/pipeline"
    )


def resolve_pipeline_folder(
    source: _Source, *, variant: str | None, fetch: bool, skip: Sequence[str] = ()
) -> tuple[Path, dict[str, Any]]:
    """A local pipeline folder for ``source`` and its identity; downloads only when ``fetch``.

    ``skip`` names components that will not be loaded (so are not downloaded either).
    """
    path = Path(source.name).expanduser()
    if path.exists() or _looks_local(source.name):
        if not path.is_dir():
            raise MissingWeightsError(
                f"diffusers pipeline folder {path} not found; pass an existing folder "
                "(saved with save_pretrained) or a hub id, e.g. --model-opt "
                "pipeline=stable-diffusion-v1-5/stable-diffusion-v1-5 --model-opt fetch=true"
            )
        if not (path / "model_index.json").is_file():
            raise InputError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); save one with "
                "DiffusionPipeline.save_pretrained or give the hub id"
            )
        return path.resolve(), {"path": str(path.resolve())}
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(
            source.name,
            revision=source.revision,
            variant=variant,
            local_files_only=not fetch,
            **{name: None for name in skip},
        )
    except Exception as exc:  # the hub client raises many error types; all mean "not here"
        if fetch:
            raise MissingWeightsError(
                f"diffusers: could not download pipeline {source.name!r} ({exc}); check the hub "
                "id, your network and (for gated models) `hf auth login`, or pass a local folder "
                "with --model-opt pipeline=/path/to/pipeline"
            ) from exc
        raise MissingWeightsError(
            f"diffusers pipeline {source.name!r} is not a local folder and not in the local "
            "Hugging Face cache "
            f"(evalkit never downloads implicitly): {_fetch_hint(source.name)}"
        ) from exc
    folder = Path(folder)
    return folder, {"hub_id": source.name, "revision": source.revision, "snapshot": folder.name}


def _file_variant(name: str) -> str | None:
    """``fp16`` for ``x.fp16.safetensors`` / ``x.fp16-00001-of-00002.safetensors``; else None."""
    stem = name
    for suffix in _WEIGHT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    parts = stem.split(".")
    return parts[-1].split("-")[0] if len(parts) > 1 else None


def pipeline_files(
    folder: Path, variant: str | None = None, exclude: Sequence[str] = ()
) -> list[Path]:
    """The files of a pipeline folder that determine its output, as diffusers would load them.

    Per component folder: the weights of ``variant`` (falling back to the plain weights, like
    diffusers), safetensors preferred over ``.bin``; plus every config and tokenizer file
    (``*.json``, ``*.txt``, ``*.model``; shard index files excluded). Components named in
    ``exclude`` (not loaded, e.g. the safety checker) are left out.
    """
    by_dir: dict[Path, list[Path]] = {}
    configs: list[Path] = []
    for p in sorted(folder.rglob("*")):
        parts = p.relative_to(folder).parts
        if not p.is_file() or any(part.startswith(".") for part in parts):
            continue
        if len(parts) > 1 and parts[0] in exclude:
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES):
            by_dir.setdefault(p.parent, []).append(p)
        elif p.suffix in _CONFIG_SUFFIXES and ".index." not in p.name:
            configs.append(p)
    weights: list[Path] = []
    for files in by_dir.values():
        chosen = [f for f in files if _file_variant(f.name) == variant]
        if not chosen and variant is not None:
            chosen = [f for f in files if _file_variant(f.name) is None]
        safetensors = [f for f in chosen if f.name.endswith(".safetensors")]
        weights += safetensors or chosen
    return sorted(weights) + configs


def _hash_store(cache_dir: str | None) -> Path | None:
    return Path(cache_dir) / "diffusers" / "file-sha256.json" if cache_dir else None


def folder_digest(
    folder: Path,
    variant: str | None = None,
    cache_dir: str | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """sha256 over the sha256 of every file :func:`pipeline_files` selects.

    File hashes are memoised by (path, size, mtime) in memory and, when ``cache_dir`` is
    given, in ``<cache_dir>/diffusers/file-sha256.json``, so large weights hash once.
    """
    files = pipeline_files(folder, variant, exclude)
    if not any(f.name.endswith(_WEIGHT_SUFFIXES) for f in files):
        raise InputError(f"diffusers pipeline folder {folder} holds no weights (*.safetensors)")
    store_path = _hash_store(cache_dir)
    stored: dict[str, str] = {}
    if store_path is not None and store_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads(store_path.read_text(encoding="utf-8"))
    changed = False
    hashes: dict[str, str] = {}
    for f in files:
        real = f.resolve()
        st = real.stat()
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        digest = _FILE_HASHES.get(key) or stored.get(key)
        if digest is None:
            digest = sha256_file(real)
            stored[key], changed = digest, True
        _FILE_HASHES[key] = digest
        hashes[f.relative_to(folder).as_posix()] = digest
    if changed and store_path is not None:
        with contextlib.suppress(OSError):
            atomic_write_json(store_path, stored)
    n_weights = sum(1 for name in hashes if name.endswith(_WEIGHT_SUFFIXES))
    return {"sha256": sha256_json(hashes), "weight_files": n_weights, "files": len(hashes)}


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
    names = ["safety_checker", "feature_extractor", "watermarker"]
    return names + (["text_encoder", "tokenizer"] if drop_text_encoder else [])


def _set_scheduler(pipe: Any, name: str) -> None:
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


def _place(pipe: Any, device: str, offload: str) -> None:
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def _native_size(pipe: Any) -> int | None:
    """The side length a pipeline makes by default (UNet/transformer sample size × VAE factor)."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = getattr(getattr(model, "config", None), "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int):
        return None
    factor = getattr(pipe, "vae_scale_factor", 1) if getattr(pipe, "vae", None) is not None else 1
    return size * int(factor)


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


def _call_params(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipe.__call__).parameters)


def _call_default(pipe: Any, name: str) -> Any:
    param = _call_params(pipe).get(name)
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        raise UsageError(
            f"diffusers: {type(pipe).__name__} has no default {name}; pass it as an option"
        )
    return param.default


# --------------------------------------------------------------------------- composable


@dataclass
class _Composition:
    """Widens a pipeline's ``[uncond; cond]`` UNet batch to ``[uncond, concepts…]`` per image.

    ``weights[b]`` are image ``b``'s concept weights, ``embeds`` the concepts' text states in
    order, ``pooled`` their pooled embeddings (SDXL's ``text_embeds``). With learned variance
    (DeepFloyd IF) only the first half of the output channels is combined; the variance is
    the first concept's. The widened rows go through the UNet in fixed-shape micro-batches of
    ``unet_rows`` (the row count of a plain guided call), so a composed image does not depend
    on how many concepts the other prompts of its call have.
    """

    weights: list[list[float]]
    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    learned_variance: bool = False
    unet_rows: int = 2

    def _rows(self) -> tuple[list[int], list[int]]:
        batch, src, concept_rows = len(self.weights), [], []
        for b, ws in enumerate(self.weights):
            src.append(b)
            for _ in ws:
                concept_rows.append(len(src))
                src.append(batch + b)
        return src, concept_rows

    def forward(self, inner: Any, sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        batch = len(self.weights)
        if sample.shape[0] != 2 * batch:
            raise GenerationError(
                f"composable prompt: expected the pipeline's guided UNet batch of {2 * batch}, "
                f"got {sample.shape[0]} (is guidance > 1?)"
            )
        src, concept_rows = self._rows()
        index = torch.tensor(src, device=sample.device)
        at = torch.tensor(concept_rows, device=sample.device)
        return_dict = kwargs.pop("return_dict", True)
        states = _take_rows(kwargs.pop("encoder_hidden_states"), index, 2 * batch).clone()
        states[at] = self.embeds.to(states)
        kwargs = {k: _take_rows(v, index, 2 * batch) for k, v in kwargs.items()}
        if self.pooled is not None:
            added = dict(kwargs["added_cond_kwargs"])
            added["text_embeds"] = added["text_embeds"].clone()
            added["text_embeds"][at] = self.pooled.to(added["text_embeds"])
            kwargs["added_cond_kwargs"] = added
        sample, timestep = (
            _take_rows(sample, index, 2 * batch),
            _take_rows(timestep, index, 2 * batch),
        )
        total = len(src)

        def unet(rows: torch.Tensor) -> torch.Tensor:
            def pick(x: Any) -> Any:
                return _take_rows(x, rows.to(sample.device), total)

            chunk_kwargs = {k: pick(v) for k, v in kwargs.items()}
            return inner(
                pick(sample),
                pick(timestep),
                encoder_hidden_states=pick(states),
                return_dict=False,
                **chunk_kwargs,
            )[0]

        out = run_in_micro_batches(unet, torch.arange(total), size=self.unet_rows)
        n_eps = out.shape[1] // 2 if self.learned_variance else out.shape[1]
        uncond, cond, row = [], [], 0
        for ws in self.weights:
            u = out[row]
            delta = sum(w * (out[row + 1 + i, :n_eps] - u[:n_eps]) for i, w in enumerate(ws))
            guided = u[:n_eps] + delta
            if n_eps < out.shape[1]:
                guided = torch.cat([guided, out[row + 1, n_eps:]])
            uncond.append(u)
            cond.append(guided)
            row += 1 + len(ws)
        result = torch.stack(uncond + cond)
        if not return_dict:
            return (result,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=result)


def _take_rows(x: Any, index: torch.Tensor, n: int) -> Any:
    """Rows ``index`` of every tensor in ``x`` (a tensor, or a dict of them) that has ``n`` rows."""
    if isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == n:
        return x.index_select(0, index.to(x.device))
    if isinstance(x, dict):
        return {k: _take_rows(v, index, n) for k, v in x.items()}
    return x


@contextlib.contextmanager
def composed_unet(unet: torch.nn.Module, composition: _Composition) -> Iterator[None]:
    """Route ``unet``'s forward through ``composition`` (offload hooks stay in place)."""
    previous = unet.__dict__.get("forward")
    inner = unet.forward
    # names of forward's arguments after (self, sample, timestep), for positional callers
    names = list(inspect.signature(type(unet).forward).parameters)[3:]

    def forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(zip(names, args, strict=False))
        return composition.forward(inner, sample, timestep, **kwargs)

    unet.forward = forward
    try:
        yield
    finally:
        if previous is None:
            unet.__dict__.pop("forward", None)
        else:
            unet.forward = previous


# --------------------------------------------------------------------------- generator


@dataclass
class _Stage:
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
        stages: list[_Stage],
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
        self.family = _family(stages[0].pipe)

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
            "dtype": _dtype_name(self.dtype),
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
        import diffusers
        import transformers

        settings = {k: v for k, v in self.settings().items() if k not in NON_PIXEL_SETTINGS}
        return {
            "adapter": "diffusers",
            "pipeline_class": self.pipeline_class,
            "model": [{**st.source, "weights": st.weights} for st in self.stages],
            "dtype": _dtype_name(self.dtype),
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
        if "height" in _call_params(st.pipe):
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

    def _composition_sd(self, concepts: Sequence[list[Concept]]) -> _Composition:
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
        return _Composition(weights, embeds, pooled, unet_rows=2 * self.batch_size)

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
                composition = _Composition(
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


def _family(pipe: Any) -> str | None:
    """``"sd"``, ``"sdxl"`` or ``"if"`` for the pipelines composable prompts support, else None."""
    from diffusers import IFPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, IFPipeline):
        return "if"
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    return None


def _call_kwargs(pipe: Any, given: Any) -> dict[str, Any]:
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
    params = _call_params(pipe)
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


def _load_stage(
    source: _Source, second: bool, variant: str | None, fetch: bool, dtype: torch.dtype, cache_dir
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


def _check_cascade(pipes: list[Any], options: dict[str, Any]) -> bool:
    """True for DeepFloyd IF; refuses a stage II that is not IF super-resolution."""
    from diffusers import IFSuperResolutionPipeline

    is_if = _family(pipes[0]) == "if"
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


def make_diffusers_generator(options: dict[str, Any], context: GeneratorContext) -> Generator:
    """Load a diffusers pipeline (offline unless ``fetch``) and wrap it as a :class:`Generator`.

    The pipeline comes from ``options["pipeline"]`` or the card's ``[weights.pipeline]``; a
    DeepFloyd IF stage I may be followed by ``stage2`` (option or ``[weights.stage2]``).
    """
    options = dict(options)
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise UsageError(f"unknown diffusers option(s) {unknown}; known: {sorted(OPTION_KEYS)}")
    card = options.get("card") or context.extra.get("card")
    device = str(context.device)
    dtype = _dtype(options.get("dtype"), device)
    offload = str(options.get("offload", "none"))
    if offload not in OFFLOAD:
        raise UsageError(f"diffusers option offload {offload!r}: use one of {list(OFFLOAD)}")
    if offload != "none" and not device.startswith("cuda"):
        raise UsageError(f"diffusers option offload={offload} needs a CUDA device, not {device!r}")
    variant = None if options.get("variant") in (None, "") else str(options["variant"])
    batch_size = _as_int(options.get("batch_size", 4), "batch_size")
    sources = [s for s in _sources(options, card) if s is not None]
    steps = _per_stage(options.get("steps"), len(sources), "steps")
    guidance = _per_stage(options.get("guidance"), len(sources), "guidance")

    fetch = bool(options.get("fetch", False))
    loaded = [
        _load_stage(src, k == 1, variant, fetch, dtype, context.cache_dir)
        for k, src in enumerate(sources)
    ]
    is_if = _check_cascade([pipe for pipe, _, _ in loaded], options)
    call_kwargs = _call_kwargs(loaded[0][0], options.get("pipeline_kwargs"))
    stages = []
    for (pipe, ident, digest), s, g in zip(loaded, steps, guidance, strict=True):
        if options.get("scheduler"):
            _set_scheduler(pipe, options["scheduler"])
        _place(pipe, device, offload)
        s = _call_default(pipe, "num_inference_steps") if s is None else s
        g = _call_default(pipe, "guidance_scale") if g is None else g
        stages.append(_Stage(pipe, ident, digest, _as_int(s, "steps"), _as_float(g, "guidance")))

    native = options.get("native_resolution")
    if native is not None:
        native = _as_int(native, "native_resolution", minimum=8)
    else:
        native = _native_size(stages[-1].pipe)
        if native is None:
            raise UsageError(
                f"diffusers: cannot tell the output size of {type(stages[-1].pipe).__name__}; "
                "pass --model-opt native_resolution=N"
            )
    noise_level = None
    if is_if and len(stages) == 2:
        noise_level = options.get("noise_level")
        if noise_level is None:
            noise_level = _call_default(stages[1].pipe, "noise_level")
        noise_level = _as_int(noise_level, "noise_level", minimum=0)
    negative = options.get("negative_prompt")
    return DiffusersGenerator(
        stages,
        context,
        name=card.name if card is not None else "diffusers",
        dtype=dtype,
        offload=offload,
        batch_size=batch_size,
        negative_prompt=None if negative in (None, "") else str(negative),
        composable=bool(options.get("composable", True)),
        native_resolution=native,
        noise_level=noise_level,
        call_kwargs=call_kwargs,
    )
