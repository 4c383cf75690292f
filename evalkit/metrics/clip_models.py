"""Resolving, fetching and loading open_clip models, and their image preprocessing on tensors.

Weights come from exactly one of, in order:

1. an explicit file (``weights_path``);
2. the evalkit cache: ``<cache>/weights/clip/<model>-<pretrained>/<file>`` with a
   ``<file>.sha256`` sidecar written by :func:`fetch_clip` (checked on every load);
3. nowhere: :class:`MissingWeightsError` naming ``evalkit fetch clip``.

Loading never reaches the network: open_clip only ever receives a file path, and the
Hugging Face hub is switched to offline mode while a model is built. Only
:func:`fetch_clip` downloads, through open_clip's own pretrained registry.

The model name ``tiny-random`` builds a ~3.4M-parameter CLIP with random weights from a
config written to a temporary folder (for tests and plumbing; results are uncalibrated).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch

from evalkit.atomic import atomic_write_text
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.hashing import sha256_file

DEFAULT_MODEL = "ViT-L-14-quickgelu"
DEFAULT_PRETRAINED = "openai"
TINY_RANDOM = "tiny-random"
#: the open_clip architecture behind ``tiny-random`` (loadable with weights, still a toy)
TINY_ARCH = "evalkit-tiny"
TINY_SEED = 0
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SIDECAR_SUFFIX = ".sha256"


@dataclass(frozen=True)
class ClipInfo:
    """What a result records about the CLIP model it was measured with."""

    model: str
    pretrained: str
    weights_sha256: str
    #: "weights_path", "cache" or "random"
    weights_source: str
    weights_path: str | None
    image_size: int
    context_length: int
    open_clip_version: str
    uncalibrated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClipModel(Protocol):
    """The part of an open_clip model (``CLIP``, ``CustomTextCLIP``) that evalkit calls."""

    visual: torch.nn.Module
    #: (width, embed_dim); only on ``CLIP`` (read when ``visual`` has no ``output_dim``)
    text_projection: torch.Tensor

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...


def as_clip_model(model: torch.nn.Module) -> ClipModel:
    """``model`` typed as an open_clip model: ``nn.Module.__getattr__`` only knows tensors and
    submodules, not open_clip's methods. No check and no copy: the same object."""
    return cast(ClipModel, model)


class TensorPreprocess:
    """uint8 (B, 3, H, W) images → normalised CLIP input, following the model's preprocess config.

    Resize (shortest side to ``image_size``, or squash to a square), center crop, scale to
    [0, 1], normalise with the model's mean/std. The resize runs on the uint8 tensor with
    antialiasing and rounds back to uint8, as open_clip's PIL pipeline does.
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
    ) -> None:
        if interpolation not in ("bicubic", "bilinear"):
            raise UsageError(
                f"CLIP preprocessing: interpolation {interpolation!r} is not supported"
            )
        if resize_mode not in ("shortest", "squash"):
            raise UsageError(f"CLIP preprocessing: resize mode {resize_mode!r} is not supported")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.resize_mode = resize_mode

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise InputError(
                f"CLIP preprocessing expects uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        mode = (
            InterpolationMode.BICUBIC
            if self.interpolation == "bicubic"
            else InterpolationMode.BILINEAR
        )
        n = self.image_size
        size = [n] if self.resize_mode == "shortest" else [n, n]
        x = F.resize(images, size, interpolation=mode, antialias=True)
        x = F.center_crop(x, [n, n])
        x = x.to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def recipe(self) -> dict[str, Any]:
        """The exact preprocessing, for the manifest."""
        resize = (
            f"shortest side to {self.image_size}, longer side int(size*long/short)"
            if self.resize_mode == "shortest"
            else f"squash to {self.image_size}x{self.image_size}"
        )
        return {
            "input": "uint8 RGB (B, 3, H, W)",
            "resize": resize,
            "interpolation": self.interpolation,
            "antialias": True,
            "resize_dtype": "uint8 (rounded and clamped, like PIL)",
            "resize_impl": "torchvision.transforms.v2.functional.resize on tensors",
            "crop": f"center {self.image_size}x{self.image_size}",
            "scale": "x / 255",
            "mean": list(self.mean),
            "std": list(self.std),
        }


# ---------------------------------------------------------------- cache layout


def _default_cache_dir() -> Path:
    env = os.environ.get("EVALKIT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/evalkit").expanduser()


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part)


def clip_cache_dir(model_name: str, pretrained: str, cache_dir: str | os.PathLike | None) -> Path:
    """``<cache>/weights/clip/<model>-<pretrained>``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    return root / "weights" / "clip" / f"{_safe(model_name)}-{_safe(pretrained)}"


