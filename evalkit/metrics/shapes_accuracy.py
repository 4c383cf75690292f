"""``shapes_accuracy``: GenEval-style check that an image satisfies every clause of its spec.

Each image is parsed into objects (:mod:`evalkit.metrics.shapes_parse`) and is correct
only when all clauses hold (as in Composable Diffusion's evaluation):

- count: exactly ``count`` objects of each named (colour, shape);
- exact set: no object of any other kind (the prompts describe the whole scene; the
  ``allow_extra`` option drops this clause);
- relation: the two objects' centroids differ in the relation's direction, and more
  along its axis than across it.

An item's score is the mean over its images; the value is the mean over items with a
bootstrap interval over items, overall and per category.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from evalkit.errors import UsageError
from evalkit.metrics.base import Metric, MetricContext, MetricResult
from evalkit.metrics.bootstrap import summarize
from evalkit.metrics.shapes_parse import (
    DEFAULT_PARAMS,
    PARSER_VERSION,
    UNKNOWN,
    FoundObject,
    ParseParams,
    parse_image,
)
from evalkit.options import as_bool, as_float, as_int, check_known
from evalkit.suites.base import Item
from evalkit.suites.shapes_spec import (
    BACKGROUND,
    PALETTE,
    expected_counts,
    relation_offsets,
    validate_spec,
)

METRIC_VERSION = "1"
DEFAULT_MAX_VERDICTS = 2000
#: how option errors name this metric
WHERE = "metric 'shapes_accuracy'"
_RELATION_WORDS = {"left_of": "left of", "right_of": "right of", "above": "above", "below": "below"}
_RELATION_AXIS = {"left_of": 0, "right_of": 0, "above": 1, "below": 1}


@dataclass(frozen=True)
class Verdict:
    """Whether one image satisfies its spec, why not, and what was found."""

    correct: bool
    reason: str
    found: tuple[FoundObject, ...]


def _kind_phrase(color: str, shape: str, n: int) -> str:
    if shape == UNKNOWN:
        return f"{n} {color} object{'s' if n != 1 else ''} of unrecognised shape"
    return f"{n} {color} {shape}{'s' if n != 1 else ''}"


def _relation_reason(
    relation: str, kinds: list[tuple[str, str]], a: FoundObject, b: FoundObject
) -> str | None:
    """None when "a <relation> b" holds, else why not."""
    along, across = relation_offsets(relation, (a.x, a.y), (b.x, b.y))
    if along > 0 and across < along:
        return None
    i = _RELATION_AXIS[relation]  # 0: x, 1: y
    pa, pb = (a.x, a.y), (b.x, b.y)
    (c0, s0), (c1, s1) = kinds
    reason = (
        f"{c0} {s0} is not {_RELATION_WORDS[relation]} {c1} {s1} "
        f"({'xy'[i]} {pa[i]:.0f} vs {pb[i]:.0f}"
    )
    if along > 0:
        reason += f", but {'yx'[i]} {pa[1 - i]:.0f} vs {pb[1 - i]:.0f} differs more"
    return reason + ")"


def check_spec(
    spec: Mapping[str, Any], found: Sequence[FoundObject], *, allow_extra: bool = False
) -> tuple[bool, str]:
    """(correct, reason) for parsed objects against a spec; every failing clause is named."""
    spec = validate_spec(spec)
    expected = expected_counts(spec)
    got = Counter((o.color, o.shape) for o in found)
    reasons = [
        f"expected {_kind_phrase(color, shape, n)}, found {got.get((color, shape), 0)}"
        for (color, shape), n in expected.items()
        if got.get((color, shape), 0) != n
    ]
    extras = sorted((kind, n) for kind, n in got.items() if kind not in expected)
    if extras and not allow_extra:
        reasons.append("unexpected " + ", ".join(_kind_phrase(c, s, n) for (c, s), n in extras))
    relation = spec["relation"]
    kinds = list(expected)
    if relation is not None and all(got.get(k, 0) == 1 for k in kinds):
        a, b = (next(o for o in found if (o.color, o.shape) == k) for k in kinds)
        why = _relation_reason(relation, kinds, a, b)
        if why:
            reasons.append(why)
    return (not reasons), ("; ".join(reasons) if reasons else "all clauses hold")


def judge_image(
    image: np.ndarray,
    spec: Mapping[str, Any],
    *,
    params: ParseParams = DEFAULT_PARAMS,
    allow_extra: bool = False,
) -> Verdict:
    """Parse a uint8 (H, W, 3) image and check it against ``spec``."""
    found = tuple(parse_image(image, params))
    correct, reason = check_spec(spec, found, allow_extra=allow_extra)
    return Verdict(correct, reason, found)


def _item_spec(item: Item, suite_name: str) -> dict[str, Any]:
    if item.spec is None:
        raise UsageError(
            f"shapes_accuracy needs the shapes suite (items with a structured spec); "
            f"item {item.id!r} of suite {suite_name!r} has none"
        )
    try:
        return validate_spec(item.spec)
    except ValueError as exc:
        raise UsageError(f"shapes_accuracy: item {item.id!r} has an invalid spec: {exc}") from exc


class ShapesAccuracy(Metric):
    """Fraction of images whose parsed objects satisfy every clause of their prompt's spec."""

    name = "shapes_accuracy"

    def __init__(
        self,
        context: MetricContext,
        *,
        params: ParseParams = DEFAULT_PARAMS,
        allow_extra: bool = False,
        max_verdicts: int = DEFAULT_MAX_VERDICTS,
    ) -> None:
        self.context = context
        self.params = params
        self.allow_extra = as_bool(allow_extra, "allow_extra", WHERE)
        self.max_verdicts = as_int(max_verdicts, "max_verdicts", WHERE, minimum=0)
        self._scores: dict[str, list[int]] = {}  # item id -> [correct images, images]
        self._categories: dict[str, str | None] = {}
        self._verdicts: list[dict[str, Any]] = []
        self._num_images = 0

    def update(
        self, images: torch.Tensor, items: Sequence[Item], sample_indices: Sequence[int]
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"shapes_accuracy expects uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if not len(items) == len(sample_indices) == images.shape[0]:
            raise ValueError(
                f"shapes_accuracy: {images.shape[0]} images, {len(items)} items, {len(sample_indices)} sample indices"
            )
        suite_name = getattr(self.context.suite, "name", "?")
        specs = [_item_spec(item, suite_name) for item in items]
        batch = images.permute(0, 2, 3, 1).cpu().numpy()
        for image, item, index, spec in zip(batch, items, sample_indices, specs, strict=True):
            verdict = judge_image(image, spec, params=self.params, allow_extra=self.allow_extra)
            score = self._scores.setdefault(item.id, [0, 0])
            score[0] += int(verdict.correct)
            score[1] += 1
            self._categories[item.id] = item.category
            self._num_images += 1
            if len(self._verdicts) < self.max_verdicts:
                self._verdicts.append(
                    {
                        "item_id": item.id,
                        "sample_index": int(index),
                        "correct": verdict.correct,
                        "reason": verdict.reason,
                        "found": [o.summary() for o in verdict.found],
                    }
                )

    def manifest(self) -> dict[str, Any]:
        """Implementation, versions, palette and thresholds."""
        return {
            "implementation": "evalkit.metrics.shapes_accuracy",
            "version": METRIC_VERSION,
            "parser_version": PARSER_VERSION,
            "palette": {k: list(v) for k, v in PALETTE.items()},
            "background": list(BACKGROUND),
            "color_space": "CIELAB (D65), CIE76 distance",
            "thresholds": self.params.to_dict(),
            "relation_rule": "centroid offset positive along the relation's axis and larger than across it",
            "allow_extra": self.allow_extra,
        }

    def compute(self) -> MetricResult:
        if not self._scores:
            raise ValueError("shapes_accuracy: no images were added")
        per_item = {k: c / n for k, (c, n) in self._scores.items()}
        value, interval, per_category = summarize(
            per_item, self._categories, seed=self.context.seed
        )
        correct_images = sum(c for c, _ in self._scores.values())
        return MetricResult(
            name=self.name,
            value=value,
            interval=interval,
            values={
                "image_accuracy": correct_images / self._num_images,
                "num_images": float(self._num_images),
            },
            per_item=per_item,
            per_category=per_category,
            details={
                "verdicts": list(self._verdicts),
                "verdicts_total": self._num_images,
                "verdicts_truncated": self._num_images > len(self._verdicts),
            },
            manifest=self.manifest(),
        )


_PARAM_FIELDS = {f.name: f.type for f in fields(ParseParams)}


def _options_to_params(options: Mapping[str, Any]) -> ParseParams:
    values: dict[str, Any] = {}
    for key in sorted(set(options) & set(_PARAM_FIELDS)):
        if isinstance(getattr(DEFAULT_PARAMS, key), int):  # min_area_px: a pixel count
            values[key] = as_int(options[key], key, WHERE, minimum=0)
        else:
            values[key] = as_float(options[key], key, WHERE, minimum=0)
    return ParseParams(**values)


def make_shapes_accuracy(options: dict[str, Any], context: MetricContext) -> ShapesAccuracy:
    """Registry factory: options allow_extra (False), max_verdicts (2000) and any ParseParams threshold."""
    check_known(options, {"allow_extra", "max_verdicts", *_PARAM_FIELDS}, WHERE)
    allow_extra = as_bool(options.get("allow_extra", False), "allow_extra", WHERE)
    max_verdicts = as_int(
        options.get("max_verdicts", DEFAULT_MAX_VERDICTS), "max_verdicts", WHERE, minimum=0
    )
    params = _options_to_params(options)
    suite_name = getattr(context.suite, "name", "?")
    for item in context.suite.items():
        _item_spec(item, suite_name)
    return ShapesAccuracy(
        context,
        params=params,
        allow_extra=allow_extra,
        max_verdicts=max_verdicts,
    )
