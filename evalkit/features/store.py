"""Features kept on disk by (image content, extractor), and the per-run provider metrics ask.

Layout under the store root (``$EVALKIT_CACHE/features``)::

    <extractor key>/<chunk id>/index.json     fingerprint, image ids, layer shapes
    <extractor key>/<chunk id>/<layer>.npy    float32 rows, in the order of the ids

A chunk is written into a hidden folder and renamed into place when complete, so a killed
process leaves nothing that is read, and several processes (torchrun ranks, parallel runs)
add chunks side by side without a lock. A chunk whose index does not match its arrays (a
foreign or damaged file) is skipped with a warning; its images are extracted again.
"""

from __future__ import annotations

import json
import os
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import numpy as np
import torch

from evalkit.atomic import atomic_write_json
from evalkit.features.base import FeatureExtractor, image_ids
from evalkit.features.stats import FeatureSpill, FeatureStats
from evalkit.progress import log

INDEX = "index.json"
FORMAT = "evalkit-features-v1"
FLUSH_ROWS = 2048


@dataclass
class _Chunk:
    path: Path
    ids: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def layer(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self.arrays[name]


class FeatureStore:
    """Append-only, content-addressed feature chunks per extractor."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._index: dict[str, dict[str, tuple[_Chunk, int]]] = {}
        self._seen: dict[str, set[str]] = {}

    def _folder(self, key: str) -> Path:
        return self.root / key

    def refresh(self, key: str) -> dict[str, tuple[_Chunk, int]]:
        """The index of ``key``'s features, with chunks written since the last look."""
        index = self._index.setdefault(key, {})
        seen = self._seen.setdefault(key, set())
        folder = self._folder(key)
        if not folder.is_dir():
            return index
        for chunk_dir in sorted(folder.iterdir()):
            if chunk_dir.name.startswith(".") or chunk_dir.name in seen:
                continue
            seen.add(chunk_dir.name)
            chunk = self._read_chunk(chunk_dir)
            if chunk is None:
                continue
            for row, image_id in enumerate(chunk.ids):
                index.setdefault(image_id, (chunk, row))
        return index

    @staticmethod
    def _read_chunk(path: Path) -> _Chunk | None:
        try:
            meta = json.loads((path / INDEX).read_text(encoding="utf-8"))
            ids = meta["ids"]
            if meta.get("format") != FORMAT or not isinstance(ids, list):
                raise ValueError("not an evalkit feature chunk")
            chunk = _Chunk(path, ids)
            for layer, shape in meta["layers"].items():
                if tuple(chunk.layer(layer).shape) != (len(ids), shape[1]):
                    raise ValueError(f"{layer}.npy has shape {chunk.layer(layer).shape}")
            return chunk
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(
                f"warning: feature chunk {path} is unreadable ({exc}); its images are extracted again"
            )
            return None

    def lookup(
        self, key: str, ids: Sequence[str], layers: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
        """(mask of the ids found, rows found per layer in id order)."""
        index = self.refresh(key)
        found = np.array([i in index for i in ids], dtype=bool)
        rows: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        for image_id, hit in zip(ids, found, strict=True):
            if hit:
                chunk, row = index[image_id]
                for layer in layers:
                    rows[layer].append(np.asarray(chunk.layer(layer)[row]))
        return found, rows

    def put(
        self,
        key: str,
        fingerprint: dict[str, Any],
        ids: Sequence[str],
        features: dict[str, np.ndarray],
    ) -> None:
        """Store rows of features as one chunk (atomically: a hidden folder renamed into place)."""
        if not ids:
            return
        name = uuid.uuid4().hex
        folder = self._folder(key)
        tmp = folder / f".{name}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for layer, array in features.items():
            with open(tmp / f"{layer}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        meta = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "ids": list(ids),
            "layers": {layer: list(a.shape) for layer, a in features.items()},
        }
        atomic_write_json(tmp / INDEX, meta, indent=None)
        os.replace(tmp, folder / name)


@dataclass
class ExtractionCounts:
    """How many images an extractor computed and how many came from the store (one provider)."""

    computed: int = 0
    from_store: int = 0


#: a feature extractor class; :meth:`FeatureProvider.shared` hands back the same class (the
#: key starts with the extractor's ``name``, which each extractor class sets)
E = TypeVar("E", bound=FeatureExtractor)


class FeatureProvider:
    """The features a run's metrics ask for: from the store, else computed once and stored.

    Metrics of one run share one provider, so when FID, KID and IS all ask for Inception
    features of the same batch the network runs once, and not at all for images whose
    features are already stored. Memory stays flat: only the current batch and at most
    ``flush_rows`` computed rows per extractor (not yet written) are held.
    """

    def __init__(self, store: FeatureStore, flush_rows: int = FLUSH_ROWS) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.counts: dict[str, ExtractionCounts] = {}
        self._extractors: dict[str, FeatureExtractor] = {}
        #: extractor key -> (fingerprint, {image id: {layer: row}}) computed, not yet stored
        self._pending: dict[str, tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]] = {}
        self._batch_ref: Any = None
        self._batch_ids: list[str] = []
        self._batch_features: dict[str, dict[str, np.ndarray]] = {}
        self._recording: RunFeatures | None = None

    def shared(self, extractor: E) -> E:
        """One instance per extractor key: a metric's own copy is replaced by the first one seen."""
        return cast(E, self._extractors.setdefault(extractor.key(), extractor))

    def _ids(self, images: torch.Tensor) -> list[str]:
        if self._batch_ref is None or self._batch_ref() is not images:
            self._batch_ref = weakref.ref(images)
            self._batch_ids = image_ids(images)
            self._batch_features = {}
        return self._batch_ids

    def extract(self, extractor: FeatureExtractor, images: torch.Tensor) -> dict[str, np.ndarray]:
        """float32 features {layer: (B, D)} of uint8 images (B, 3, H, W)."""
        extractor = self.shared(extractor)
        key = extractor.key()
        ids = self._ids(images)
        if key in self._batch_features:
            return self._batch_features[key]
        dims = extractor.layers
        out = {layer: np.empty((len(ids), dim), dtype=np.float32) for layer, dim in dims.items()}
        found = np.zeros(len(ids), dtype=bool)
        pending = self._pending.get(key, ({}, {}))[1]
        for i, image_id in enumerate(ids):
            if image_id in pending:
                found[i] = True
                for layer in dims:
                    out[layer][i] = pending[image_id][layer]
        if not found.all():
            where = np.flatnonzero(~found)
            stored, rows = self.store.lookup(key, [ids[i] for i in where], list(dims))
            for j, i in enumerate(where[stored]):
                found[i] = True
                for layer in dims:
                    out[layer][i] = rows[layer][j]
        counts = self.counts.setdefault(key, ExtractionCounts())
        counts.from_store += int(found.sum())
        todo = np.flatnonzero(~found)
        if len(todo):
            computed = extractor.extract(images[torch.from_numpy(todo)])
            counts.computed += len(todo)
            for layer in dims:
                out[layer][todo] = computed[layer]
            for i in todo.tolist():
                self._queue(extractor, ids[i], {layer: out[layer][i].copy() for layer in dims})
        self._batch_features[key] = out
        if self._recording is not None:
            self._recording.append(extractor, ids, out)
        return out

    def record(self, recorder: RunFeatures | None) -> None:
        """Append every batch's features, once per extractor, to ``recorder`` (None stops)."""
        self._recording = recorder

    def _queue(
        self, extractor: FeatureExtractor, image_id: str, rows: dict[str, np.ndarray]
    ) -> None:
        key = extractor.key()
        _, pending = self._pending.setdefault(key, (extractor.fingerprint(), {}))
        pending.setdefault(image_id, rows)
        if len(pending) >= self.flush_rows:
            self._flush(key)

    def _flush(self, key: str) -> None:
        fingerprint, pending = self._pending.pop(key)
        ids = list(pending)
        layers = list(pending[ids[0]])
        arrays = {layer: np.stack([pending[i][layer] for i in ids]) for layer in layers}
        self.store.put(key, fingerprint, ids, arrays)

    def flush(self) -> None:
        """Write every computed feature not yet in the store."""
        for key in list(self._pending):
            self._flush(key)


class RunFeatures:
    """The features of one pass over a run's images, in image order, written into the run folder.

    ``<run>/features/<extractor key>/<layer>.npy`` (float32 rows in ``samples.jsonl`` order) and
    ``index.json`` (fingerprint, description, image ids). The CI gate resamples these instead of
    re-running a network, and they travel with the run when the cache does not.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self._spill_type = FeatureSpill
        self.folder = Path(folder)
        self._parts: dict[str, tuple[FeatureExtractor, list[str], dict[str, Any]]] = {}

    def append(
        self, extractor: FeatureExtractor, ids: Sequence[str], features: dict[str, np.ndarray]
    ) -> None:
        key = extractor.key()
        if key not in self._parts:
            spills = {
                layer: self._spill_type(dim, prefix="run-features")
                for layer, dim in extractor.layers.items()
            }
            self._parts[key] = (extractor, [], spills)
        _, all_ids, spills = self._parts[key]
        all_ids.extend(ids)
        for layer, spill in spills.items():
            spill.append(features[layer])

    def write(self) -> list[Path]:
        """Write every extractor's features into the run folder (atomically per file)."""
        from evalkit.atomic import atomic_write

        written = []
        for key, (extractor, ids, spills) in self._parts.items():
            folder = self.folder / key
            for layer, spill in spills.items():
                array = spill.array()

                def save(f: IO[bytes], a: np.ndarray = array) -> None:
                    np.save(f, a, allow_pickle=False)

                written.append(atomic_write(folder / f"{layer}.npy", save))
                spill.close()
            meta = {
                "format": FORMAT,
                "fingerprint": extractor.fingerprint(),
                "extractor": extractor.describe(),
                "layers": {layer: [len(ids), dim] for layer, dim in extractor.layers.items()},
                "ids": ids,
            }
            written.append(atomic_write_json(folder / INDEX, meta, indent=None))
        self._parts.clear()
        return written


def load_run_features(
    run_dir: str | os.PathLike, key: str, layer: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """A run's recorded features of one extractor layer (memory-mapped, samples.jsonl order) and their index."""
    from evalkit.errors import InputError

    folder = Path(run_dir) / "features" / key
    try:
        meta = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        array = np.load(folder / f"{layer}.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: no readable {layer} features ({exc})") from exc
    if meta.get("format") != FORMAT or array.shape[0] != len(meta.get("ids", [])):
        raise InputError(f"{folder}: features and their index disagree (a damaged or foreign file)")
    return array, meta


#: reference features larger than this are not copied into the run folder (the gate then reads
#: them from the cache, where the manifest says they are)
EXPORT_LIMIT_BYTES = 64 * 2**20
REFERENCE_STATS = "reference_stats.npz"


def export_reference_data(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> list[Path]:
    """Copy what each feature metric compared against into ``<run>/features/<key>/``, so the CI
    gate can recompute it from the run folder alone: FID's reference mean and covariance
    (``reference_stats.npz``, float32), other metrics' reference features
    (``reference.<layer>.npy``) when they are at most :data:`EXPORT_LIMIT_BYTES`."""
    from evalkit.atomic import atomic_write, atomic_write_bytes

    written = []
    for entry in metrics.values():
        manifest = entry.get("manifest") or {}
        features = manifest.get("features") or {}
        folder = Path(run_dir) / "features" / str(features.get("extractor_key"))
        if not features or not folder.is_dir():
            continue
        stats = manifest.get("reference_stats") or {}
        refs = manifest.get("reference_features") or {}
        if stats.get("path") and Path(stats["path"]).is_file():
            loaded, _ = FeatureStats.load(stats["path"])
            mu, sigma = loaded.mean().astype(np.float32), loaded.cov().astype(np.float32)

            def save_stats(f: IO[bytes], m: np.ndarray = mu, s: np.ndarray = sigma) -> None:
                np.savez(f, mu=m, sigma=s)

            written.append(atomic_write(folder / REFERENCE_STATS, save_stats))
        elif refs.get("path") and Path(refs["path"]).is_file():
            source = Path(refs["path"])
            target = folder / f"reference.{features['layer']}.npy"
            if source.stat().st_size <= EXPORT_LIMIT_BYTES and not target.exists():
                data = source.read_bytes()
                written.append(atomic_write_bytes(target, data))
    return written