def fetch_command(model_name: str, pretrained: str) -> str:
    """The command line that puts these weights into the cache."""
    return f"evalkit fetch clip --model {model_name} --pretrained {pretrained}"


def _read_sidecar(path: Path) -> str:
    text = path.read_text(encoding="utf-8").split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise MissingWeightsError(
            f"CLIP weights checksum file {path} is malformed; fetch the weights again"
        )
    return text[0]


def _cached_weights(
    model_name: str, pretrained: str, cache_dir: str | os.PathLike | None
) -> Path | None:
    """The cached weights file (sha256-verified), or None when nothing complete is cached."""
    folder = clip_cache_dir(model_name, pretrained, cache_dir)
    if not folder.is_dir():
        return None
    sidecars = sorted(folder.glob("*" + SIDECAR_SUFFIX))
    candidates = [s.with_name(s.name[: -len(SIDECAR_SUFFIX)]) for s in sidecars]
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise MissingWeightsError(
            f"CLIP weights cache {folder} holds several weight files ({names}); keep one"
        )
    weights = candidates[0]
    expected = _read_sidecar(weights.with_name(weights.name + SIDECAR_SUFFIX))
    actual = sha256_file(weights)
    if actual != expected:
        raise MissingWeightsError(
            f"CLIP weights {weights} have sha256 {actual}, but {expected} was recorded when they were "
            f"fetched (corrupt or replaced); delete {folder} and run `{fetch_command(model_name, pretrained)}`"
        )
    return weights


def _install(source: Path, folder: Path, move: bool) -> Path:
    """Put ``source`` into ``folder`` (atomically) with its sha256 sidecar; returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # one weights file per folder
        if old.is_file() and not old.name.startswith("."):
            old.unlink()
    target = folder / source.name
    tmp = folder / f".{source.name}.partial"
    if move:
        shutil.move(str(source), tmp)
    else:
        shutil.copyfile(source, tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, target)
    atomic_write_text(target.with_name(target.name + SIDECAR_SUFFIX), f"{digest}  {target.name}\n")
    return target


# ---------------------------------------------------------------- open_clip helpers


def _open_clip() -> Any:
    import open_clip

    _register_tiny_config(open_clip)
    return open_clip


def _register_tiny_config(open_clip: Any) -> None:
    """Make ``evalkit-tiny`` an open_clip architecture (configs are read once, then kept)."""
    if TINY_ARCH in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="evalkit-clip-config-"))
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    open_clip.add_model_config(folder)  # read at once: the folder is not needed afterwards
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make any Hugging Face hub access inside the block fail instead of downloading."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in keys}
    constants: Any = None
    saved_flag = None
    try:
        from huggingface_hub import constants

        saved_flag = constants.HF_HUB_OFFLINE
    except ImportError:
        constants = None
    for k in keys:
        os.environ[k] = "1"
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_flag


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _check_model_name(open_clip: Any, model_name: str) -> None:
    if ":" in model_name:
        raise UsageError(
            f"CLIP model {model_name!r}: hub and local-dir schemas are not supported; "
            "give an open_clip architecture name and a weights file (weights_path)"
        )
    known = open_clip.list_models()
    if model_name not in known:
        close = [m for m in known if model_name.lower().split("-")[0] in m.lower()][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UsageError(f"unknown CLIP model {model_name!r} (see open_clip.list_models()){hint}")


def _check_quick_gelu(open_clip: Any, model_name: str, pretrained: str) -> dict[str, Any]:
    """The tag's pretrained config; refuses QuickGELU weights on a GELU architecture."""
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    model_cfg = open_clip.get_model_config(model_name) or {}
    if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
        raise UsageError(
            f"CLIP weights {pretrained!r} were trained with QuickGELU but {model_name!r} uses GELU; "
            f"use {model_name}-quickgelu (silently wrong embeddings otherwise)"
        )
    return tag_cfg


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original .pt files are TorchScript archives (torch.load(weights_only=True) refuses them)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _state_dict_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode("utf-8"))
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _build(
    open_clip: Any,
    model_name: str,
    weights: Path | None,
    tag_cfg: dict[str, Any],
    device: str,
) -> torch.nn.Module:
    """Create the model from a weights file (or randomly when ``weights`` is None)."""
    kwargs: dict[str, Any] = {"device": device, "precision": "fp32", "pretrained_text": False}
    for key, arg in (
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("interpolation", "image_interpolation"),
        ("resize_mode", "image_resize_mode"),
    ):
        if key in tag_cfg:
            kwargs[arg] = tag_cfg[key]
    if weights is not None and _is_torchscript(weights):
        kwargs["weights_only"] = False
    try:
        with hub_offline(), _quiet_random_init_warning():
            model, _, _ = open_clip.create_model_and_transforms(
                model_name, pretrained=str(weights) if weights is not None else None, **kwargs
            )
    except Exception as exc:  # torch.load and open_clip fail on foreign files in many ways
        where = f"weights {weights}" if weights is not None else "random init"
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise InputError(
            f"CLIP model {model_name!r}: could not load {where} ({reason}); the file is corrupt, "
            "truncated or for another architecture"
        ) from exc
    return model.eval()


