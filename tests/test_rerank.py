"""The ``rerank`` model: best-of-N by CLIP score around the toy generator, on the tiny random CLIP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import tests.conftest  # noqa: F401  (registers the test suite and metric)
from evalkit.cli import main
from evalkit.errors import MissingWeightsError, UsageError
from evalkit.generators.base import GenerationRequest, GeneratorContext
from evalkit.generators.rerank import (
    RerankGenerator,
    candidate_request,
    candidate_seed,
    make_rerank_generator,
)
from evalkit.generators.toy import ToyGenerator
from evalkit.image_plan import cache_key, request_identity
from evalkit.metrics import clip_score
from evalkit.metrics.clip_models import TINY_RANDOM, load_clip
from evalkit.registry import MODELS, Entry
from evalkit.seeding import derive_seed
from evalkit.suites.base import Item

RES = 32
PROMPTS = ["a red disc and a blue disc", "a green disc", "two yellow discs", "a purple disc"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return load_clip(TINY_RANDOM, allow_random_weights=True)


def context(tmp_path: Path, allow_random_weights: bool = True) -> GeneratorContext:
    return GeneratorContext(
        resolution=RES, allow_random_weights=allow_random_weights, cache_dir=str(tmp_path)
    )


def build(tmp_path: Path, **options) -> RerankGenerator:
    opts = {"model": "toy", "n": 4, "clip_model": TINY_RANDOM, **options}
    return make_rerank_generator(opts, context(tmp_path))


def requests(count: int = 8) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            Item(f"it-{k}", PROMPTS[k % len(PROMPTS)]), k % 2, derive_seed(5, f"it-{k}", k % 2)
        )
        for k in range(count)
    ]


def independent_scores(tiny, prompt: str, images: torch.Tensor) -> torch.Tensor:
    """Raw CLIP cosines computed here, without the rerank module's code."""
    model, preprocess, tokenizer, _ = tiny
    with torch.no_grad():
        text = model.encode_text(tokenizer([prompt]))[0].double()
        feats = model.encode_image(preprocess(images)).double()
    text = text / text.norm()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return feats @ text


# ---------------------------------------------------------------- output


def test_output_is_uint8_with_one_image_per_request_at_context_resolution(tmp_path):
    gen = build(tmp_path)
    images = gen.generate(requests(3))
    assert images.dtype == torch.uint8
    assert tuple(images.shape) == (3, 3, RES, RES)
    assert gen.native_resolution == 64  # the toy model's


def test_with_n_1_output_equals_inner_model_at_the_derived_candidate_seed(tmp_path):
    gen = build(tmp_path, n=1)
    toy = ToyGenerator(context(tmp_path))
    reqs = requests(4)
    derived = [
        dataclasses.replace(r, seed=derive_seed(r.seed, "rerank-candidate", 0)) for r in reqs
    ]
    assert torch.equal(gen.generate(reqs), toy.generate(derived))
    assert [s["candidate"] for s in gen.last_selection] == [0, 0, 0, 0]


def test_candidate_seeds_are_distinct_and_depend_only_on_request_seed_and_index():
    seeds = {candidate_seed(123, i) for i in range(64)}
    assert len(seeds) == 64
    assert candidate_seed(123, 3) == candidate_seed(123, 3) != candidate_seed(124, 3)
    r = requests(1)[0]
    c = candidate_request(r, 2)
    assert (c.item, c.sample_index, c.seed) == (r.item, r.sample_index, candidate_seed(r.seed, 2))


def test_chosen_image_is_argmax_of_independently_computed_clip_scores(tmp_path, tiny):
    n = 5
    gen = build(tmp_path, n=n)
    toy = ToyGenerator(context(tmp_path))
    reqs = requests(6)
    images = gen.generate(reqs)
    chosen = []
    for j, r in enumerate(reqs):
        candidates = toy.generate(
            [
                dataclasses.replace(r, seed=derive_seed(r.seed, "rerank-candidate", i))
                for i in range(n)
            ]
        )
        scores = independent_scores(tiny, r.prompt, candidates)
        best = int(torch.argmax(scores))
        assert torch.equal(images[j], candidates[best])
        sel = gen.last_selection[j]
        assert sel["candidate"] == best and sel["item_id"] == r.item.id
        assert sel["candidate_seed"] == derive_seed(r.seed, "rerank-candidate", best)
        assert sel["clip_score"] == pytest.approx(float(scores[best]), abs=1e-6)
        assert sel["scores"] == pytest.approx(scores.tolist(), abs=1e-6)
        chosen.append(best)
    assert any(b != 0 for b in chosen), "fixture should make reranking pick a later candidate"


