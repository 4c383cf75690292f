"""Fixed-shape micro-batches (evalkit.batching) and what they guarantee for every network.

Run under both CPU kernel sets to check a machine-independent claim:
``ATEN_CPU_CAPABILITY=avx2`` (or the machine's own) and ``ATEN_CPU_CAPABILITY=default``.
"""

from __future__ import annotations

import pytest
import torch

from evalkit.batching import (
    RowBuffer,
    map_one_thread,
    micro_batches,
    pad_rows,
    run_in_micro_batches,
    single_threaded_ops,
    worker_count,
)
from evalkit.environment import environment
from evalkit.errors import UsageError


@pytest.fixture
def threads():
    """Set torch's intra-op thread count inside a test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the helpers


def test_micro_batches_have_the_fixed_size_and_pad_with_the_first_row():
    rows = torch.arange(10).view(5, 2)
    chunks = list(micro_batches(rows, 3))
    assert [tuple(c.shape) for _, c in chunks] == [(3, 2), (3, 2)]
    (w0, c0), (w1, c1) = chunks
    assert (w0, w1) == (slice(0, 3), slice(3, 5))
    assert torch.equal(c1, torch.tensor([[6, 7], [8, 9], [6, 7]]))
    assert pad_rows(["a", "b"], 4) == ["a", "b", "a", "a"]
    with pytest.raises(UsageError, match="positive integer"):
        list(micro_batches(rows, 0))


def test_run_in_micro_batches_calls_the_network_at_one_shape_and_drops_the_padding():
    shapes: list[tuple[int, ...]] = []

    def net(x: torch.Tensor, y: torch.Tensor | None, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shapes.append(tuple(x.shape))
        assert y is None
        return x * 2, x.sum(-1) + z

    x, z = torch.arange(14.0).view(7, 2), torch.arange(7.0)
    doubled, summed = run_in_micro_batches(net, x, None, z, size=4)
    assert shapes == [(4, 2), (4, 2)]
    assert torch.equal(doubled, x * 2) and torch.equal(summed, x.sum(-1) + z)
    with pytest.raises(ValueError, match="different numbers of rows"):
        run_in_micro_batches(net, x, None, z[:3], size=4)


def test_row_buffer_hands_on_complete_micro_batches_at_fixed_stream_positions():
    def consumed(add_sizes: list[int]) -> list[list[int]]:
        out: list[list[int]] = []
        buffer = RowBuffer(4, lambda rows, tags: out.append(tags), release=8)
        start = 0
        for n in add_sizes:
            rows = torch.arange(start, start + n)
            buffer.add(rows, rows.tolist())
            start += n
        buffer.flush()
        return out

    for sizes in ([1] * 11, [3, 3, 5], [11], [2, 7, 2]):
        chunks = consumed(sizes)
        assert [t for c in chunks for t in c] == list(range(11)), sizes
        assert all(len(c) % 4 == 0 for c in chunks[:-1]) and len(chunks[-1]) == 11 % 8 or 8
        # a micro-batch of the stream (0-3, 4-7, 8-10) is never split between two hand-ons
        bounds = {sum(len(c) for c in chunks[: i + 1]) for i in range(len(chunks))}
        assert bounds <= {4, 8, 11}, sizes


def test_row_buffer_flushes_before_rows_of_another_shape():
    seen: list[tuple[int, ...]] = []
    buffer = RowBuffer(4, lambda rows, tags: seen.append(tuple(rows.shape)))
    buffer.add(torch.zeros(2, 3, 8, 8))
    buffer.add(torch.zeros(5, 3, 16, 16))
    buffer.flush()
    assert seen == [(2, 3, 8, 8), (4, 3, 16, 16), (1, 3, 16, 16)]


def test_workers_run_with_one_intra_op_thread_and_the_callers_grad_mode(threads):
    threads(2)
    with torch.no_grad():
        seen = map_one_thread(
            lambda: (torch.get_num_threads(), torch.is_grad_enabled()), [()] * 4, workers=2
        )
    assert seen == [(1, False)] * 4
    assert torch.get_num_threads() == 2  # the caller's setting is untouched


def test_single_threaded_ops_hold_this_thread_to_one_and_keep_the_worker_count(threads):
    threads(2)
    assert worker_count("cpu") == 2 and worker_count("cuda") == 1
    with single_threaded_ops("cpu") as workers:
        assert workers == 2 and torch.get_num_threads() == 1
        assert worker_count("cpu") == 2
        with single_threaded_ops("cpu") as inner:  # nested: unchanged
            assert inner == 2 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_manifest_environment_records_the_thread_counts_and_the_kernel_set(threads):
    threads(1)
    block = environment("cpu", 1)["threads"]
    assert block["intra_op"] == 1 and block["inter_op"] == torch.get_num_interop_threads()
    assert block["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    threads(2)
    assert environment("cpu", 1)["threads"]["intra_op"] == 2


# --------------------------------------------------------------------------- the networks


def _probe_at_each_end(net, make_rows, size: int = 4) -> tuple[object, object]:
    """``net``'s output for one probe row placed first, then last, among other random rows."""
    probe, others = make_rows(1, seed=0), make_rows(size - 1, seed=1)
    with torch.inference_mode():
        first = net(*(torch.cat([p, o]) for p, o in zip(probe, others, strict=True)))
        last = net(*(torch.cat([o, p]) for p, o in zip(probe, others, strict=True)))
    return first[0], last[-1]


