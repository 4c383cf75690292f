"""Fréchet distance at d=2048: evalkit's eigh formula vs scipy.linalg.sqrtm (and torch-fidelity's eigvals).

Covariances come from synthetic non-negative, correlated 2048-d "features" (like pool3
activations). Prints the best and median time of each method over ``--repeats`` runs, the
speed ratio, and the relative difference of the distances; then the same at N < d, where
sqrtm's result has an imaginary part that pytorch-fid/clean-fid discard.

Usage:
    python benchmarks/bench_frechet.py --dim 2048 --n 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg

from evalkit.metrics.frechet import frechet_distance


def features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative correlated features: ReLU of a random linear mix of Gaussians."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim // 4, dim)) / np.sqrt(dim / 4)
    x = rng.normal(size=(n, dim // 4)) @ mix + rng.normal(scale=0.5, size=(n, dim)) + shift
    return np.maximum(x, 0.0)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fd_sqrtm(mu1, s1, mu2, s2) -> tuple[float, float]:
    """pytorch-fid / clean-fid style: scipy sqrtm, real part; also returns max |imag|."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    imag = float(np.abs(np.imag(covmean)).max()) if np.iscomplexobj(covmean) else 0.0
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean))), imag


def fd_eigvals(mu1, s1, mu2, s2) -> float:
    """torch-fidelity style: sqrt of the (complex) eigenvalues of the non-symmetric product."""
    tr = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr)


def fd_exact_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """Exact when N < d: Tr((S1 S2)^1/2) is the nuclear norm of Bᵀ A (S1 = A Aᵀ, S2 = B Bᵀ)."""
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    fa = (a - mu1).T / np.sqrt(a.shape[0] - 1)
    fb = (b - mu2).T / np.sqrt(b.shape[0] - 1)
    nuclear = np.linalg.svd(fb.T @ fa, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (fa * fa).sum() + (fb * fb).sum() - 2 * nuclear)


def timed(fn: Callable[[], object], repeats: int) -> tuple[object, list[float]]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def compare(label: str, a: np.ndarray, b: np.ndarray, repeats: int) -> None:
    mu1, s1 = moments(a)
    mu2, s2 = moments(b)
    ours, t_ours = timed(lambda: frechet_distance(mu1, s1, mu2, s2), repeats)
    (sq, imag), t_sq = timed(lambda: fd_sqrtm(mu1, s1, mu2, s2), repeats)
    ev, t_ev = timed(lambda: fd_eigvals(mu1, s1, mu2, s2), repeats)
    print(f"\n{label}: d={a.shape[1]}, N={a.shape[0]} and {b.shape[0]}, {repeats} repeats")
    print(
        f"{'method':<34}{'best s':>9}{'median s':>10}{'x evalkit (time)':>15}{'FID':>16}{'rel diff vs evalkit':>18}"
    )
    for name, value, times in (
        ("evalkit (Cholesky, sygst, syevr)", ours, t_ours),
        ("scipy.linalg.sqrtm (real part)", sq, t_sq),
        ("torch-fidelity eigvals", ev, t_ev),
    ):
        rel = abs(value - ours) / abs(ours) if ours else float("nan")
        print(f"{name:<34}{min(times):>9.3f}{statistics.median(times):>10.3f}"
              f"{min(times) / min(t_ours):>15.2f}{value:>16.8f}{rel:>18.2e}")  # fmt: skip
    print(f"sqrtm max |imaginary part| discarded: {imag:.3e}")
    if max(a.shape[0], b.shape[0]) < a.shape[1]:
        exact = fd_exact_low_rank(a, b)
        print(
            f"exact value from the features (SVD of the N x N cross term): {exact:.8f}; "
            f"rel error evalkit {abs(ours - exact) / exact:.2e}, sqrtm {abs(sq - exact) / exact:.2e}, "
            f"eigvals {abs(ev - exact) / exact:.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n", type=int, default=5000, help="samples per side at full rank")
    parser.add_argument(
        "--n-small", type=int, default=500, help="samples per side for the N < d case"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="BLAS threads (0: library default)")
    args = parser.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    print(f"BLAS threads: {args.threads or 'default'}")
    compare(
        "full rank",
        features(args.n, args.dim, 1),
        features(args.n, args.dim, 2, shift=0.05),
        args.repeats,
    )
    compare(
        "N < d (singular covariances)",
        features(args.n_small, args.dim, 3),
        features(args.n_small, args.dim, 4, shift=0.05),
        args.repeats,
    )


if __name__ == "__main__":
    main()
