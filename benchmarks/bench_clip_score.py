"""CLIP score throughput: images/s of the ``clip_score`` metric, by runner batch size and threads.

The metric runs its encoders on fixed-shape micro-batches of ``--micro-batch`` images (32 by
default, evalkit/batching.py): this prints what that costs or saves against the runner's
``--metric-batch-size`` and torch's intra-op thread count, and whether the per-prompt scores
are bit-identical across the settings. The backbone is built with random weights (throughput
does not depend on them; no download): ViT-L-14-quickgelu, the metric's default, unless
``--model`` says otherwise. Images are 256 px uint8 with one prompt per 4 images.

    .venv/bin/python benchmarks/bench_clip_score.py --n 128 --batch-sizes 16,64 --threads 1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def build(model_name: str):
    """(model, preprocess, tokenizer, info) of ``model_name`` with seeded random weights."""
    from evalkit.metrics.clip_models import ClipInfo, _open_clip, _preprocess_for

    open_clip = _open_clip()
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None, precision="fp32").eval()
    preprocess = _preprocess_for(model)
    tokenizer = open_clip.get_tokenizer(model_name)
    info = ClipInfo(model_name, "random", "random", "random", None, preprocess.image_size, 77,
                    open_clip.__version__, True)  # fmt: skip
    return model, preprocess, tokenizer, info


def score(clip, images, items, samples, batch_size: int, micro_batch: int | None):
    """(seconds, per-prompt scores) of one metric pass fed ``batch_size`` images per update."""
    from evalkit.metrics.clip_score import ClipScore

    kwargs = {"batch_size": micro_batch or batch_size}  # before micro-batching: the run's size
    metric = ClipScore(*clip, n_resamples=10, **kwargs)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        metric.update(
            images[i : i + batch_size], items[i : i + batch_size], samples[i : i + batch_size]
        )
    result = metric.compute()
    return time.perf_counter() - start, result.per_item


def main(argv: list[str] | None = None) -> int:
    from evalkit.suites.base import Item

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-L-14-quickgelu")
    p.add_argument("--n", type=int, default=128, help="images")
    p.add_argument(
        "--batch-sizes", default="16,64", help="runner batch sizes (--metric-batch-size)"
    )
    p.add_argument("--threads", default="1,2", help="intra-op thread counts")
    p.add_argument("--micro-batch", type=int, default=32, help="0: the runner batch size (old)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    clip = build(args.model)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, 256, 256), dtype=torch.uint8, generator=g)
    items = [Item(f"p{i // 4}", f"a photo of object number {i // 4}") for i in range(args.n)]
    samples = [i % 4 for i in range(args.n)]
    score(clip, images[:8], items[:8], samples[:8], 8, args.micro_batch)  # warm-up
    print(f"clip_score {args.model}, n={args.n}, micro-batch {args.micro_batch or 'runner batch'}, "
          f"torch {torch.__version__}, kernels {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(
        f"{'threads':>8s} {'batch':>6s} {'images/s':>9s}  per-prompt scores equal to the first row's"
    )
    first = None
    for threads in [int(v) for v in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for bs in [int(v) for v in args.batch_sizes.split(",")]:
            runs = [
                score(clip, images, items, samples, bs, args.micro_batch)
                for _ in range(args.repeats)
            ]
            seconds = statistics.median(s for s, _ in runs)
            per_item = runs[0][1]
            first = per_item if first is None else first
            print(f"{threads:8d} {bs:6d} {args.n / seconds:9.2f}  {per_item == first}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