def _imagen_rows(stage, text_dim: int):
    cfg = stage.config.model
    r, c = cfg.resolution, cfg.in_channels

    def rows(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, c, r, r, generator=g) if stage.config.is_sr else None
        aug = torch.rand(n, generator=g) if stage.config.is_sr else None
        mask = torch.ones(n, 8, dtype=torch.bool)
        return [
            torch.randn(n, c, r, r, generator=g),
            torch.rand(n, generator=g),
            torch.randn(n, 8, text_dim, generator=g),
            mask,
            torch.randn(n, text_dim, generator=g),
            *([low, aug] if low is not None else []),
        ]

    return rows


@pytest.mark.parametrize("n_threads", [1, 2])
def test_imagen_unets_do_not_depend_on_the_other_rows_of_a_micro_batch(threads, n_threads):
    from evalkit.imagen.configs import StageConfig
    from evalkit.imagen.presets import preset
    from evalkit.imagen.testing import micro_base, micro_sr, micro_stage

    threads(n_threads)
    configs: list[StageConfig] = [micro_base(), micro_sr(), preset("shapes-base-32")]
    for k, cfg in enumerate(configs):
        stage = micro_stage(cfg, seed=k)
        net = stage.model
        first, last = _probe_at_each_end(net, _imagen_rows(stage, cfg.model.text_dim))
        assert torch.equal(first, last), cfg.name


def test_clip_encoders_do_not_depend_on_the_other_rows_of_a_micro_batch():
    from evalkit.metrics.clip_models import TINY_RANDOM, load_clip

    model, preprocess, tokenizer, _ = load_clip(TINY_RANDOM, allow_random_weights=True)

    def images(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 256, (n, 3, 40, 48), dtype=torch.uint8, generator=g)]

    first, last = _probe_at_each_end(lambda x: model.encode_image(preprocess(x)), images)
    assert torch.equal(first, last)
    words = ["a red cube", "two dogs in the snow", "a stop sign", "three cats on a mat"]

    def texts(n: int, seed: int):
        return [tokenizer([words[(seed + i) % 4] for i in range(n)])]

    first, last = _probe_at_each_end(model.encode_text, texts)
    assert torch.equal(first, last)


def test_inception_does_not_depend_on_the_other_rows_of_a_micro_batch():
    from evalkit.metrics.inception import build_inception_network

    net = build_inception_network(None, ["2048", "logits_unbiased"])

    def images(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 3, 299, 299, generator=g) * 255
        return [x.contiguous(memory_format=torch.channels_last)]

    first, last = _probe_at_each_end(lambda x: net.forward_float299(x)[0], images, size=3)
    assert torch.equal(first, last)


# --------------------------------------------------------------------------- thread count


def _bundled_imagen_sample(n_threads: int) -> torch.Tensor:
    from evalkit.generators.base import GenerationRequest, GeneratorContext
    from evalkit.generators.imagen_adapter import make_imagen_generator
    from evalkit.suites.base import Item

    torch.set_num_threads(n_threads)
    gen = make_imagen_generator({"steps": 2}, GeneratorContext(resolution=64))
    prompts = ["a red circle", "two blue squares", "a green triangle above a red square"]
    reqs = [GenerationRequest(Item(f"i{k}", p), 0, 10 + k) for k, p in enumerate(prompts)]
    return gen.sample(reqs).images  # float output: every bit, not just the uint8 rounding


def test_bundled_imagen_does_not_depend_on_the_thread_count(threads):
    # each call builds the generator afresh (no cache_dir): text embeddings are recomputed
    one = _bundled_imagen_sample(1)
    two = _bundled_imagen_sample(2)
    assert torch.equal(one, two)


def test_micro_cascade_does_not_depend_on_the_thread_count(threads):
    from evalkit.imagen.testing import micro_cascade

    cascade = micro_cascade(forward_batch=2)
    prompts, seeds = ["a red cube", "a green cone AND fog", "a blue sphere"], [1, 2, 3]
    out = {}
    for n in (1, 2, 3):
        threads(n)
        out[n] = cascade.sample(prompts, seeds, return_stages=True)
    assert torch.equal(out[1].images, out[2].images) and torch.equal(out[1].images, out[3].images)
    assert all(torch.equal(a, b) for a, b in zip(out[1].stages, out[2].stages, strict=True))


def test_inception_features_do_not_depend_on_the_thread_count(threads):
    from evalkit.metrics.inception import InceptionExtractor
    from evalkit.metrics.weights import InceptionWeights

    weights = InceptionWeights(
        path=None, sha256="random", file_sha256=None, source="random", has_logits=True,
        calibrated=False,
    )  # fmt: skip
    extractor = InceptionExtractor(weights, batch_size=2)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=g)
    features = {}
    for n in (1, 2):
        threads(n)
        features[n] = extractor(images)["2048"]
    assert (features[1] == features[2]).all()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_workers(threads):
    import multiprocessing

    threads(2)
    x = torch.arange(10.0).view(5, 2)
    assert run_in_micro_batches(torch.neg, x, size=2, workers=2).sum() == -45  # parent's pool
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # the child would wait forever on the parent's (absent) threads
        result = pool.apply_async(_double_sum_in_workers).get(timeout=60)
    assert result == 90.0


def _double_sum_in_workers() -> float:
    x = torch.arange(10.0).view(5, 2)
    return float(run_in_micro_batches(lambda a: a * 2, x, size=2, workers=2).sum())
