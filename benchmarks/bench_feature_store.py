"""Issue 12's figures: one feature pass for several metrics, extractor throughput, memory of the
k-NN metrics as N grows.

    python benchmarks/bench_feature_store.py one-pass --n 200          # run time, fid vs fid,kid
    python benchmarks/bench_feature_store.py extractors --n 32 --threads 1
    python benchmarks/bench_feature_store.py knn-memory --ns 1000,5000,10000,30000 --dim 4096

``one-pass`` runs ``evalkit run --model toy --suite shapes`` twice in fresh caches (the converted
Inception weights copied in first, so no conversion is timed): ``--metrics fid`` and
``--metrics fid,kid``; the metric time is the run's total minus its generation time (it includes
the reference pass done before generation). Before the feature store, KID ran its own Inception
pass over the same images (make demo: fid 30.0 s, kid 28.7 s).

``extractors`` times each extractor on the same synthetic 256 px images beside torch-fidelity's
implementation where it runs offline (Inception: the same converted weights; VGG16: the same
random-initialised torchvision weights file); DINOv2 and CLIP have no offline torch-fidelity peer
(torch hub / a download) and are timed alone with random weights (speed does not depend on them).

``knn-memory`` measures peak anonymous memory (RssAnon) and time of precision/recall and
density/coverage on memory-mapped float32 features, evalkit's block-streaming implementation vs
torch-fidelity's prc and the prdc package (each in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _evalkit() -> str:
    return str(Path(sys.executable).with_name("evalkit"))


def one_pass(n: int) -> None:
    from evalkit.metrics.weights import resolve_inception_weights

    with tempfile.TemporaryDirectory() as tmp:
        weights = resolve_inception_weights(Path(tmp) / "seed-cache")
        rows = []
        for metrics in ("fid", "fid,kid"):
            cache = Path(tmp) / f"cache-{metrics}"
            (cache / "weights").mkdir(parents=True)
            shutil.copy(weights.path, cache / "weights" / weights.path.name)
            for side in weights.path.parent.glob(weights.path.name + "*"):
                shutil.copy(side, cache / "weights" / side.name)
            out = subprocess.run(
                [_evalkit(), "run", "--model", "toy", "--suite", "shapes", "--num-samples", str(n),
                 "--metrics", metrics, "--quiet", "--no-report", "--out", str(Path(tmp) / "out"),
                 "--cache-dir", str(cache)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results = json.loads(Path(out.stdout.strip().splitlines()[-1]).read_text())
            t = results["manifest"]["timings"]
            metric_s = t["total_s"] - t["generate_s"]
            rows.append((metrics, metric_s, t["metrics_s"], results["manifest"]["features"]))
        base = rows[0][1]
        print(f"toy model on shapes, {n} generated + {n} reference images, fresh caches")
        print(f"{'metrics':<10}{'metric time s':>15}{'x fid alone':>13}  Inception images computed")
        for metrics, seconds, _, features in rows:
            computed = sum(c["computed"] for c in features.values())
            print(f"{metrics:<10}{seconds:>15.1f}{seconds / base:>13.2f}  {computed}")


def _images(n: int, size: int = 256):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def extractors(n: int, threads: int, skip_dinov2: bool = False) -> None:
    import torch
    import torchvision

    torch.set_num_threads(threads)
    from evalkit.features.backbones import DinoV2Extractor, Vgg16Extractor
    from evalkit.metrics.inception import InceptionExtractor
    from evalkit.metrics.weights import resolve_inception_weights

    images = _images(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = resolve_inception_weights(Path(tmp) / "cache")
        ours = InceptionExtractor(weights)
        t_ours = _timed(lambda: ours.extract(images))
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        theirs = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights.path)
        ).eval()

        def tf_inception():
            with torch.no_grad():
                for chunk in images.split(32):
                    theirs(chunk)

        rows.append(("Inception pool3", n / t_ours, n / _timed(tf_inception)))
        vgg_file = Path(tmp) / "vgg16.pth"
        torch.manual_seed(0)
        torch.save(torchvision.models.vgg16().state_dict(), vgg_file)
        ours_vgg = Vgg16Extractor(vgg_file, "bench", "cpu", "bench")
        t_ours = _timed(lambda: ours_vgg.extract(images))
        from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

        tf_vgg = FeatureExtractorVGG16(
            "vgg16", ["fc2_relu"], feature_extractor_weights_path=str(vgg_file)
        )

        def tf_vgg16():
            with torch.no_grad():
                for chunk in images.split(32):
                    tf_vgg(chunk)

        rows.append(("VGG16 fc2_relu", n / t_ours, n / _timed(tf_vgg16)))
        if skip_dinov2:
            return _print_extractor_rows(n, threads, rows)
        from transformers import Dinov2Config, Dinov2Model

        folder = Path(tmp) / "dinov2"
        config = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, patch_size=14, image_size=518)  # fmt: skip
        Dinov2Model(config).save_pretrained(folder)
        dino = DinoV2Extractor(folder, "bench", "cpu", "bench")
        rows.append(("DINOv2 ViT-L/14", n / _timed(lambda: dino.extract(images), repeats=1), None))
    _print_extractor_rows(n, threads, rows)


def _print_extractor_rows(n: int, threads: int, rows: list) -> None:
    print(f"extractor throughput, {n} images of 256 px, {threads} thread(s), images/s")
    print(f"{'extractor':<18}{'evalkit':>10}{'torch-fidelity':>16}{'ratio':>8}")
    for name, ours_rate, peer in rows:
        ratio = f"{ours_rate / peer:.2f}" if peer else "-"
        peer_text = f"{peer:.2f}" if peer else "no offline peer"
        print(f"{name:<18}{ours_rate:>10.2f}{peer_text:>16}{ratio:>8}")


def _rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def knn_worker(impl: str, n: int, dim: int, folder: str) -> None:
    import threading

    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon_mib())
            time.sleep(0.02)

    real = np.load(Path(folder) / "real.npy", mmap_mode="r")
    fake = np.load(Path(folder) / "fake.npy", mmap_mode="r")
    thread = threading.Thread(target=watch, daemon=True)
    before = _rss_anon_mib()
    thread.start()
    t0 = time.perf_counter()
    if impl == "evalkit":
        from evalkit.metrics.manifold import density_coverage, precision_recall

        out = {**precision_recall(real, fake), **density_coverage(real, fake)}
    elif impl == "torch-fidelity":
        import torch
        from torch_fidelity.metric_prc import prc_features_to_metric

        out = prc_features_to_metric(torch.from_numpy(np.array(fake)), torch.from_numpy(np.array(real)),
                                     prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=True, verbose=False)  # fmt: skip
    else:
        import prdc

        out = prdc.compute_prdc(np.array(real), np.array(fake), nearest_k=5)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    print(json.dumps({"impl": impl, "n": n, "seconds": seconds, "peak_anon_mib": peak[0], "before_mib": before,
                      "result": {k: float(v) for k, v in out.items()}}))  # fmt: skip


def knn_memory(ns: list[int], dim: int, impls: list[str]) -> None:
    print(
        f"k-NN metrics on memory-mapped float32 features, d={dim}; peak anonymous memory (MiB) and seconds"
    )
    print(f"{'N':>7}" + "".join(f"{impl:>30}" for impl in impls))
    for n in ns:
        with tempfile.TemporaryDirectory() as tmp:
            rng = np.random.default_rng(n)
            for name in ("real", "fake"):
                arr = np.lib.format.open_memmap(
                    Path(tmp) / f"{name}.npy", mode="w+", dtype=np.float32, shape=(n, dim)
                )
                for s in range(0, n, 4096):
                    arr[s : s + 4096] = rng.normal(size=(min(4096, n - s), dim)).astype(np.float32)
                arr.flush()
                del arr
            cells = []
            for impl in impls:
                proc = subprocess.run([sys.executable, __file__, "knn-worker", impl, str(n), str(dim), tmp],
                                      capture_output=True, text=True)  # fmt: skip
                if proc.returncode != 0:
                    cells.append("failed: " + proc.stderr.strip().splitlines()[-1][:20])
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                cells.append(f"{r['peak_anon_mib']:.0f} MiB {r['seconds']:.1f} s")
            print(f"{n:>7}" + "".join(f"{c:>30}" for c in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("one-pass")
    p.add_argument("--n", type=int, default=200)
    p = sub.add_parser("extractors")
    p.add_argument("--n", type=int, default=32, help="a multiple of 32 (evalkit's micro-batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-dinov2", action="store_true", help="DINOv2 ViT-L alone takes minutes")
    p = sub.add_parser("knn-memory")
    p.add_argument("--ns", default="1000,5000,10000")
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--impls", default="evalkit,torch-fidelity,prdc")
    p = sub.add_parser("knn-worker")
    p.add_argument("impl")
    p.add_argument("n", type=int)
    p.add_argument("dim", type=int)
    p.add_argument("folder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "one-pass":
        one_pass(args.n)
    elif args.cmd == "extractors":
        extractors(args.n, args.threads, args.skip_dinov2)
    elif args.cmd == "knn-memory":
        knn_memory([int(x) for x in args.ns.split(",")], args.dim, args.impls.split(","))
    else:
        knn_worker(args.impl, args.n, args.dim, args.folder)


if __name__ == "__main__":
    main()