def _preprocess_for(model: torch.nn.Module) -> TensorPreprocess:
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise UsageError(
                f"CLIP preprocessing: non-square input size {tuple(size)} is not supported"
            )
        size = size[0]
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return TensorPreprocess(
        image_size=int(size),
        mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )


# ---------------------------------------------------------------- public API


def load_clip(
    model_name: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    allow_random_weights: bool = False,
) -> tuple[torch.nn.Module, TensorPreprocess, Callable[..., torch.Tensor], ClipInfo]:
    """Load an open_clip model offline: ``(model, preprocess, tokenizer, info)``.

    Resolution: ``weights_path``, then the evalkit cache, else :class:`MissingWeightsError`.
    ``model_name="tiny-random"`` builds a random toy model and needs ``allow_random_weights``.
    """
    open_clip = _open_clip()
    if model_name == TINY_RANDOM:
        if not allow_random_weights:
            raise UsageError(
                "CLIP model 'tiny-random' has random weights (plumbing only); "
                "pass allow_random_weights (--allow-random-weights) to use it"
            )
        if weights_path is not None:
            raise UsageError(
                "CLIP model 'tiny-random' takes no weights; use model 'evalkit-tiny' with weights_path"
            )
        arch, tag, source, weights = TINY_ARCH, "random", "random", None
        tag_cfg: dict[str, Any] = {}
    else:
        _check_model_name(open_clip, model_name)
        tag_cfg = _check_quick_gelu(open_clip, model_name, pretrained)
        arch, tag = model_name, pretrained
        if weights_path is not None:
            weights = Path(weights_path).expanduser()
            if not weights.is_file():
                raise InputError(f"CLIP weights file {weights} not found")
            source = "weights_path"
        else:
            weights = _cached_weights(model_name, pretrained, cache_dir)
            if weights is None:
                raise MissingWeightsError(
                    f"no weights for CLIP {model_name} ({pretrained}) in "
                    f"{clip_cache_dir(model_name, pretrained, cache_dir)}; run "
                    f"`{fetch_command(model_name, pretrained)}` (online), or "
                    f"`{fetch_command(model_name, pretrained)} --weights PATH` with a file you have, "
                    "or give the file directly as the metric's weights_path option"
                )
            source = "cache"
        print(f"loading CLIP {arch} ({tag}) from {weights}", file=sys.stderr)

    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = _build(open_clip, arch, None, tag_cfg, device)
        digest = _state_dict_sha256(model)
    else:
        model = _build(open_clip, arch, weights, tag_cfg, device)
        digest = sha256_file(weights)
    preprocess = _preprocess_for(model)
    with hub_offline():
        tokenizer = open_clip.get_tokenizer(arch)
    length: Any = getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77)
    context_length = int(length)
    info = ClipInfo(
        model=model_name,
        pretrained=tag,
        weights_sha256=digest,
        weights_source=source,
        weights_path=str(weights) if weights is not None else None,
        image_size=preprocess.image_size,
        context_length=context_length,
        open_clip_version=open_clip.__version__,
        uncalibrated=arch == TINY_ARCH,
    )
    return model, preprocess, tokenizer, info


