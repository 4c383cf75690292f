"""The reference-statistics cache, with the streaming feature statistics it stores.

``FeatureStats`` (running float64 mean and covariance) and ``FeatureSpill`` (features spilled
to a temporary memmap) live in :mod:`evalkit.features.stats` and are re-exported here.

Reference statistics are cached under ``<cache_dir>/refstats/<key>.npz`` where ``key`` is the
sha256 of (reference identity, resize mode, weights sha256, feature layer). Every stats file
carries a JSON header; a file made with other weights, another resize or layer is refused.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit.atomic import atomic_write, atomic_write_json
from evalkit.errors import InputError, ProtocolMismatchError, UsageError
from evalkit.features.base import FeatureExtractor
from evalkit.features.stats import FORMAT_VERSION, FeatureSpill, FeatureStats
from evalkit.hashing import sha256_json
from evalkit.metrics.base import MetricContext
from evalkit.suites.base import ReferenceSet

FEATURES_FORMAT = "evalkit-features"


# --------------------------------------------------------------------------- headers and keys


def refstats_key(
    identity: dict[str, Any],
    resize: str,
    weights_sha256: str,
    feature_layer: str,
    batch_size: int,
) -> str:
    """sha256 of everything the reference statistics depend on (``batch_size``: the
    extractor's micro-batch, which fixes the low bits)."""
    return sha256_json(
        {
            "reference": identity,
            "resize": resize,
            "weights_sha256": weights_sha256,
            "feature_layer": feature_layer,
            "batch_size": batch_size,
            "format_version": FORMAT_VERSION,
        }
    )


def refstats_dir(cache_dir: str | os.PathLike) -> Path:
    """``<cache_dir>/refstats``."""
    return Path(cache_dir).expanduser() / "refstats"


def check_header(
    header: dict[str, Any], path: Path, *, weights_sha256: str, resize: str, feature_layer: str
) -> None:
    """Refuse statistics made under another protocol (weights, resize or feature layer)."""
    theirs = header.get("weights_sha256")
    if theirs != weights_sha256:
        raise ProtocolMismatchError(
            f"reference statistics {path} were made with other weights (weights sha256 {theirs}, "
            f"this run uses {weights_sha256}, {header.get('weights_source', 'source unknown')} there); "
            "recompute them with these weights or pass the matching weights_path"
        )
    if header.get("resize") != resize:
        raise ProtocolMismatchError(
            f"reference statistics {path} were made with resize {header.get('resize')!r}, "
            f"this run uses {resize!r}"
        )
    if str(header.get("feature_layer")) != str(feature_layer):
        raise ProtocolMismatchError(
            f"reference statistics {path} hold feature layer {header.get('feature_layer')!r}, "
            f"this run uses {feature_layer!r}"
        )


def load_checked_stats(
    path: str | os.PathLike, *, weights_sha256: str, resize: str, feature_layer: str
) -> tuple[FeatureStats, dict[str, Any]]:
    """Load a stats file and check it was made under this protocol."""
    stats, header = FeatureStats.load(path)
    check_header(
        header,
        Path(path),
        weights_sha256=weights_sha256,
        resize=resize,
        feature_layer=feature_layer,
    )
    return stats, header


FOREIGN_FORMAT = "mu/sigma statistics (pytorch-fid, clean-fid or torch-fidelity)"


def load_reference_stats(
    path: str | os.PathLike, *, weights_sha256: str, resize: str, feature_layer: str, dim: int
) -> tuple[FeatureStats, dict[str, Any]]:
    """Reference statistics from an evalkit stats file (protocol checked) or a foreign one.

    A foreign file (``mu``/``sigma`` in an ``.npz``, as pytorch-fid's ``--save-stats`` and
    clean-fid write them, or a torch file of such a dict, as torch-fidelity caches them) is
    accepted when its dimension matches; what it cannot tell (weights, resize, image count)
    is recorded as unknown in the header (``foreign``), and a warning is printed.
    """
    from evalkit.progress import log

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"reference statistics {path}: file not found")
    mu = sigma = None
    if path.suffix in (".pt", ".pth"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            mu, sigma = np.asarray(data["mu"]), np.asarray(data["sigma"])
        except Exception as exc:  # torch.load fails in many ways on foreign files
            raise InputError(
                f"reference statistics {path}: not a mu/sigma torch file ({exc})"
            ) from exc
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "header" in data.files:
                    return load_checked_stats(
                        path,
                        weights_sha256=weights_sha256,
                        resize=resize,
                        feature_layer=feature_layer,
                    )
                mu, sigma = np.asarray(data["mu"]), np.asarray(data["sigma"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(
                f"reference statistics {path}: neither an evalkit stats file nor mu/sigma arrays ({exc})"
            ) from exc
    if mu.ndim != 1 or mu.shape[0] != dim or sigma.shape != (dim, dim):
        raise InputError(
            f"reference statistics {path}: mu {mu.shape} / sigma {sigma.shape} do not fit this "
            f"metric's {dim}-d {feature_layer} features (another extractor or layer)"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise InputError(f"reference statistics {path}: NaN or infinite values")
    log(
        f"warning: {path} is a foreign statistics file: the weights, resize and image count it was "
        "made with are unknown (recorded as such); compare only with results made the same way"
    )
    header = {
        "format": FOREIGN_FORMAT,
        "foreign": True,
        "weights_sha256": "unknown",
        "resize": "unknown",
        "feature_layer": f"unknown ({dim}-d)",
        "num_images": None,
    }
    return FeatureStats.from_moments(2, mu, sigma), header


# --------------------------------------------------------------------------- reference features


class StatsOnlyReference(ReferenceSet):
    """``--ref FILE``: precomputed FID statistics stand in for reference images (fid only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def identity(self) -> dict[str, Any]:
        return {"name": "statistics file", "path": str(self.path)}

    def __len__(self) -> int:
        return 0

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        raise UsageError(f"--ref {self.path} holds statistics, not images")


def reference_set_or_raise(context: MetricContext, metric: str) -> ReferenceSet:
    """The run's reference set (``--ref``, else the suite's at the run's resolution), or
    :class:`UsageError` naming what is missing."""
    if isinstance(context.reference, StatsOnlyReference):
        raise UsageError(
            f"{metric} needs reference images, but --ref {context.reference.path} holds statistics "
            "only (mean and covariance, usable by fid); give a folder of reference images"
        )
    ref = context.reference or context.suite.reference_set(context.resolution)
    if ref is None:
        raise UsageError(
            f"{metric} needs reference images, but suite {context.suite.name!r} has none; "
            "use a suite with a reference set (e.g. coco) or pass precomputed ref_stats"
        )
    return ref


def iter_reference_images(
    ref: ReferenceSet, batch_size: int, description: str
) -> Iterator[torch.Tensor]:
    """Reference batches as uint8 (B, 3, H, W) tensors, with a progress bar on stderr."""
    from evalkit.progress import log, progress_bar

    total = len(ref)
    log(f"{description}: {total} reference images (one pass, then cached)")
    with progress_bar(description, total) as advance:
        for batch in ref.iter_batches(batch_size):
            arr = np.asarray(batch)
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
                raise InputError(
                    f"reference set gave a batch {arr.dtype} {arr.shape}, expected uint8 (B, H, W, 3)"
                )
            yield torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
            advance(arr.shape[0])


def save_features(path: str | os.PathLike, features: np.ndarray, header: dict[str, Any]) -> Path:
    """Write features as ``<path>`` (.npy) and their header as ``<path>.json``, atomically."""
    path = Path(path)
    atomic_write(path, lambda f: np.save(f, np.asarray(features), allow_pickle=False))
    full = {"format": FEATURES_FORMAT, "format_version": FORMAT_VERSION, **header,
            "num_images": int(features.shape[0]), "dim": int(features.shape[1])}  # fmt: skip
    atomic_write_json(path.with_name(path.name + ".json"), full)
    return path


def load_checked_features(
    path: str | os.PathLike, *, weights_sha256: str, resize: str, feature_layer: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Memory-map cached features after checking their header (corrupt → :class:`InputError`)."""
    path = Path(path)
    side = path.with_name(path.name + ".json")
    try:
        header = json.loads(side.read_text(encoding="utf-8"))
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputError(f"cached features {exc.filename}: file not found") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cached features {path}: corrupt ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FEATURES_FORMAT:
        raise InputError(f"cached features {side}: not an {FEATURES_FORMAT} header")
    if features.ndim != 2 or features.shape[0] != header.get("num_images"):
        raise InputError(
            f"cached features {path}: shape {features.shape} does not match its header"
        )
    check_header(
        header, path, weights_sha256=weights_sha256, resize=resize, feature_layer=feature_layer
    )
    return features, header


def weighted_moments(
    features: np.ndarray, weights: np.ndarray, *, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of rows repeated ``weights`` times (a bootstrap resample).

    Reads ``features`` (e.g. a memmap) in chunks, so memory stays O(d²).
    """
    n_rows, dim = features.shape
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_rows,) or np.any(w < 0):
        raise ValueError(f"weights must be {n_rows} non-negative counts")
    n = float(w.sum())
    if n < 2:
        raise ValueError("weighted moments need a total weight of at least 2")
    shift = np.asarray(features[: min(n_rows, chunk)], dtype=np.float64).mean(axis=0)
    s1 = np.zeros(dim, dtype=np.float64)
    s2 = np.zeros((dim, dim), dtype=np.float64)
    for start in range(0, n_rows, chunk):
        wc = w[start : start + chunk]
        if not wc.any():
            continue
        y = np.asarray(features[start : start + chunk], dtype=np.float64) - shift
        s1 += wc @ y
        s2 += y.T @ (y * wc[:, None])
    cov = (s2 - np.outer(s1, s1) / n) / (n - 1)
    return shift + s1 / n, 0.5 * (cov + cov.T)


def reference_feature_matrix(
    context: MetricContext, extractor: FeatureExtractor, layer: str, metric: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """One layer of ``extractor``'s features of the suite's reference set, memory-mapped.

    Cached as ``<cache>/refstats/<key>.features.npy`` with a JSON header, keyed by the reference
    set's identity, the extractor's key (its fingerprint) and the layer; computed once through
    the run's shared feature provider (so another metric on the same network reuses the pass).
    """
    ref = reference_set_or_raise(context, metric)
    identity = ref.identity()
    fingerprint = extractor.fingerprint()
    key = sha256_json(
        {"reference": identity, "extractor": extractor.key(), "layer": layer,
         "format_version": FORMAT_VERSION}
    )  # fmt: skip
    path = refstats_dir(context.cache_dir) / f"{key}.features.npy"
    info = {"origin": "cache", "path": str(path), "key": key, "identity": identity}
    check = {
        "weights_sha256": str(fingerprint.get("weights_sha256")),
        "resize": str(fingerprint.get("resize") or fingerprint.get("preprocessing")),
        "feature_layer": layer,
    }
    if path.is_file() and path.with_name(path.name + ".json").is_file():
        features, _ = load_checked_features(path, **check)
        return features, info
    spill = FeatureSpill(extractor.layers[layer], prefix=f"{metric}-reference")
    try:
        for batch in iter_reference_images(
            ref, context.batch_size, f"{metric}: reference features"
        ):
            spill.append(context.features.extract(extractor, batch)[layer])
        context.features.flush()
        header = {
            "key": key,
            "reference_identity": identity,
            "extractor_key": extractor.key(),
            "extractor": extractor.describe(),
            **check,
        }
        save_features(path, spill.array(), header)
    finally:
        spill.close()
    features, _ = load_checked_features(path, **check)
    info["origin"] = "computed"
    return features, info