def test_output_does_not_depend_on_how_requests_are_batched(tmp_path):
    gen = build(tmp_path, n=5, batch_size=2)  # candidates in chunks of 2, 2, 1
    reqs = requests(7)
    whole = gen.generate(reqs)
    selection = gen.last_selection
    singles, single_selection = [], []
    for r in reqs:
        singles.append(gen.generate([r]))
        single_selection += gen.last_selection
    in_threes = torch.cat([gen.generate(reqs[i : i + 3]) for i in range(0, len(reqs), 3)])
    assert torch.equal(whole, torch.cat(singles)) and torch.equal(whole, in_threes)
    assert single_selection == selection


def test_scoring_batch_size_chooses_the_same_candidates(tmp_path):
    reqs = requests(6)
    small = build(tmp_path, n=6, batch_size=1)
    large = build(tmp_path, n=6, batch_size=6)
    assert torch.equal(small.generate(reqs), large.generate(reqs))
    assert [s["candidate"] for s in small.last_selection] == [
        s["candidate"] for s in large.last_selection
    ]


def test_imagen_candidates_and_scores_do_not_depend_on_batch_size(tmp_path):
    # a real network inside (tiny random Imagen): requests in calls of 1, 3 and 5 (all), and
    # candidate chunks of 2 (the last one of 3 candidates padded for CLIP)
    gen = build(
        tmp_path,
        model="imagen",
        model_opts={"random": "tiny", "steps": 2},
        n=3,
        batch_size=2,
    )
    reqs = requests(5)
    whole = gen.generate(reqs)
    selection = gen.last_selection
    for size in (1, 3):
        parts, chosen = [], []
        for i in range(0, len(reqs), size):
            parts.append(gen.generate(reqs[i : i + size]))
            chosen += gen.last_selection
        assert torch.equal(torch.cat(parts), whole), f"batch size {size}"
        assert chosen == selection  # the CLIP scores too, bit for bit


def test_clip_always_scores_full_micro_batches(tmp_path, monkeypatch):
    gen = build(tmp_path, n=5, batch_size=2)
    rows: list[int] = []
    original = gen.clip_model.encode_image
    monkeypatch.setattr(
        gen.clip_model, "encode_image", lambda x, **kw: rows.append(len(x)) or original(x, **kw)
    )
    gen.generate(requests(2))
    assert rows == [2, 2, 2] * 2  # candidates 0-1, 2-3 and 4 (padded), per request


def test_output_is_deterministic_across_fresh_builds(tmp_path):
    reqs = requests(4)
    assert torch.equal(build(tmp_path).generate(reqs), build(tmp_path).generate(reqs))


def test_inner_model_is_called_with_at_most_batch_size_candidates(tmp_path, monkeypatch):
    sizes: list[int] = []
    original = ToyGenerator.generate

    def spy(self, reqs):
        sizes.append(len(reqs))
        return original(self, reqs)

    monkeypatch.setattr(ToyGenerator, "generate", spy)
    build(tmp_path, n=7, batch_size=3).generate(requests(2))
    assert sizes == [3, 3, 1, 3, 3, 1]


# ---------------------------------------------------------------- identity


def test_fingerprint_records_n_inner_model_and_scorer(tmp_path, tiny):
    gen = build(tmp_path, n=3)
    fp = gen.fingerprint()
    assert fp["model"] == "rerank" and fp["n"] == 3
    assert (
        fp["inner_model"] == "toy" and fp["inner"] == ToyGenerator(context(tmp_path)).fingerprint()
    )
    scorer = fp["scorer"]
    assert scorer["backbone"] == TINY_RANDOM and scorer["pretrained"] == "random"
    assert scorer["weights_sha256"] == tiny[3].weights_sha256
    json.dumps(fp)  # JSON-able (it keys the image cache)


def test_fingerprint_and_cache_key_change_with_n_scorer_and_inner_options(tmp_path):
    base = build(tmp_path, n=3)
    r = requests(1)[0]

    def key(gen):
        return cache_key(gen.fingerprint(), request_identity(gen, r), RES)

    others = [
        build(tmp_path, n=4),
        build(tmp_path, n=3, model_opts={"num_blobs": 2}),
        build(tmp_path, n=3, batch_size=2),
    ]
    assert base.fingerprint() == build(tmp_path, n=3).fingerprint()
    assert len({key(base), *(key(g) for g in others)}) == 4
    assert key(base) != cache_key(
        base.inner.fingerprint(), {"prompt": r.prompt, "seed": r.seed}, RES
    )


def test_settings_record_n_scorer_and_inner_settings(tmp_path):
    gen = build(tmp_path, n=2, model_opts={"noise": 0.0})
    s = gen.settings()
    assert s["n"] == 2 and s["model"] == "toy"
    assert s["scorer"]["backbone"] == TINY_RANDOM and s["scorer"]["uncalibrated"] is True
    assert s["inner"] == {"native_resolution": 64, "num_blobs": 3, "noise": 0.0}


