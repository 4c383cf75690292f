"""Training data rendered by the ``shapes`` suite: an unlimited source of (image, caption) pairs.

Example ``i`` is a random spec of a category drawn with the configured weights, laid out
with its own seed and rendered at ``resolution``; its caption is the suite's prompt for
that spec (:func:`~evalkit.suites.shapes_spec.spec_prompt`). Everything depends only on
(``seed``, ``i``), so the source is map-style (``len`` is a nominal epoch of ``size``
scenes, which the trainer shuffles and resumes exactly) and also iterates without end.

The default weights lean towards what a small model learns first (one coloured shape),
while every category keeps a share so the model sees counts, relations and bindings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from evalkit.errors import UsageError
from evalkit.seeding import derive_seed, numpy_rng
from evalkit.suites.shapes import random_spec, render_scene
from evalkit.suites.shapes_spec import CATEGORIES, spec_prompt

#: share of each category in the training stream (normalised; single objects first)
DEFAULT_WEIGHTS: dict[str, float] = {
    "single": 0.40,
    "colors": 0.15,
    "counting": 0.15,
    "positional": 0.15,
    "composition": 0.15,
}
#: nominal epoch: the trainer shuffles indices 0..size-1 (2^20 scenes, more than any bundled run sees)
DEFAULT_SIZE = 2**20


def parse_weights(text: str | None) -> dict[str, float]:
    """``"single=0.5,colors=0.2"`` → weights (unnamed categories get 0); empty → the defaults."""
    if not text:
        return dict(DEFAULT_WEIGHTS)
    weights = {c: 0.0 for c in CATEGORIES}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise UsageError(
                f"shapes weights: expected CATEGORY=WEIGHT with a category of {list(CATEGORIES)}, got {part!r}"
            )
        try:
            weights[name] = float(value)
        except ValueError as exc:
            raise UsageError(f"shapes weights: {value!r} is not a number") from exc
    return weights


class ShapesTrainingData:
    """Scenes of the ``shapes`` grammar as (uint8 (R, R, 3) image, caption) pairs."""

    def __init__(
        self,
        resolution: int = 64,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        size: int = DEFAULT_SIZE,
    ) -> None:
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(CATEGORIES))
        if unknown:
            raise UsageError(
                f"shapes weights: unknown categories {unknown}; known: {list(CATEGORIES)}"
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise UsageError(
                f"shapes weights must be non-negative with a positive sum, got {weights}"
            )
        if size < 1:
            raise UsageError(f"shapes training data size must be positive, got {size}")
        self.resolution, self.seed, self.size = int(resolution), int(seed), int(size)
        self.categories = [c for c in CATEGORIES if weights.get(c, 0.0) > 0]
        total = sum(weights[c] for c in self.categories)
        self.probs = np.array([weights[c] / total for c in self.categories])

    def describe(self) -> dict[str, Any]:
        """What the source draws: resolution, seed, size and category weights."""
        return {
            "source": "shapes",
            "resolution": self.resolution,
            "seed": self.seed,
            "size": self.size,
            "weights": {c: float(p) for c, p in zip(self.categories, self.probs, strict=True)},
        }

    def spec(self, i: int) -> tuple[dict[str, Any], int]:
        """(spec, layout seed) of example ``i``."""
        rng = numpy_rng(derive_seed(self.seed, "imagen-train/shapes", int(i)))
        category = self.categories[int(rng.choice(len(self.categories), p=self.probs))]
        spec = random_spec(rng, category)
        return spec, int(rng.integers(2**63))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        if not 0 <= int(i) < self.size:
            raise IndexError(f"shapes training example {i} out of range 0..{self.size - 1}")
        spec, layout_seed = self.spec(i)
        return render_scene(spec, self.resolution, layout_seed), spec_prompt(spec)

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        """Examples 0, 1, 2, … without end (past ``size`` the indices keep counting)."""
        i = 0
        while True:
            spec, layout_seed = self.spec(i)
            yield render_scene(spec, self.resolution, layout_seed), spec_prompt(spec)
            i += 1


__all__ = ["DEFAULT_WEIGHTS", "ShapesTrainingData", "parse_weights"]
