"""The suite interface: items (id, prompt, category, optional spec) and reference images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalkit.errors import InputError

MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class Item:
    """One prompt of a suite.

    ``id`` is stable across versions of the suite and safe to use in file names;
    ``spec`` is an optional structured description (e.g. the objects of a shapes scene);
    ``reference`` optionally locates the item's own reference image (e.g. a COCO file).
    """

    id: str
    prompt: str
    category: str | None = None
    spec: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    reference: str | None = None


def validate_prompt(prompt: Any, where: str) -> str:
    """Return ``prompt`` if usable; empty or absurdly long prompts raise :class:`InputError`."""
    if not isinstance(prompt, str):
        raise InputError(f"{where}: prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError(f"{where}: prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"{where}: prompt is {len(prompt)} characters long (limit {MAX_PROMPT_CHARS}); "
            "text encoders truncate far earlier, so this is almost certainly a malformed file"
        )
    return prompt


class ReferenceSet(ABC):
    """Real images a distribution metric (FID, KID) compares against.

    ``identity()`` must change whenever the images or their preprocessing change:
    it keys the cached reference statistics.
    """

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, count, content hash and preprocessing (crop, resize, size) of the set."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of reference images."""

    @abstractmethod
    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Batches of preprocessed images as uint8 arrays (B, H, W, 3)."""


class Suite(ABC):
    """A prompt suite. Subclasses set ``name`` and ``version``."""

    name: str = "suite"
    version: str = "0"

    @abstractmethod
    def items(self) -> list[Item]:
        """The suite's items, in a fixed order."""

    def describe(self) -> dict[str, Any]:
        """What the protocol manifest records about the suite (options, source hash ...)."""
        return {"name": self.name, "version": self.version}

    def reference_set(self, resolution: int) -> ReferenceSet | None:
        """The reference images for distribution metrics at ``resolution``, or None."""
        return None

    def reference_image(self, item: Item, resolution: int) -> np.ndarray:
        """The item's own reference image, uint8 (H, W, 3); used by the ``reference`` model."""
        raise InputError(f"suite {self.name!r} has no reference images (item {item.id!r})")

    def categories(self) -> list[str]:
        """Sorted distinct categories of the items."""
        return sorted({i.category for i in self.items() if i.category})
