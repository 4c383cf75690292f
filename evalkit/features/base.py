"""The feature-extractor interface, and the content identity of an image."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from evalkit.hashing import sha256_json


def image_ids(images: torch.Tensor) -> list[str]:
    """Content identity of each uint8 (B, 3, H, W) image: sha256 of its shape and pixels.

    Features depend on nothing else, so equal pixels share features whatever file, run or
    suite they came from.
    """
    arr = np.ascontiguousarray(images.detach().cpu().numpy())
    out = []
    for image in arr:
        h = hashlib.sha256(f"{image.dtype}{image.shape}".encode())
        h.update(image.tobytes())
        out.append(h.hexdigest())
    return out


def device_identity(device: str | torch.device) -> dict[str, str]:
    """What fixes the low bits of a network's output beside its weights: device kind, torch
    version, and the CPU kernel set or GPU model (features of one never mix with another's)."""
    dev = torch.device(device)
    info = {"device": dev.type, "torch": torch.__version__}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    elif dev.type == "cpu":
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


class FeatureExtractor(ABC):
    """uint8 images (B, 3, H, W) → {layer: float32 (B, D)}, on fixed-shape micro-batches."""

    #: short name, e.g. "inception-v3-compat"
    name: str = "extractor"

    @property
    @abstractmethod
    def layers(self) -> dict[str, int]:
        """Every output layer and its dimension (all computed on each call)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the features: weights sha256, preprocessing, dtype, micro-batch,
        device identity (:func:`device_identity`)."""

    @abstractmethod
    def extract(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of a batch of any size; each row depends only on its own image."""

    @property
    def calibrated(self) -> bool:
        """False when the weights are random (results marked uncalibrated)."""
        return True

    def describe(self) -> dict[str, Any]:
        """Manifest entries (defaults to the fingerprint)."""
        return dict(self.fingerprint())

    def key(self) -> str:
        """Store address of this extractor's features: a hash of the fingerprint."""
        return f"{self.name}-{sha256_json(self.fingerprint())[:16]}"