def fetch_clip(
    model_name: str,
    pretrained: str,
    cache_dir: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Put CLIP weights into the evalkit cache and record their sha256; returns the file.

    Without ``source`` the file is downloaded through open_clip's pretrained registry (needs
    network access); with ``source`` a local file is copied in (the offline route).
    """
    open_clip = _open_clip()
    if model_name == TINY_RANDOM:
        raise UsageError("CLIP model 'tiny-random' is built in; it has nothing to fetch")
    _check_model_name(open_clip, model_name)
    tag_cfg = _check_quick_gelu(open_clip, model_name, pretrained)
    folder = clip_cache_dir(model_name, pretrained, cache_dir)
    if source is not None:
        src = Path(source).expanduser()
        if not src.is_file():
            raise InputError(f"CLIP weights file {src} not found")
        _build(open_clip, model_name, src, tag_cfg, "cpu")  # refuse a file that is not this model
        target = _install(src, folder, move=False)
        print(f"verified and installed CLIP weights {target}", file=sys.stderr)
        return target
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise UsageError(
            f"open_clip has no pretrained tag {pretrained!r} for {model_name!r} "
            f"(known: {', '.join(tags) if tags else 'none'}); give a local file with --weights PATH"
        )
    sources = [(True, tag_cfg.get("hf_hub"))] if tag_cfg.get("hf_hub") else []
    if tag_cfg.get("url"):
        sources.append((False, tag_cfg["url"]))
    folder.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    try:
        for prefer_hub, where in sources:
            print(f"fetching CLIP {model_name} ({pretrained}) from {where}", file=sys.stderr)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
            try:
                downloaded = _download(open_clip, tag_cfg, prefer_hub, staging)
                _build(open_clip, model_name, downloaded, tag_cfg, "cpu")
                target = _install(downloaded, folder, move=True)
                print(f"fetched CLIP weights {target}", file=sys.stderr)
                return target
            except Exception as exc:  # network, hub and HTTP errors come in many types
                errors.append(f"{where}: {type(exc).__name__}: {exc}")
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing was installed
    raise MissingWeightsError(
        f"could not download CLIP weights {model_name} ({pretrained}); tried "
        + ("; ".join(errors) or "no download source is known")
        + f". If this machine is offline, download the file elsewhere and run "
        f"`{fetch_command(model_name, pretrained)} --weights PATH`"
    )


def _download(open_clip: Any, tag_cfg: dict[str, Any], prefer_hub: bool, staging: Path) -> Path:
    """Download through open_clip into ``staging``; returns the real file, under its own name."""
    cfg = dict(tag_cfg) if prefer_hub else {k: v for k, v in tag_cfg.items() if k != "hf_hub"}
    downloaded = open_clip.download_pretrained(
        cfg, prefer_hf_hub=prefer_hub, cache_dir=str(staging)
    )
    if not downloaded or not Path(downloaded).is_file():
        raise FileNotFoundError("open_clip returned no file")
    real = Path(os.path.realpath(downloaded))
    named = real.with_name(Path(downloaded).name)  # hub blobs are named by their hash
    if named != real:
        os.replace(real, named)
    return named
