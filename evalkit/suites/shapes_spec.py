"""The shapes grammar: palette, shapes, relations, structured specs and their prompts.

A spec is a JSON-able dict::

    {"objects": [{"color": "red", "shape": "circle", "count": 1}, ...],
     "relation": "left_of" | "right_of" | "above" | "below" | None}

Each object entry is one *kind* (colour, shape) with how many of it the scene holds;
kinds are distinct. A relation always reads "object 0 <relation> object 1" and needs
exactly two kinds of one object each. The prompt names every object in the scene.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: sRGB of every named colour; chosen at least 41 CIELAB ΔE apart and from the background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 150, 20),
    "yellow": (240, 220, 30),
    "green": (30, 160, 60),
    "blue": (30, 100, 230),
    "purple": (160, 50, 190),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
BACKGROUND_NAME = "white"
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
}
CATEGORIES: tuple[str, ...] = ("colors", "composition", "counting", "positional", "single")
MAX_COUNT = 4
MAX_OBJECTS = 4
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def make_object(color: str, shape: str, count: int = 1) -> dict[str, Any]:
    """One object kind of a spec."""
    return {"color": color, "shape": shape, "count": int(count)}


def validate_spec(spec: Any) -> dict[str, Any]:
    """A normalised copy of ``spec``; raises ValueError naming what is wrong."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"shapes spec must be a mapping, got {type(spec).__name__}")
    objects = spec.get("objects")
    if not isinstance(objects, Sequence) or isinstance(objects, str) or not objects:
        raise ValueError("shapes spec needs a non-empty list 'objects'")
    out: list[dict[str, Any]] = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, Mapping):
            raise ValueError(f"shapes spec object {i} must be a mapping")
        color, shape, count = obj.get("color"), obj.get("shape"), obj.get("count", 1)
        if color not in PALETTE:
            raise ValueError(
                f"shapes spec object {i}: unknown colour {color!r}; choose from {list(COLORS)}"
            )
        if shape not in SHAPES:
            raise ValueError(
                f"shapes spec object {i}: unknown shape {shape!r}; choose from {list(SHAPES)}"
            )
        if (
            isinstance(count, bool)
            or not isinstance(count, (int, np.integer))
            or not 1 <= count <= MAX_COUNT
        ):
            raise ValueError(
                f"shapes spec object {i}: count must be an integer in 1..{MAX_COUNT}, got {count!r}"
            )
        out.append(make_object(color, shape, int(count)))
    kinds = [(o["color"], o["shape"]) for o in out]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"shapes spec repeats an object kind: {kinds}")
    total = sum(o["count"] for o in out)
    if total > MAX_OBJECTS:
        raise ValueError(f"shapes spec has {total} objects; at most {MAX_OBJECTS} fit a scene")
    relation = spec.get("relation")
    if relation is not None:
        if relation not in RELATIONS:
            raise ValueError(
                f"shapes spec: unknown relation {relation!r}; choose from {list(RELATIONS)}"
            )
        if len(out) != 2 or any(o["count"] != 1 for o in out):
            raise ValueError("shapes spec: a relation needs exactly two objects of count 1")
    return {"objects": out, "relation": relation}


def object_phrase(color: str, shape: str, count: int = 1, *, article: bool = True) -> str:
    """'a red circle', 'an orange square', 'three green triangles' ('3 green triangles' without ``article``)."""
    noun = shape if count == 1 else f"{shape}s"
    if not article:
        return f"{count} {color} {noun}"
    if count == 1:
        return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {noun}"
    return f"{NUMBER_WORDS[count]} {color} {noun}"


def spec_prompt(spec: Mapping[str, Any]) -> str:
    """The natural-language prompt of a spec."""
    spec = validate_spec(spec)
    objs = spec["objects"]
    if spec["relation"] is not None:
        a, b = (object_phrase(o["color"], o["shape"]) for o in objs)
        return f"{a} {RELATIONS[spec['relation']]} {b}"
    phrases = [object_phrase(o["color"], o["shape"], o["count"]) for o in objs]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relation_offsets(
    relation: str, a: tuple[float, float], b: tuple[float, float]
) -> tuple[float, float]:
    """(along, across) for "a <relation> b" with centres (x, y), y pointing down.

    ``along`` is how far a lies in the relation's direction from b (positive when the
    relation holds on that axis); ``across`` is the absolute offset on the other axis.
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    if relation == "left_of":
        return dx, abs(dy)
    if relation == "right_of":
        return -dx, abs(dy)
    if relation == "above":
        return dy, abs(dx)
    if relation == "below":
        return -dy, abs(dx)
    raise ValueError(f"unknown relation {relation!r}; choose from {list(RELATIONS)}")


def expected_counts(spec: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """(colour, shape) -> number of such objects the scene must hold."""
    return {(o["color"], o["shape"]): o["count"] for o in validate_spec(spec)["objects"]}


def _choice(rng: np.random.Generator, options: Sequence[Any], k: int = 1) -> list[Any]:
    idx = rng.choice(len(options), size=k, replace=False)
    return [options[int(i)] for i in idx]


def random_spec(
    rng: np.random.Generator,
    category: str,
    *,
    count: int | None = None,
    relation: str | None = None,
) -> dict[str, Any]:
    """A random spec of ``category``; ``count`` (counting) and ``relation`` (positional) may be fixed.

    - ``single``: one object ("a blue triangle")
    - ``colors``: two objects of different colours *and* shapes ("a red circle and a blue square")
    - ``counting``: 2..4 objects of one kind ("three green triangles"); one object is ``single``
    - ``positional``: two objects of different colours in a relation
    - ``composition``: three objects of different colours ("a red circle, a blue circle and ...")
    """
    if category == "single":
        (color,), (shape,) = _choice(rng, COLORS), _choice(rng, SHAPES)
        return {"objects": [make_object(color, shape)], "relation": None}
    if category == "colors":
        colors, shapes = _choice(rng, COLORS, 2), _choice(rng, SHAPES, 2)
        return {
            "objects": [make_object(c, s) for c, s in zip(colors, shapes, strict=True)],
            "relation": None,
        }
    if category == "counting":
        n = int(rng.integers(2, MAX_COUNT + 1)) if count is None else int(count)
        (color,), (shape,) = _choice(rng, COLORS), _choice(rng, SHAPES)
        return validate_spec({"objects": [make_object(color, shape, n)], "relation": None})
    if category == "positional":
        rel = _choice(rng, list(RELATIONS))[0] if relation is None else relation
        colors = _choice(rng, COLORS, 2)
        shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), size=2)]
        return validate_spec(
            {
                "objects": [make_object(c, s) for c, s in zip(colors, shapes, strict=True)],
                "relation": rel,
            }
        )
    if category == "composition":
        colors = _choice(rng, COLORS, 3)
        shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), size=3)]
        return {
            "objects": [make_object(c, s) for c, s in zip(colors, shapes, strict=True)],
            "relation": None,
        }
    raise ValueError(f"unknown shapes category {category!r}; choose from {list(CATEGORIES)}")
