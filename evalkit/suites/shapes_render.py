"""Deterministic layout and rendering of shapes scenes (numpy only).

Layouts live in unit coordinates (x right, y down, the image is [0, 1]²), so one
(spec, seed) gives the same scene at every resolution. Objects are axis-aligned:
circles, squares and upward isosceles triangles whose base and height equal the
object's size. Coverage is computed analytically on a 4×4 supersampling grid per
pixel and averaged (a box filter), so edges are smooth but every pixel is an exact
blend of one object's colour with the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalkit.hashing import sha256_json
from evalkit.seeding import numpy_rng
from evalkit.suites.shapes_spec import BACKGROUND, PALETTE, relation_offsets, validate_spec

RENDERER_VERSION = "1"
SUPERSAMPLE = 4
#: free space kept between the bounding boxes of any two objects (unit coordinates)
GAP = 0.1
#: free border between objects and the image edge
INSET = 0.04
#: object size range (side of its bounding box) by number of objects in the scene
SIZE_RANGES: dict[int, tuple[float, float]] = {
    1: (0.30, 0.50),
    2: (0.22, 0.36),
    3: (0.20, 0.30),
    4: (0.20, 0.26),
}
#: a relation's objects are at least this far apart along its axis ...
RELATION_MIN_ALONG = 0.2
#: ... and their offset on the other axis is at most this fraction of that distance
RELATION_MAX_SLOPE = 0.5
_ATTEMPTS = 400
_SHRINK = (1.0, 0.9, 0.8, 0.7)
MIN_RESOLUTION, MAX_RESOLUTION = 8, 2048


@dataclass(frozen=True)
class PlacedObject:
    """An object of a laid-out scene: centre and size in unit coordinates."""

    color: str
    shape: str
    cx: float
    cy: float
    size: float

    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in unit coordinates."""
        h = self.size / 2
        return self.cx - h, self.cy - h, self.cx + h, self.cy + h


def render_parameters() -> dict[str, Any]:
    """Everything that changes the renders, for identities and cache keys."""
    return {
        "renderer": RENDERER_VERSION,
        "supersample": SUPERSAMPLE,
        "background": list(BACKGROUND),
        "palette": {k: list(v) for k, v in PALETTE.items()},
        "gap": GAP,
        "inset": INSET,
        "size_ranges": {str(k): list(v) for k, v in SIZE_RANGES.items()},
        "relation_min_along": RELATION_MIN_ALONG,
        "relation_max_slope": RELATION_MAX_SLOPE,
        "attempts": _ATTEMPTS,
        "shrink": list(_SHRINK),
    }


def render_hash() -> str:
    """sha256 of :func:`render_parameters`."""
    return sha256_json(render_parameters())


def _separated(a: PlacedObject, b: PlacedObject) -> bool:
    reach = (a.size + b.size) / 2 + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _acceptable(objs: list[PlacedObject], relation: str | None) -> bool:
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            if not _separated(objs[i], objs[j]):
                return False
    if relation is None:
        return True
    along, across = relation_offsets(relation, (objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy))
    return along >= RELATION_MIN_ALONG and across <= RELATION_MAX_SLOPE * along


def layout_scene(spec: Mapping[str, Any], seed: int) -> list[PlacedObject]:
    """Place the spec's objects without overlap (and in their relation), from ``seed``.

    Objects come in spec order, each kind repeated ``count`` times. Rejection sampling;
    if a scene does not fit, sizes shrink step by step (deterministically).
    """
    spec = validate_spec(spec)
    kinds = [(o["color"], o["shape"]) for o in spec["objects"] for _ in range(o["count"])]
    lo, hi = SIZE_RANGES[len(kinds)]
    rng = numpy_rng(int(seed))
    for scale in _SHRINK:
        for _ in range(_ATTEMPTS):
            sizes = rng.uniform(lo, hi, size=len(kinds)) * scale
            free = 1.0 - 2 * INSET - sizes
            xs = INSET + sizes / 2 + rng.uniform(0.0, 1.0, size=len(kinds)) * free
            ys = INSET + sizes / 2 + rng.uniform(0.0, 1.0, size=len(kinds)) * free
            objs = [
                PlacedObject(c, s, float(x), float(y), float(z))
                for (c, s), x, y, z in zip(kinds, xs, ys, sizes, strict=True)
            ]
            if _acceptable(objs, spec["relation"]):
                return objs
    raise RuntimeError(f"could not lay out {spec} with seed {seed}")  # pragma: no cover


def _inside(
    shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, half: float
) -> np.ndarray:
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half * half
    if shape == "square":
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if shape == "triangle":
        top = cy - half
        return (y <= cy + half) & (np.abs(x - cx) <= (y - top) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(
    shape: str, cx: float, cy: float, size: float, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """Fraction of each pixel in ``rows`` × ``cols`` (half-open) a shape covers, in pixel units.

    (cx, cy) is the centre of the shape's bounding box and ``size`` its side, both in
    pixels (pixel (i, j) spans [j, j+1] × [i, i+1]); 4×4 supersampling, averaged.
    """
    (y0, y1), (x0, x1) = rows, cols
    xs = (np.arange(x0 * SUPERSAMPLE, x1 * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = (np.arange(y0 * SUPERSAMPLE, y1 * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    inside = _inside(shape, xs[None, :], ys[:, None], cx, cy, size / 2)
    return inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))


def _coverage(obj: PlacedObject, resolution: int) -> tuple[slice, slice, np.ndarray]:
    """Coverage of an object over the pixels of its bounding box (plus one pixel)."""
    cx, cy, size = obj.cx * resolution, obj.cy * resolution, obj.size * resolution
    x0, x1 = (
        max(0, int(np.floor(cx - size / 2)) - 1),
        min(resolution, int(np.ceil(cx + size / 2)) + 1),
    )
    y0, y1 = (
        max(0, int(np.floor(cy - size / 2)) - 1),
        min(resolution, int(np.ceil(cy + size / 2)) + 1),
    )
    cov = shape_coverage(obj.shape, cx, cy, size, (y0, y1), (x0, x1))
    return slice(y0, y1), slice(x0, x1), cov


def check_resolution(resolution: Any) -> int:
    """``resolution`` as an int, or ValueError."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be an integer, got {resolution!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution must be in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution}"
        )
    return int(resolution)


def render_layout(objects: list[PlacedObject], resolution: int) -> np.ndarray:
    """uint8 (H, W, 3) image of laid-out objects on the background."""
    resolution = check_resolution(resolution)
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    canvas = np.broadcast_to(bg, (resolution, resolution, 3)).copy()
    for obj in objects:
        rows, cols, cov = _coverage(obj, resolution)
        color = np.asarray(PALETTE[obj.color], dtype=np.float64)
        canvas[rows, cols] += cov[..., None] * (color - bg)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_scene(spec: Mapping[str, Any], resolution: int, seed: int) -> np.ndarray:
    """Render ``spec`` at ``resolution`` with the layout drawn from ``seed``: uint8 (H, W, 3)."""
    return render_layout(layout_scene(spec, seed), resolution)
