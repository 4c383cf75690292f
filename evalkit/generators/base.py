"""The generator interface every model plugs into.

``generate(requests)`` takes prompts with per-image seeds and returns uint8 images
(N, 3, H, W) at the context's resolution. A generator must draw each image's noise
from that image's own seed, never from a shared stream, so images do not depend on
batch size or process count. ``fingerprint()`` identifies everything that changes
the pixels (weights hashes, settings, code version): it keys the image cache.

Cascades may also offer every stage's output (an optional capability, see
:class:`StagedGenerator`): ``evalkit run --per-stage`` then scores each stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from evalkit.errors import GenerationError
from evalkit.suites.base import Item, Suite


@dataclass(frozen=True)
class GenerationRequest:
    """One image to make: the item, which of its K samples, and the derived seed."""

    item: Item
    sample_index: int
    seed: int

    @property
    def prompt(self) -> str:
        return self.item.prompt


@dataclass
class GeneratorContext:
    """What a model factory gets besides its own options."""

    resolution: int
    device: str = "cpu"
    suite: Suite | None = None
    allow_random_weights: bool = False
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Generator(ABC):
    """A text-to-image model as evalkit sees it."""

    name: str = "generator"
    #: True when weights are random (plumbing only): results are marked uncalibrated.
    uncalibrated: bool = False

    @property
    @abstractmethod
    def native_resolution(self) -> int:
        """The side length the model produces before any resize."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity: weights hashes, settings, code version."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """uint8 images (len(requests), 3, R, R) at the context resolution R."""

    def settings(self) -> dict[str, Any]:
        """The sampling settings in force (recorded in the manifest)."""
        return {}


@dataclass(frozen=True)
class StageImages:
    """One cascade stage's output for a batch of requests."""

    name: str
    """Stage label, unique within the cascade (e.g. ``"sr64@64"``)."""
    native_resolution: int
    """Side length the stage produces."""
    images: torch.Tensor
    """uint8 (N, 3, R, R) at the context resolution R (resized like the final output)."""
    latency_s: float
    """Wall-clock seconds the stage took for the whole batch."""


@runtime_checkable
class StagedGenerator(Protocol):
    """Optional capability of cascades: every stage's output, not just the last.

    ``generate_stages(requests)[-1].images`` must equal ``generate(requests)`` bit for bit,
    and every stage's images must be independent of the batch, like ``generate``'s.
    """

    name: str
    """The model name, as on :class:`Generator` (which a staged generator also is)."""

    def stage_names(self) -> list[str]:
        """Unique stage labels in cascade order (the last is the final output)."""
        ...

    def stage_resolutions(self) -> list[int]:
        """Each stage's native side length, in the order of :meth:`stage_names`."""
        ...

    def generate_stages(self, requests: Sequence[GenerationRequest]) -> list[StageImages]:
        """Every stage's images for ``requests``, in cascade order."""
        ...


def float_to_uint8(
    images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Map float images in ``value_range`` to uint8; NaN/inf or far out-of-range values raise."""
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise GenerationError(f"generator output contains NaN or infinite values in {bad} image(s)")
    lo, hi = value_range
    margin = 0.05 * (hi - lo)
    if images.min() < lo - margin or images.max() > hi + margin:
        raise GenerationError(
            f"generator output outside its declared range [{lo}, {hi}]: "
            f"min {images.min().item():.3f}, max {images.max().item():.3f}"
        )
    scaled = (images.float().clamp(lo, hi) - lo) / (hi - lo) * 255.0
    return scaled.round().to(torch.uint8)


def check_output(images: Any, n: int, resolution: int, model: str) -> torch.Tensor:
    """Validate a generator's output: uint8 tensor of shape (n, 3, resolution, resolution)."""
    if not isinstance(images, torch.Tensor):
        raise GenerationError(
            f"model {model!r} returned {type(images).__name__}, expected a torch.Tensor"
        )
    if images.dtype != torch.uint8:
        raise GenerationError(
            f"model {model!r} returned dtype {images.dtype}, expected torch.uint8 "
            "(convert with evalkit.generators.base.float_to_uint8)"
        )
    expected = (n, 3, resolution, resolution)
    if tuple(images.shape) != expected:
        raise GenerationError(
            f"model {model!r} returned images of shape {tuple(images.shape)}, expected {expected}"
        )
    return images.cpu()
