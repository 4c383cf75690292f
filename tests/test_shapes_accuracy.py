"""The shapes_accuracy metric: parser, clause checks with reasons, and the streaming metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from evalkit.errors import UsageError
from evalkit.metrics.base import MetricContext
from evalkit.metrics.shapes_accuracy import (
    ShapesAccuracy,
    check_spec,
    judge_image,
    make_shapes_accuracy,
)
from evalkit.metrics.shapes_parse import FoundObject, parse_image
from evalkit.registry import METRICS
from evalkit.suites.base import Item
from evalkit.suites.shapes import ShapesSuite
from evalkit.suites.shapes_render import PlacedObject, render_layout
from evalkit.suites.shapes_spec import BACKGROUND, COLORS, PALETTE, SHAPES

_SUITE = ShapesSuite()


def _spec(*objects: tuple[str, str, int], relation: str | None = None) -> dict:
    return {
        "objects": [{"color": c, "shape": s, "count": n} for c, s, n in objects],
        "relation": relation,
    }


def _scene(*objects: tuple[str, str, float, float, float], resolution: int = 64) -> np.ndarray:
    return render_layout([PlacedObject(*o) for o in objects], resolution)


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _score(
    suite: ShapesSuite, images: list[np.ndarray], items: list[Item], **options: object
) -> ShapesAccuracy:
    metric = make_shapes_accuracy(
        dict(options), MetricContext(suite=suite, resolution=images[0].shape[0])
    )
    for start in range(0, len(items), 64):
        batch = items[start : start + 64]
        metric.update(_tensor(images[start : start + 64]), batch, [0] * len(batch))
    return metric


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_reference_renders_score_at_least_99_percent(resolution: int) -> None:
    items = _SUITE.items()
    images = [_SUITE.reference_image(item, resolution) for item in items]
    result = _score(_SUITE, images, items).compute()
    wrong = [v for v in result.details["verdicts"] if not v["correct"]]
    assert result.value >= 0.99, wrong[:5]
    assert all(c["value"] >= 0.95 for c in result.per_category.values())


def test_reference_set_renders_score_at_least_99_percent() -> None:
    items = _SUITE.items()
    images = list(np.concatenate(list(_SUITE.reference_set(64).iter_batches(100))))
    assert _score(_SUITE, images, items).compute().value >= 0.99


def test_shuffled_prompt_image_pairs_score_below_30_percent() -> None:
    items = _SUITE.items()
    images = [_SUITE.reference_image(item, 64) for item in items]
    perm = np.random.default_rng(0).permutation(len(items))
    result = _score(_SUITE, images, [items[i] for i in perm]).compute()
    assert result.value < 0.3


@pytest.mark.parametrize("resolution", [32, 64])
def test_parser_recovers_every_colour_and_shape(resolution: int) -> None:
    for color in COLORS:
        for shape in SHAPES:
            found = parse_image(_scene((color, shape, 0.5, 0.5, 0.3), resolution=resolution))
            assert [(o.color, o.shape) for o in found] == [(color, shape)]
            assert abs(found[0].x - resolution / 2) < 1.0


def test_parser_ignores_thin_lines_specks_and_off_palette_colours() -> None:
    image = _scene(("red", "square", 0.3, 0.3, 0.3))
    image[50, 5:60] = PALETTE["blue"]  # one-pixel line
    image[58:60, 58:60] = PALETTE["green"]  # 2x2 speck
    image[40:50, 40:50] = (128, 128, 128)  # grey: no palette colour
    assert [(o.color, o.shape) for o in parse_image(image)] == [("red", "square")]


def test_parser_calls_elongated_blobs_unknown() -> None:
    image = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    image[20:28, 10:50] = PALETTE["green"]
    assert [(o.color, o.shape) for o in parse_image(image)] == [("green", "unknown")]
    ok, reason = check_spec(_spec(("green", "square", 1)), parse_image(image))
    assert not ok and "1 green object of unrecognised shape" in reason


def test_parser_tolerates_mild_blur_and_noise() -> None:
    rng = np.random.default_rng(0)
    items = _SUITE.items()[::4]
    correct = 0
    for item in items:
        image = _SUITE.reference_image(item, 64).astype(np.float64)
        image = (
            ndimage.gaussian_filter(image, (0.7, 0.7, 0))
            + rng.normal(0, 6, image.shape)
            + rng.uniform(-12, 12, 3)
        )
        correct += judge_image(np.clip(np.rint(image), 0, 255).astype(np.uint8), item.spec).correct
    assert correct / len(items) >= 0.95


def test_correct_image_reason_says_all_clauses_hold() -> None:
    verdict = judge_image(
        _scene(("blue", "triangle", 0.5, 0.5, 0.4)), _spec(("blue", "triangle", 1))
    )
    assert verdict.correct and verdict.reason == "all clauses hold"


def test_wrong_colour_is_incorrect_and_names_both_objects() -> None:
    verdict = judge_image(_scene(("blue", "circle", 0.5, 0.5, 0.4)), _spec(("red", "circle", 1)))
    assert not verdict.correct
    assert verdict.reason == "expected 1 red circle, found 0; unexpected 1 blue circle"


def test_wrong_shape_is_incorrect() -> None:
    verdict = judge_image(_scene(("red", "square", 0.5, 0.5, 0.4)), _spec(("red", "circle", 1)))
    assert not verdict.correct and "expected 1 red circle, found 0" in verdict.reason


def test_wrong_count_reason_says_how_many_were_found() -> None:
    image = _scene(("green", "triangle", 0.25, 0.3, 0.25), ("green", "triangle", 0.7, 0.7, 0.25))
    verdict = judge_image(image, _spec(("green", "triangle", 3)))
    assert not verdict.correct and verdict.reason == "expected 3 green triangles, found 2"


def test_swapped_binding_of_colours_is_incorrect() -> None:
    image = _scene(("blue", "circle", 0.25, 0.5, 0.3), ("red", "square", 0.75, 0.5, 0.3))
    verdict = judge_image(image, _spec(("red", "circle", 1), ("blue", "square", 1)))
    assert not verdict.correct
    assert (
        "expected 1 red circle, found 0" in verdict.reason
        and "expected 1 blue square, found 0" in verdict.reason
    )


def test_swapped_relation_is_incorrect_with_coordinates() -> None:
    image = _scene(("red", "circle", 0.7, 0.5, 0.3), ("blue", "square", 0.3, 0.5, 0.3))
    assert judge_image(
        image, _spec(("red", "circle", 1), ("blue", "square", 1), relation="right_of")
    ).correct
    verdict = judge_image(
        image, _spec(("red", "circle", 1), ("blue", "square", 1), relation="left_of")
    )
    assert not verdict.correct
    assert verdict.reason == "red circle is not left of blue square (x 45 vs 19)"


@pytest.mark.parametrize(
    ("relation", "holds"), [("above", True), ("below", False), ("left_of", False)]
)
def test_vertical_relations_are_checked_on_y(relation: str, holds: bool) -> None:
    image = _scene(("yellow", "triangle", 0.5, 0.25, 0.3), ("purple", "circle", 0.5, 0.75, 0.3))
    spec = _spec(("yellow", "triangle", 1), ("purple", "circle", 1), relation=relation)
    verdict = judge_image(image, spec)
    assert verdict.correct is holds
    if not holds:
        assert verdict.reason.startswith(
            f"yellow triangle is not {relation.replace('_', ' ')} purple circle"
        )


def test_relation_needs_its_axis_to_dominate() -> None:
    image = _scene(("red", "circle", 0.4, 0.2, 0.25), ("blue", "square", 0.6, 0.8, 0.25))
    verdict = judge_image(
        image, _spec(("red", "circle", 1), ("blue", "square", 1), relation="left_of")
    )
    assert not verdict.correct and "differs more" in verdict.reason


def test_extra_object_fails_unless_allow_extra() -> None:
    image = _scene(("red", "circle", 0.25, 0.5, 0.3), ("green", "square", 0.75, 0.5, 0.3))
    spec = _spec(("red", "circle", 1))
    ok, reason = check_spec(spec, parse_image(image))
    assert not ok and reason == "unexpected 1 green square"
    assert check_spec(spec, parse_image(image), allow_extra=True) == (True, "all clauses hold")


def test_every_failing_clause_is_reported() -> None:
    found = [
        FoundObject("red", "circle", 40, 10, 50, 0.0),
        FoundObject("blue", "square", 20, 10, 50, 0.0),
    ]
    spec = _spec(("red", "circle", 1), ("blue", "square", 1), relation="left_of")
    assert check_spec(spec, found) == (False, "red circle is not left of blue square (x 40 vs 20)")
    found.append(FoundObject("yellow", "triangle", 5, 5, 50, 0.0))
    ok, reason = check_spec(spec, found)
    assert not ok and reason.split("; ") == [
        "unexpected 1 yellow triangle",
        "red circle is not left of blue square (x 40 vs 20)",
    ]


def test_scores_average_the_k_images_of_an_item_first() -> None:
    suite = ShapesSuite(num_items=5)
    items = suite.items()
    single = next(i for i in items if i.category == "single")
    good = suite.reference_image(single, 64)
    blank = np.full_like(good, 255)
    metric = make_shapes_accuracy({}, MetricContext(suite=suite, resolution=64))
    metric.update(_tensor([good, blank, good]), [single, single, items[0]], [0, 1, 0])
    result = metric.compute()
    assert result.per_item == {single.id: 0.5, items[0].id: 0.0}
    assert result.value == pytest.approx(0.25)
    assert result.values["image_accuracy"] == pytest.approx(1 / 3)
    reasons = [v["reason"] for v in result.details["verdicts"]]
    assert reasons[0] == "all clauses hold" and reasons[1].startswith("expected 1 ")


def test_result_carries_interval_categories_verdicts_and_manifest() -> None:
    suite = ShapesSuite(num_items=10)
    items = suite.items()
    result = _score(suite, [suite.reference_image(i, 32) for i in items], items).compute()
    assert result.name == "shapes_accuracy" and result.value == 1.0
    assert result.interval == (1.0, 1.0)
    assert set(result.per_category) == {"colors", "composition", "counting", "positional", "single"}
    verdict = result.details["verdicts"][0]
    assert set(verdict) == {"item_id", "sample_index", "correct", "reason", "found"}
    assert set(verdict["found"][0]) == {"color", "shape", "x", "y", "area"}
    assert {"implementation", "version", "palette", "thresholds"} <= set(result.manifest)
    assert result.to_dict()["interval"] == [1.0, 1.0]


def test_verdicts_are_capped_but_scores_use_every_image() -> None:
    suite = ShapesSuite(num_items=10)
    items = suite.items()
    result = _score(
        suite, [suite.reference_image(i, 32) for i in items], items, max_verdicts=3
    ).compute()
    assert len(result.details["verdicts"]) == 3 and result.details["verdicts_truncated"]
    assert len(result.per_item) == 10


def test_suite_without_specs_raises_usage_error() -> None:
    class Plain(ShapesSuite):
        name = "plain"

        def items(self) -> list[Item]:
            return [Item(id="p-1", prompt="a cat")]

    with pytest.raises(UsageError, match="shapes_accuracy needs the shapes suite"):
        make_shapes_accuracy({}, MetricContext(suite=Plain(), resolution=64))
    metric = ShapesAccuracy(MetricContext(suite=Plain(), resolution=64))
    with pytest.raises(UsageError, match="shapes_accuracy needs the shapes suite"):
        metric.update(
            torch.zeros(1, 3, 64, 64, dtype=torch.uint8), [Item(id="p-1", prompt="a cat")], [0]
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strict": True}, "unknown option"),
        ({"max_verdicts": -1}, "max_verdicts"),
        ({"color_threshold": "x"}, "number"),
    ],
)
def test_bad_options_raise_usage_error(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_shapes_accuracy(options, MetricContext(suite=ShapesSuite(num_items=5), resolution=64))


def test_metric_rejects_non_uint8_images() -> None:
    suite = ShapesSuite(num_items=5)
    metric = make_shapes_accuracy({}, MetricContext(suite=suite, resolution=64))
    with pytest.raises(ValueError, match="uint8"):
        metric.update(torch.zeros(1, 3, 64, 64), suite.items()[:1], [0])


def test_registry_builds_the_metric() -> None:
    metric = METRICS.get("shapes_accuracy")(
        {}, MetricContext(suite=ShapesSuite(num_items=5), resolution=64)
    )
    assert isinstance(metric, ShapesAccuracy)