def test_inner_options_come_from_model_opts_dict_json_text_or_dotted_keys(tmp_path):
    as_dict = build(tmp_path, model_opts={"num_blobs": 1, "noise": 2.0})
    as_json = build(tmp_path, model_opts='{"num_blobs": 1, "noise": 2.0}')
    dotted = build(tmp_path, **{"model_opts.num_blobs": 1, "model_opts.noise": 2.0})
    assert as_dict.settings()["inner"] == as_json.settings()["inner"] == dotted.settings()["inner"]
    assert as_dict.settings()["inner"]["num_blobs"] == 1


def test_random_weight_scorer_marks_result_uncalibrated(tmp_path):
    assert build(tmp_path).uncalibrated is True


def test_uncalibrated_follows_inner_model_when_scorer_is_calibrated(tmp_path, tiny):
    model, preprocess, tokenizer, info = tiny
    calibrated = (model, preprocess, tokenizer, dataclasses.replace(info, uncalibrated=False))
    toy = ToyGenerator(context(tmp_path))
    assert not RerankGenerator(toy, "toy", calibrated, context(tmp_path)).uncalibrated
    toy.uncalibrated = True
    assert RerankGenerator(toy, "toy", calibrated, context(tmp_path)).uncalibrated


def test_default_scorer_is_the_clip_score_metric_default_backbone(tmp_path):
    with pytest.raises(MissingWeightsError) as exc:
        make_rerank_generator({"model": "toy"}, context(tmp_path))
    message = str(exc.value)
    assert clip_score.DEFAULT_MODEL in message and clip_score.DEFAULT_PRETRAINED in message
    assert "evalkit fetch clip" in message and "clip_weights_path" in message


def test_random_weight_scorer_needs_allow_random_weights(tmp_path):
    with pytest.raises(UsageError, match="allow-random-weights"):
        make_rerank_generator(
            {"model": "toy", "clip_model": TINY_RANDOM},
            context(tmp_path, allow_random_weights=False),
        )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("n", [0, -3, 1.5, True, "4"])
def test_n_that_is_not_a_positive_integer_is_refused(tmp_path, n):
    with pytest.raises(UsageError, match="n must be an integer"):
        build(tmp_path, n=n)


def test_batch_size_below_one_is_refused(tmp_path):
    with pytest.raises(UsageError, match="batch_size must be an integer"):
        build(tmp_path, batch_size=0)


def test_unknown_inner_model_is_refused_with_nearest_names(tmp_path):
    with pytest.raises(UsageError, match="Did you mean: toy"):
        build(tmp_path, model="tyo")


def test_missing_inner_model_is_refused_with_known_names(tmp_path):
    with pytest.raises(UsageError, match="option model .* is required.*toy"):
        make_rerank_generator({"n": 2}, context(tmp_path))


def test_rerank_wrapping_itself_is_refused(tmp_path):
    with pytest.raises(UsageError, match="cannot wrap itself"):
        build(tmp_path, model="rerank", model_opts={"model": "toy"})


def test_rerank_reached_again_through_another_registry_entry_is_refused(tmp_path, monkeypatch):
    name = "test-rerank-of-toy"  # e.g. a model card whose adapter is rerank

    def factory(options, ctx):
        return make_rerank_generator({"model": "toy", "clip_model": TINY_RANDOM}, ctx)

    monkeypatch.setitem(MODELS._entries, name, Entry(name, factory, "tests only"))
    assert isinstance(build(tmp_path, model="toy"), RerankGenerator)  # the guard is reset
    with pytest.raises(UsageError, match="cannot wrap itself"):
        build(tmp_path, model=name)
    assert isinstance(build(tmp_path, model="toy"), RerankGenerator)


def test_unknown_option_and_bad_model_opts_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown option"):
        build(tmp_path, candidates=4)
    with pytest.raises(UsageError, match="model_opts must be"):
        build(tmp_path, model_opts="num_blobs=2")
    with pytest.raises(UsageError, match="model 'toy': unknown option"):
        build(tmp_path, model_opts={"bogus": 1})


# ---------------------------------------------------------------- end to end


def test_run_through_cli_on_shapes_suite_records_n_and_scorer(tmp_path, capsys):
    args = [
        "run",
        "--model",
        "rerank",
        "--model-opt",
        "model=toy",
        "--model-opt",
        "n=2",
        "--model-opt",
        f"clip_model={TINY_RANDOM}",
        "--suite",
        "shapes",
        "--num-samples",
        "3",
        "--metrics",
        "test-pixel-mean",
        "--allow-random-weights",
        "--batch-size",
        "2",
        "--quiet",
        "--no-report",
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0, capsys.readouterr().err
    results_path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    res = json.loads(results_path.read_text())
    model = res["manifest"]["model"]
    assert model["fingerprint"]["n"] == 2
    assert model["fingerprint"]["scorer"]["backbone"] == TINY_RANDOM
    assert model["settings"]["inner"]["num_blobs"] == 3
    assert model["uncalibrated"] is True and res["uncalibrated"] is True
    assert len(list((results_path.parent / "images").glob("*.png"))) == 3
