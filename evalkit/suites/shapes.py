"""``shapes``: an offline compositional suite of flat coloured shapes on a white background.

Five categories mirror DrawBench's: ``single`` ("a blue triangle"), ``colors``
(attribute binding, "a red circle and a blue square"), ``counting`` ("three green
triangles"), ``positional`` ("a red circle to the left of a blue square") and
``composition`` (three objects, "a red circle, a blue circle and a green square").
Every item carries its structured spec (``Item.spec``) for the ``shapes_accuracy``
metric, and has rendered reference images. See docs/shapes.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from evalkit.errors import InputError
from evalkit.hashing import sha256_json
from evalkit.options import as_int, check_known
from evalkit.seeding import derive_seed, numpy_rng
from evalkit.suites.base import Item, ReferenceSet, Suite, validate_prompt
from evalkit.suites.shapes_render import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    check_resolution,
    render_hash,
    render_scene,
)
from evalkit.suites.shapes_spec import (
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    make_object,
    random_spec,
    spec_prompt,
    validate_spec,
)

__all__ = ["ShapesSuite", "ShapesReferenceSet", "make_shapes_suite", "random_spec", "render_scene"]

#: bump when the grammar, the item generation or the renderer changes
SUITE_VERSION = "1"
DEFAULTS: dict[str, int] = {"num_items": 200, "seed": 0, "resolution": 64}
MAX_ITEMS = 100_000
#: how option errors name this suite
WHERE = "suite 'shapes'"


def _stream_seed(seed: int, stream: str, item_id: str) -> int:
    return derive_seed(seed, f"shapes/{stream}/{item_id}", 0)


def category_sizes(num_items: int) -> dict[str, int]:
    """Items per category: an even split, the first categories taking the remainder."""
    base, extra = divmod(num_items, len(CATEGORIES))
    return {cat: base + (1 if i < extra else 0) for i, cat in enumerate(CATEGORIES)}


def item_spec(seed: int, category: str, index: int) -> dict[str, Any]:
    """The spec of item ``index`` of ``category``: depends only on (seed, category, index).

    Counts (2, 3, 4) and relations cycle with the index, and ``single`` walks a seeded
    order of all colour × shape pairs, so each category stays balanced at any size.
    """
    rng = numpy_rng(_stream_seed(seed, "spec", item_id(category, index)))
    if category == "single":
        pairs = [(c, s) for c in COLORS for s in SHAPES]
        order = numpy_rng(_stream_seed(seed, "spec", "single-order")).permutation(len(pairs))
        color, shape = pairs[int(order[index % len(pairs)])]
        return {"objects": [make_object(color, shape)], "relation": None}
    if category == "counting":
        return random_spec(rng, category, count=2 + index % 3)
    if category == "positional":
        return random_spec(rng, category, relation=list(RELATIONS)[index % len(RELATIONS)])
    return random_spec(rng, category)


def item_id(category: str, index: int) -> str:
    """Stable id, e.g. ``shapes-positional-0007``."""
    return f"shapes-{category}-{index:04d}"


class ShapesReferenceSet(ReferenceSet):
    """Renders of every item with a layout stream of their own (not the canonical one)."""

    def __init__(self, suite: ShapesSuite, resolution: int) -> None:
        self.suite = suite
        self.resolution = check_resolution(resolution)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.suite.name,
            "version": self.suite.version,
            "options": self.suite.options(),
            "count": len(self),
            "resolution": self.resolution,
            "stream": "reference-set",
            "render_hash": render_hash(),
        }

    def __len__(self) -> int:
        return len(self.suite.items())

    def image(self, item: Item) -> np.ndarray:
        """One reference render of ``item`` (uint8 (H, W, 3))."""
        seed = _stream_seed(self.suite.seed, "reference-set", item.id)
        return render_scene(_spec_of(item), self.resolution, seed)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        items = self.suite.items()
        for start in range(0, len(items), batch_size):
            yield np.stack([self.image(item) for item in items[start : start + batch_size]])


def _spec_of(item: Item) -> dict[str, Any]:
    if item.spec is None:
        raise InputError(f"item {item.id!r} has no shapes spec to render")
    try:
        return validate_spec(item.spec)
    except ValueError as exc:
        raise InputError(f"item {item.id!r}: {exc}") from exc


class ShapesSuite(Suite):
    """Procedurally generated compositional prompts with exact specs and rendered references."""

    name = "shapes"
    version = SUITE_VERSION

    def __init__(self, num_items: int = 200, seed: int = 0, resolution: int = 64) -> None:
        self.num_items = as_int(num_items, "num_items", WHERE, minimum=1, maximum=MAX_ITEMS)
        self.seed = as_int(seed, "seed", WHERE, minimum=0)
        self.resolution = as_int(
            resolution, "resolution", WHERE, minimum=MIN_RESOLUTION, maximum=MAX_RESOLUTION
        )
        self._items: list[Item] | None = None

    def options(self) -> dict[str, int]:
        """The options this suite was made with."""
        return {"num_items": self.num_items, "seed": self.seed, "resolution": self.resolution}

    def items(self) -> list[Item]:
        if self._items is None:
            items = []
            for category, n in category_sizes(self.num_items).items():
                for index in range(n):
                    spec = item_spec(self.seed, category, index)
                    iid = item_id(category, index)
                    prompt = validate_prompt(spec_prompt(spec), f"suite 'shapes' item {iid}")
                    items.append(Item(id=iid, prompt=prompt, category=category, spec=spec))
            self._items = items
        return list(self._items)

    def describe(self) -> dict[str, Any]:
        items = self.items()
        return {
            "name": self.name,
            "version": self.version,
            "options": self.options(),
            "count": len(items),
            "categories": category_sizes(self.num_items),
            "items_hash": sha256_json([[i.id, i.prompt, i.spec] for i in items]),
            "render_hash": render_hash(),
        }

    def reference_image(self, item: Item, resolution: int) -> np.ndarray:
        """The item's canonical scene (layout seeded by the suite seed and the item id)."""
        seed = _stream_seed(self.seed, "canonical", item.id)
        return render_scene(_spec_of(item), resolution, seed)

    def reference_set(self, resolution: int) -> ShapesReferenceSet:
        return ShapesReferenceSet(self, resolution)


def make_shapes_suite(options: dict[str, Any]) -> ShapesSuite:
    """Registry factory for ``shapes``: options num_items (200), seed (0), resolution (64)."""
    check_known(options, DEFAULTS, WHERE)
    return ShapesSuite(**{**DEFAULTS, **options})
