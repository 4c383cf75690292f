"""The shapes suite: grammar, deterministic items, stable ids, layouts and reference renders."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from evalkit.errors import InputError, UsageError
from evalkit.registry import SUITES
from evalkit.seeding import numpy_rng
from evalkit.suites.base import Item, validate_prompt
from evalkit.suites.shapes import ShapesSuite, make_shapes_suite, random_spec, render_scene
from evalkit.suites.shapes_render import GAP, INSET, PlacedObject, layout_scene, render_layout
from evalkit.suites.shapes_spec import (
    BACKGROUND,
    CATEGORIES,
    COLORS,
    PALETTE,
    RELATIONS,
    SHAPES,
    relation_offsets,
    spec_prompt,
    validate_spec,
)


@pytest.fixture(scope="module")
def suite() -> ShapesSuite:
    return make_shapes_suite({})


def _spec(*objects: tuple[str, str, int], relation: str | None = None) -> dict:
    return {
        "objects": [{"color": c, "shape": s, "count": n} for c, s, n in objects],
        "relation": relation,
    }


def test_default_suite_has_200_items_split_evenly_over_five_categories(suite: ShapesSuite) -> None:
    items = suite.items()
    assert len(items) == 200
    assert Counter(i.category for i in items) == {c: 40 for c in CATEGORIES}
    assert suite.categories() == sorted(CATEGORIES)


def test_uneven_num_items_gives_remainder_to_first_categories() -> None:
    counts = Counter(i.category for i in ShapesSuite(num_items=7).items())
    assert counts == {"colors": 2, "composition": 2, "counting": 1, "positional": 1, "single": 1}


def test_items_are_deterministic_for_a_seed_and_change_with_the_seed() -> None:
    def key(s: ShapesSuite) -> list:
        return [(i.id, i.prompt, i.spec) for i in s.items()]

    assert key(ShapesSuite(seed=3)) == key(ShapesSuite(seed=3))
    assert [i.prompt for i in ShapesSuite(seed=3).items()] != [
        i.prompt for i in ShapesSuite(seed=4).items()
    ]


def test_ids_are_stable_and_an_item_does_not_depend_on_num_items() -> None:
    small = {i.id: (i.prompt, i.spec) for i in ShapesSuite(num_items=50).items()}
    large = {i.id: (i.prompt, i.spec) for i in ShapesSuite(num_items=200).items()}
    assert set(small) < set(large)
    assert all(large[k] == v for k, v in small.items())
    assert "shapes-positional-0007" in large
    assert all(
        re.fullmatch(r"shapes-(colors|composition|counting|positional|single)-\d{4}", k)
        for k in large
    )
    assert len(large) == 200


def test_prompts_pass_validate_prompt_and_are_the_spec_prompt(suite: ShapesSuite) -> None:
    for item in suite.items():
        assert validate_prompt(item.prompt, item.id) == spec_prompt(item.spec)
        assert validate_spec(item.spec) == item.spec


@pytest.mark.parametrize(
    ("spec", "prompt"),
    [
        (_spec(("blue", "triangle", 1)), "a blue triangle"),
        (_spec(("orange", "square", 1)), "an orange square"),
        (_spec(("green", "triangle", 3)), "three green triangles"),
        (_spec(("red", "circle", 1), ("blue", "square", 1)), "a red circle and a blue square"),
        (
            _spec(("red", "circle", 1), ("blue", "square", 1), relation="left_of"),
            "a red circle to the left of a blue square",
        ),
        (
            _spec(("red", "circle", 1), ("blue", "square", 1), relation="right_of"),
            "a red circle to the right of a blue square",
        ),
        (
            _spec(("red", "circle", 1), ("blue", "square", 1), relation="above"),
            "a red circle above a blue square",
        ),
        (
            _spec(("red", "circle", 1), ("blue", "square", 1), relation="below"),
            "a red circle below a blue square",
        ),
        (
            _spec(("red", "circle", 1), ("blue", "circle", 1), ("yellow", "square", 1)),
            "a red circle, a blue circle and a yellow square",
        ),
    ],
)
def test_spec_prompt_grammar(spec: dict, prompt: str) -> None:
    assert spec_prompt(spec) == prompt


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"objects": []}, "non-empty"),
        (_spec(("pink", "circle", 1)), "unknown colour"),
        (_spec(("red", "hexagon", 1)), "unknown shape"),
        (_spec(("red", "circle", 0)), "count"),
        (_spec(("red", "circle", 5)), "count"),
        (_spec(("red", "circle", 1), ("red", "circle", 2)), "repeats"),
        (_spec(("red", "circle", 3), ("blue", "square", 2)), "at most"),
        (_spec(("red", "circle", 1), ("blue", "square", 1), relation="behind"), "unknown relation"),
        (
            _spec(("red", "circle", 2), ("blue", "square", 1), relation="above"),
            "exactly two objects",
        ),
        ("a red circle", "mapping"),
    ],
)
def test_validate_spec_rejects_bad_specs_with_a_message(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_spec(spec)


def test_categories_follow_their_grammar_and_stay_balanced(suite: ShapesSuite) -> None:
    by_cat: dict[str, list[Item]] = {
        c: [i for i in suite.items() if i.category == c] for c in CATEGORIES
    }
    singles = {
        (i.spec["objects"][0]["color"], i.spec["objects"][0]["shape"]) for i in by_cat["single"]
    }
    assert singles == {(c, s) for c in COLORS for s in SHAPES}
    counts = Counter(i.spec["objects"][0]["count"] for i in by_cat["counting"])
    assert set(counts) == {2, 3, 4} and max(counts.values()) - min(counts.values()) <= 1
    relations = Counter(i.spec["relation"] for i in by_cat["positional"])
    assert relations == {r: 10 for r in RELATIONS}
    for item in by_cat["colors"]:
        (a, b) = item.spec["objects"]
        assert a["color"] != b["color"] and a["shape"] != b["shape"]
    for item in by_cat["composition"]:
        assert len({o["color"] for o in item.spec["objects"]}) == 3


@pytest.mark.parametrize("category", CATEGORIES)
def test_random_spec_gives_valid_specs_of_the_category(category: str) -> None:
    rng = numpy_rng(7)
    for _ in range(20):
        spec = random_spec(rng, category)
        assert validate_spec(spec) == spec
        assert (spec["relation"] is not None) == (category == "positional")


def test_random_spec_rejects_unknown_category() -> None:
    with pytest.raises(ValueError, match="unknown shapes category"):
        random_spec(numpy_rng(0), "photos")


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_render_scene_is_deterministic_uint8_at_every_resolution(resolution: int) -> None:
    spec = _spec(("red", "circle", 1), ("blue", "square", 1), relation="left_of")
    a, b = render_scene(spec, resolution, seed=5), render_scene(spec, resolution, seed=5)
    assert a.dtype == np.uint8 and a.shape == (resolution, resolution, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_scene(spec, resolution, seed=6))


def test_layout_is_resolution_free_so_scenes_match_across_resolutions() -> None:
    spec = _spec(("green", "triangle", 3))
    small = render_scene(spec, 32, seed=1).astype(np.float64)
    large = render_scene(spec, 128, seed=1).astype(np.float64)
    pooled = large.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(pooled - small).mean() < 2.0


def _boxes_separated(a: PlacedObject, b: PlacedObject) -> bool:
    reach = (a.size + b.size) / 2 + GAP - 1e-9
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def test_layouts_never_overlap_stay_inside_and_respect_relations() -> None:
    rng = numpy_rng(11)
    for k in range(150):
        category = CATEGORIES[k % len(CATEGORIES)]
        spec = random_spec(rng, category)
        objs = layout_scene(spec, seed=k)
        assert len(objs) == sum(o["count"] for o in spec["objects"])
        for i, a in enumerate(objs):
            left, top, right, bottom = a.box()
            assert min(left, top) >= INSET - 1e-9 and max(right, bottom) <= 1 - INSET + 1e-9
            assert all(_boxes_separated(a, b) for b in objs[i + 1 :])
        if spec["relation"]:
            along, across = relation_offsets(
                spec["relation"], (objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy)
            )
            assert along > 0 and across < along


def test_rendered_objects_never_share_a_pixel() -> None:
    rng = numpy_rng(12)
    for k in range(40):
        objs = layout_scene(random_spec(rng, "counting", count=4), seed=k)
        masks = [np.any(render_layout([o], 32) != BACKGROUND, axis=-1) for o in objs]
        assert np.sum(masks, axis=0).max() == 1


def test_rendered_pixels_are_blends_of_one_palette_colour_and_the_background() -> None:
    image = render_scene(
        _spec(("purple", "circle", 1), ("yellow", "triangle", 1)), 64, seed=2
    ).astype(np.float64)
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    residuals = []
    for name in ("purple", "yellow"):
        d = np.asarray(PALETTE[name], dtype=np.float64) - bg
        alpha = np.clip((image - bg) @ d / (d @ d), 0, 1)
        residuals.append(np.linalg.norm(image - (bg + alpha[..., None] * d), axis=-1))
    assert np.min(residuals, axis=0).max() <= 1.0  # rounding only


def test_reference_image_is_the_canonical_scene_and_reference_set_uses_other_layouts(
    suite: ShapesSuite,
) -> None:
    items = suite.items()[:10]
    canonical = [suite.reference_image(i, 64) for i in items]
    assert all(
        np.array_equal(a, suite.reference_image(i, 64))
        for a, i in zip(canonical, items, strict=True)
    )
    refset = next(iter(suite.reference_set(64).iter_batches(10)))
    assert refset.shape == (10, 64, 64, 3) and refset.dtype == np.uint8
    assert not any(np.array_equal(a, b) for a, b in zip(canonical, refset, strict=True))


def test_reference_set_batches_cover_every_item(suite: ShapesSuite) -> None:
    small = ShapesSuite(num_items=13)
    refset = small.reference_set(32)
    batches = list(refset.iter_batches(5))
    assert [len(b) for b in batches] == [5, 5, 3] and len(refset) == 13
    with pytest.raises(ValueError, match="batch_size"):
        next(refset.iter_batches(0))


def test_reference_set_identity_changes_with_resolution_and_options(suite: ShapesSuite) -> None:
    ident = suite.reference_set(64).identity()
    assert ident == suite.reference_set(64).identity()
    assert ident != suite.reference_set(32).identity()
    assert ident != ShapesSuite(seed=1).reference_set(64).identity()
    assert ident != ShapesSuite(num_items=20).reference_set(64).identity()
    assert {"name", "version", "options", "count", "resolution", "render_hash"} <= set(ident)
    assert ident["name"] == "shapes" and ident["count"] == 200 and ident["resolution"] == 64


def test_describe_names_version_options_and_render_hash(suite: ShapesSuite) -> None:
    d = suite.describe()
    assert d["name"] == "shapes" and d["version"] == suite.version
    assert d["options"] == {"num_items": 200, "seed": 0, "resolution": 64}
    assert len(d["render_hash"]) == 64 and d["count"] == 200


def test_reference_image_of_an_item_without_spec_raises_input_error(suite: ShapesSuite) -> None:
    with pytest.raises(InputError, match="no shapes spec"):
        suite.reference_image(Item(id="x", prompt="a cat"), 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, "unknown option"),
        ({"num_items": 0}, "num_items"),
        ({"num_items": "many"}, "integer"),
        ({"resolution": 4}, "resolution"),
        ({"seed": -1}, "seed"),
    ],
)
def test_make_shapes_suite_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_shapes_suite(options)


def test_registry_builds_the_shapes_suite() -> None:
    suite = SUITES.get("shapes")({"num_items": 10, "resolution": 32})
    assert isinstance(suite, ShapesSuite) and len(suite.items()) == 10


def test_committed_prompt_export_matches_the_suite_and_loads_as_a_jsonl_suite():
    import importlib.util

    from evalkit.suites.prompt_files import make_jsonl_suite
    from evalkit.suites.shapes import SUITE_VERSION

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "export_shapes_prompts", root / "scripts" / "export_shapes_prompts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = root / "prompts" / f"shapes-v{SUITE_VERSION}.jsonl"
    assert committed.read_text(encoding="utf-8") == module.shapes_prompts_jsonl(), (
        "prompts/ is out of date: run scripts/export_shapes_prompts.py"
    )
    loaded = make_jsonl_suite({"path": str(committed)}).items()
    suite = make_shapes_suite({}).items()
    assert [(i.id, i.prompt, i.category) for i in loaded] == [
        (i.id, i.prompt, i.category) for i in suite
    ]
