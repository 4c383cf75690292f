"""The feature networks of the metrics beyond FID: VGG16, DINOv2 ViT-L/14 and CLIP image embeddings.

Each follows its metric's reference implementation:

- **VGG16** (precision/recall, density/coverage): torch-fidelity 0.4's ``FeatureExtractorVGG16``
  (torchvision's ImageNet weights, TF1 bilinear resize to 224, ImageNet normalisation), layer
  ``fc2_relu`` (4096-d), torch-fidelity's default for ``prc``.
- **DINOv2 ViT-L/14** (FD-DINOv2): dgm-eval's protocol — PIL bicubic resize to 224×224,
  [0, 1], ImageNet mean/std — into the DINOv2 network (``transformers``' ``Dinov2Model`` with
  Meta's weights, ``facebook/dinov2-large``), the layer-normalised CLS token (1024-d).
  torch-fidelity's ``dinov2-vit-l-14`` resizes with TF1 bilinear instead and loads from torch
  hub only; evalkit follows dgm-eval.
- **CLIP image embeddings** (CMMD): the google-research reference — PIL centre crop to a
  square, PIL bicubic resize to the model's input size (336 for ViT-L/14@336), [0, 1], CLIP
  mean/std — L2-normalised.

Weights come from the metric's ``weights_path`` option or from ``evalkit fetch vgg16|dinov2|clip``
(checksummed into the cache); offline with neither, the error names the fetch command. The
backbone ``tiny-random`` builds a small random network of the same interface for tests and
plumbing (allowed only with ``--allow-random-weights``; results are uncalibrated).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from evalkit.batching import run_in_micro_batches, worker_count
from evalkit.errors import InputError, MissingWeightsError, UsageError
from evalkit.features.base import FeatureExtractor, device_identity
from evalkit.hashing import sha256_file
from evalkit.metrics.clip_models import as_clip_model

TINY_RANDOM = "tiny-random"
MICRO_BATCH = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: torchvision names its files by the first 8 hex digits of their sha256
VGG16_SHA256_PREFIX = "397923af"
DINOV2_REPO = "facebook/dinov2-large"
DINOV2_FILES = ("config.json", "model.safetensors")
RANDOM_SEED = 0


def weights_folder(cache_dir: str | os.PathLike, name: str) -> Path:
    """``<cache>/weights/<name>``."""
    return Path(cache_dir).expanduser() / "weights" / name


def _as_uint8(images: torch.Tensor, what: str) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(
            f"{what}: expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return images.cpu()


def pil_resize_square(images: torch.Tensor, size: int, crop: bool) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float32 [0, 1] (B, 3, size, size) by PIL bicubic (optionally after a
    centre crop to a square), the resize of the DINOv2 and CMMD reference implementations."""
    out = np.empty((images.shape[0], size, size, 3), dtype=np.float32)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        h, w = image.shape[:2]
        if crop and h != w:
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            image = image[top : top + s, left : left + s]
        pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(out / 255.0).permute(0, 3, 1, 2).contiguous()


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class _Backbone(FeatureExtractor):
    """Shared plumbing: lazy network, fixed micro-batches on one-thread workers, fingerprint."""

    layer: str = "features"
    dim: int = 0

    def __init__(self, weights: Path | None, weights_sha256: str, device: str, source: str) -> None:
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.source = source
        self.device = torch.device(device)
        self._net: torch.nn.Module | None = None

    @property
    def calibrated(self) -> bool:
        return self.weights is not None

    @property
    def layers(self) -> dict[str, int]:
        return {self.layer: self.dim}

    def _build(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                self._net = self._build().eval().requires_grad_(False).to(self.device)
        return self._net

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def load(self) -> None:
        """Build the network now (weights loaded and checked), not at the first batch."""
        _ = self.net

    def extract(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        batch = _as_uint8(images, self.name)
        with torch.inference_mode():
            out = run_in_micro_batches(
                self._forward, batch, size=MICRO_BATCH, workers=worker_count(self.device)
            )
        return {self.layer: out.to(torch.float32).numpy()}

    def fingerprint(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "preprocessing": self.preprocessing,
            "batch_size": MICRO_BATCH,
            **device_identity(self.device),
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.fingerprint(),
            "weights_source": self.source,
            "weights_path": str(self.weights) if self.weights else None,
        }

    preprocessing: str = ""


# --------------------------------------------------------------------------- VGG16


class _FileBackbone(_Backbone):
    """A backbone loaded from a weights file, or a tiny random network when there is none."""

    full_dim: int = 0
    tiny_dim: int = 0
    tiny_name: str = ""

    def __init__(self, weights: Path | None, weights_sha256: str, device: str, source: str) -> None:
        super().__init__(weights, weights_sha256, device, source)
        self.dim = self.full_dim if weights is not None else self.tiny_dim
        if weights is None:
            self.name = self.tiny_name


class _TinyVgg(torch.nn.Module):
    """A small random stand-in with VGG16's interface (fc2_relu of 64-d), for plumbing only."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = torch.nn.functional.interpolate(x.float(), size=(224, 224), mode="bilinear")
        return (torch.relu(self.fc(self.features(x / 255.0).flatten(1))),)


class Vgg16Extractor(_FileBackbone):
    """torch-fidelity's VGG16 extractor, layer fc2_relu (4096-d)."""

    name = "vgg16"
    layer = "fc2_relu"
    preprocessing = "torch-fidelity: TF1 bilinear to 224, ImageNet mean/std"
    full_dim, tiny_dim, tiny_name = 4096, 64, "vgg16-tiny-random"

    def _build(self) -> torch.nn.Module:
        if self.weights is None:
            return _TinyVgg()
        from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

        try:
            return FeatureExtractorVGG16(
                "vgg16", ["fc2_relu"], feature_extractor_weights_path=str(self.weights)
            )
        except Exception as exc:  # torch.load/state-dict errors come in many types
            raise InputError(
                f"VGG16 weights {self.weights}: cannot be loaded as torchvision's vgg16 ({exc})"
            ) from exc

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch.to(self.device))[0]


# --------------------------------------------------------------------------- DINOv2


class DinoV2Extractor(_FileBackbone):
    """DINOv2 ViT-L/14 CLS token (1024-d) with dgm-eval's preprocessing."""

    name = "dinov2-vit-l-14"
    layer = "cls"
    preprocessing = "dgm-eval: PIL bicubic to 224x224, [0,1], ImageNet mean/std"
    full_dim, tiny_dim, tiny_name = 1024, 32, "dinov2-tiny-random"

    def _build(self) -> torch.nn.Module:
        from transformers import Dinov2Config, Dinov2Model

        if self.weights is None:
            # MLP width hidden_size * mlp_ratio = 128: Dinov2Config has no intermediate_size
            # (once passed here and silently ignored), so 4 is the width always built
            config = Dinov2Config(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                patch_size=14, image_size=224,
            )  # fmt: skip
            return Dinov2Model(config)
        try:
            return Dinov2Model.from_pretrained(str(self.weights), local_files_only=True)
        except Exception as exc:  # transformers raises OSError/ValueError/... for bad folders
            raise InputError(f"DINOv2 weights {self.weights}: cannot be loaded ({exc})") from exc

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = _normalise(pil_resize_square(batch, 224, crop=False), IMAGENET_MEAN, IMAGENET_STD)
        return self.net(pixel_values=x.to(self.device)).pooler_output


# --------------------------------------------------------------------------- CLIP


class ClipImageExtractor(_Backbone):
    """L2-normalised CLIP image embeddings with the CMMD reference preprocessing."""

    layer = "embedding"

    def __init__(
        self,
        model: torch.nn.Module,
        info: Any,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: str,
    ) -> None:
        super().__init__(
            Path(info.weights_path) if info.weights_path else None,
            info.weights_sha256,
            device,
            info.weights_source,
        )
        self.name = f"clip-{info.model}"
        self.info = info
        self._model = model
        self.image_size = image_size
        self.mean, self.std = mean, std
        probe = torch.zeros(1, 3, image_size, image_size)
        self.dim = int(as_clip_model(model).encode_image(probe).shape[-1])
        self.preprocessing = (
            f"CMMD reference: PIL centre crop, PIL bicubic to {image_size}, [0,1], CLIP mean/std; "
            "embeddings L2-normalised"
        )

    @property
    def calibrated(self) -> bool:
        return not self.info.uncalibrated

    def _build(self) -> torch.nn.Module:
        return self._model

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = _normalise(pil_resize_square(batch, self.image_size, crop=True), self.mean, self.std)
        e = as_clip_model(self.net).encode_image(x.to(self.device)).float()
        return e / e.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- resolution


def _check_recorded(path: Path, what: str, fetch: str) -> str:
    """The file's sha256, checked against the one recorded when it was fetched."""
    from evalkit.fetch import read_lock

    expected = read_lock(path)
    actual = sha256_file(path)
    if expected is not None and expected != actual:
        raise MissingWeightsError(
            f"{what} {path} have sha256 {actual}, not the {expected} recorded when they were "
            f"fetched (corrupt or replaced); delete the file and run `{fetch}`"
        )
    return actual


def resolve_vgg16(
    weights_path: Any, cache_dir: str | os.PathLike, device: str, allow_random: bool, backbone: str
) -> Vgg16Extractor:
    """The VGG16 extractor from ``weights_path``, the fetched file, or (allowed) a tiny random one."""
    if backbone == TINY_RANDOM:
        _allow(allow_random, "VGG16")
        return Vgg16Extractor(None, "random", device, "random")
    if weights_path is not None:
        path = Path(str(weights_path)).expanduser()
        if not path.is_file():
            raise InputError(f"VGG16 weights file {path} not found")
        return Vgg16Extractor(path, sha256_file(path), device, "weights_path")
    path = weights_folder(cache_dir, "vgg16") / Path(VGG16_URL).name
    if not path.is_file():
        raise MissingWeightsError(
            f"no VGG16 weights in {path.parent}; run `evalkit fetch vgg16` (online), give the "
            "torchvision vgg16 file as the metric's weights_path option, or use backbone=tiny-random "
            "with --allow-random-weights for plumbing only"
        )
    return Vgg16Extractor(
        path, _check_recorded(path, "VGG16 weights", "evalkit fetch vgg16"), device, "cache"
    )


def resolve_dinov2(
    weights_path: Any, cache_dir: str | os.PathLike, device: str, allow_random: bool, backbone: str
) -> DinoV2Extractor:
    """The DINOv2 extractor from a local ``facebook/dinov2-large`` folder, the fetched one, or tiny random."""
    if backbone == TINY_RANDOM:
        _allow(allow_random, "DINOv2")
        return DinoV2Extractor(None, "random", device, "random")
    folder = (
        Path(str(weights_path)).expanduser()
        if weights_path is not None
        else weights_folder(cache_dir, "dinov2-vit-l-14")
    )
    missing = [name for name in DINOV2_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingWeightsError(
            f"no DINOv2 ViT-L/14 weights in {folder} (missing {', '.join(missing)}); run "
            f"`evalkit fetch dinov2` (online, {DINOV2_REPO}), or give a local copy of that "
            "repository's folder as the metric's weights_path option"
        )
    digest = _check_recorded(folder / "model.safetensors", "DINOv2 weights", "evalkit fetch dinov2")
    source = "weights_path" if weights_path is not None else "cache"
    return DinoV2Extractor(folder, digest, device, source)


def _allow(allow_random: bool, what: str) -> None:
    if not allow_random:
        raise UsageError(
            f"backbone 'tiny-random' is a random {what} stand-in (plumbing only); pass "
            "--allow-random-weights to use it"
        )


def fetch_vgg16(cache_dir: str | os.PathLike) -> Path:
    """Download torchvision's VGG16 ImageNet weights into the cache (sha256 prefix checked)."""
    from evalkit.fetch import download

    target = weights_folder(cache_dir, "vgg16") / Path(VGG16_URL).name
    path = download(VGG16_URL, target, None, description="torchvision VGG16 weights")
    digest = sha256_file(path)
    if not digest.startswith(VGG16_SHA256_PREFIX):
        path.unlink()
        raise InputError(
            f"downloaded VGG16 weights have sha256 {digest}, which does not start with the "
            f"{VGG16_SHA256_PREFIX} torchvision names the file by; removed"
        )
    Vgg16Extractor(path, digest, "cpu", "cache").load()
    return path


def fetch_dinov2(cache_dir: str | os.PathLike) -> Path:
    """Download ``facebook/dinov2-large`` (config and safetensors) into the cache and verify it loads."""
    from huggingface_hub import hf_hub_download

    from evalkit.fetch import _write_lock

    folder = weights_folder(cache_dir, "dinov2-vit-l-14")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in DINOV2_FILES:
            hf_hub_download(DINOV2_REPO, name, local_dir=str(folder))
    except Exception as exc:  # network and hub errors come in many types
        raise MissingWeightsError(
            f"could not download {DINOV2_REPO} ({type(exc).__name__}: {exc}); offline, copy that "
            f"repository's {', '.join(DINOV2_FILES)} into {folder} or pass weights_path"
        ) from exc
    weights = folder / "model.safetensors"
    _write_lock(weights, sha256_file(weights))
    json.loads((folder / "config.json").read_text(encoding="utf-8"))
    DinoV2Extractor(folder, sha256_file(weights), "cpu", "cache").load()
    return folder
