"""Run folders and the results format: the one reader of ``results.json`` and ``samples.jsonl``.

``results.json`` and ``samples.jsonl`` are written by the runner; everything that reads them
(reports, compare, sweeps, the gate, the history, dashboards, rating studies) goes through this
module: :func:`read_run` for a run folder or a ``results.json``, :func:`load_results` and
:func:`load_samples` for one file, :func:`safe_image_path` for an image a sample names. They
check required keys and types and raise :class:`~evalkit.errors.InputError` naming the file
and the key path at fault. Keys not listed here are allowed (forward compatibility); keys
listed are checked. Keep this module in sync with ``docs/results-schema.md``.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypedDict

from evalkit.errors import InputError

#: The ``schema_version`` this module reads and documents.
SCHEMA_VERSION = 1
#: File names inside a run folder.
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
#: per-image features and reference data the set metrics compared against
FEATURES_DIR = "features"

#: Whether lower or higher values are better, for the built-in metrics.
METRIC_DIRECTIONS: dict[str, str] = {
    "fid": "lower",
    "kid": "lower",
    "is": "higher",
    "clip_score": "higher",
    "shapes_accuracy": "higher",
}


# --------------------------------------------------------------------------- spec


class _SpecRequired(TypedDict):
    #: registry name or model-card path of the model
    model: str
    #: registry name of the prompt suite
    suite: str
    #: images generated per prompt (K)
    images_per_prompt: int
    #: run seed; per-image seeds derive from (seed, item id, sample index)
    seed: int
    #: side length of the evaluated images in pixels
    resolution: int
    #: metric names, in the order they were computed
    metrics: list[str]


class Spec(_SpecRequired, total=False):
    """``results["spec"]``: the run as requested (the run id hashes it)."""

    model_options: dict[str, Any]
    suite_options: dict[str, Any]
    #: number of prompts drawn from the suite; None means all
    num_samples: int | None
    #: metric name -> options passed to the metric
    metric_options: dict[str, dict[str, Any]]


# ----------------------------------------------------------------------- manifest


class _SuiteManifestRequired(TypedDict):
    name: str
    version: str


class SuiteManifest(_SuiteManifestRequired, total=False):
    """``manifest["suite"]``: ``suite.describe()`` plus the item count; extra keys allowed."""

    #: number of prompts evaluated (after ``num_samples``)
    num_items: int


class _ModelManifestRequired(TypedDict):
    name: str


class ModelManifest(_ModelManifestRequired, total=False):
    """``manifest["model"]``: what produced the images."""

    #: weights hashes + settings + code version: keys the image cache
    fingerprint: dict[str, Any]
    #: sampling settings in force (guidance, steps ...)
    settings: dict[str, Any]
    #: side length the model produces before any resize
    native_resolution: int
    #: True when the model's weights are random (plumbing only)
    uncalibrated: bool


class _SamplingRequired(TypedDict):
    #: total images generated (prompts x images_per_prompt)
    num_images: int
    images_per_prompt: int
    seed: int
    resolution: int


class Sampling(_SamplingRequired, total=False):
    """``manifest["sampling"]``: how the images were drawn and stored."""

    #: file format of stored images ("png": lossless)
    image_format: str
    #: how per-image seeds derive from the run seed (a formula, human-readable)
    seed_derivation: str


class Hardware(TypedDict, total=False):
    """``manifest["environment"]["hardware"]``."""

    #: torch device string used ("cpu", "cuda:0")
    device: str
    cpu: str
    gpus: list[str]
    #: number of processes (torchrun ranks)
    world_size: int


class Environment(TypedDict, total=False):
    """``manifest["environment"]``: where the run happened (may differ between comparable runs)."""

    python: str
    platform: str
    #: distribution name -> version
    packages: dict[str, str]
    git_commit: str | None
    git_dirty: bool | None
    hardware: Hardware


class Timings(TypedDict, total=False):
    """``manifest["timings"]``: wall-clock seconds."""

    generate_s: float
    #: metric name -> seconds spent in update + compute
    metrics_s: dict[str, float]
    total_s: float
    images_generated: int
    images_from_cache: int


class _ManifestRequired(TypedDict):
    suite: SuiteManifest
    model: ModelManifest
    sampling: Sampling


class Manifest(_ManifestRequired, total=False):
    """``results["manifest"]``: the protocol the numbers were measured under."""

    environment: Environment
    timings: Timings


# ------------------------------------------------------------------------ metrics


class _CategoryResultRequired(TypedDict):
    value: float


class CategoryResult(_CategoryResultRequired, total=False):
    """``metrics[name]["per_category"][category]``."""

    #: 95% interval [lo, hi] or None
    interval: list[float] | None
    #: number of prompts in the category
    n: int


class MetricManifest(TypedDict, total=False):
    """Conventional keys of ``metrics[name]["manifest"]`` (documentation only: the manifest
    is free-form and not type-checked; all keys optional, extra keys allowed).

    Reports show these; :mod:`evalkit.report.compare` treats every manifest key as protocol
    except the machine keys of ``compare.is_note_key`` (versions, device, paths ...).
    """

    #: library and code path, e.g. "torch-fidelity 0.4.0 inception-v3-compat"
    implementation: str
    #: feature network, e.g. "inception-v3-tf-2015-12-05 pool3"
    extractor: str
    #: sha256 of the extractor / CLIP weights file
    weights_sha256: str
    #: how images are resized for the extractor, e.g. "tf1" or "clean"
    resize: str
    #: ``ReferenceSet.identity()``: name, count, content hashes, crop, resize, resolution
    reference_identity: dict[str, Any]
    #: the cached reference statistics: {"key": hash of identity+resize+weights, "origin", "path"}
    reference_stats: dict[str, Any]
    #: CLIP model name, e.g. "ViT-L-14-quickgelu"
    backbone: str
    #: CLIP pretrained tag, e.g. "openai"
    pretrained: str
    #: CLIP score convention ("raw cosine" ...), or value name -> convention
    scale: str | dict[str, str]
    #: library name -> version (a note in comparisons, not protocol)
    versions: dict[str, str]


class _MetricEntryRequired(TypedDict):
    name: str
    value: float


class MetricEntry(_MetricEntryRequired, total=False):
    """``results["metrics"][name]``: ``MetricResult.to_dict()``."""

    #: 95% interval [lo, hi] or None
    interval: list[float] | None
    #: secondary values, e.g. {"clip_score_x100": 27.1}
    values: dict[str, float]
    #: item id -> score
    per_item: dict[str, float] | None
    #: category -> {"value", "interval", "n"}
    per_category: dict[str, CategoryResult] | None
    #: free-form; shapes_accuracy puts {"verdicts": [{item_id, sample_index, correct, reason}]}
    details: dict[str, Any]
    #: free-form; see :class:`MetricManifest` for the conventional keys (not type-checked)
    manifest: dict[str, Any]
    #: True when measured with random weights
    uncalibrated: bool


# ------------------------------------------------------------------------- stages


class _StageEntryRequired(TypedDict):
    #: stage label, unique within the cascade, e.g. "sr64@64"
    name: str
    #: side length the stage produces (its images are resized to the run resolution to score)
    native_resolution: int
    #: mean measured seconds per generated image; None when every image came from the cache
    latency_s_per_image: float | None
    #: metric name -> result on this stage's images (the final stage: the run's metrics)
    metrics: dict[str, MetricEntry]


class StageEntry(_StageEntryRequired, total=False):
    """``results["stages"][i]``: one cascade stage's metrics and latency (``--per-stage``)."""

    #: metric name -> seconds in update + compute for this stage
    metrics_s: dict[str, float]
    #: run-relative folder holding the stage's scored images ("images" for the final stage)
    images: str


# ------------------------------------------------------------------------ results


class _ResultsRequired(TypedDict):
    schema_version: int
    run_id: str
    #: ISO-8601 timestamp
    created: str
    evalkit_version: str
    spec: Spec
    manifest: Manifest
    metrics: dict[str, MetricEntry]
    #: True when any part (model or metric) used random weights
    uncalibrated: bool


class Results(_ResultsRequired, total=False):
    """The whole of ``results.json``."""

    #: every cascade stage in order, final last (only from ``evalkit run --per-stage``)
    stages: list[StageEntry]


# ------------------------------------------------------------------------ samples


class _SampleRequired(TypedDict):
    item_id: str
    sample_index: int
    prompt: str
    #: image path relative to the run dir, e.g. "images/<key>.png"
    image: str


class Sample(_SampleRequired, total=False):
    """One line of ``samples.jsonl``: one generated image."""

    seed: int
    category: str | None
    #: content-addressed cache key of the image
    key: str


# --------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.is_typeddict(tp) or typing.get_origin(tp) is dict:
        return "object"
    if typing.get_origin(tp) is list:
        return "list"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return _type_name(tp)


def _matches_scalar(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    return isinstance(value, tp)


def _check(value: Any, tp: Any, where: str, file: str) -> None:
    """Raise InputError unless ``value`` conforms to the annotation ``tp``."""
    if tp is Any:
        return
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        alts = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(alts) < len(typing.get_args(tp)):
            return
        if len(alts) == 1:  # X | None with a non-null value: report X's own error
            _check(value, alts[0], where, file)
            return
        for alt in alts:
            try:
                _check(value, alt, where, file)
                return
            except InputError:
                continue
        raise InputError(f"{file}: {where}: expected {_describe(tp)}, got {_json_type(value)}")
    if typing.is_typeddict(tp):
        _check_typeddict(value, tp, where, file)
    elif origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{file}: {where}: expected object, got {_json_type(value)}")
        _, vt = typing.get_args(tp)
        for k, v in value.items():
            _check(v, vt, f"{where}.{k}", file)
    elif origin is list:
        if not isinstance(value, list):
            raise InputError(f"{file}: {where}: expected list, got {_json_type(value)}")
        (it,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check(v, it, f"{where}[{i}]", file)
    elif not _matches_scalar(value, tp):
        raise InputError(f"{file}: {where}: expected {_describe(tp)}, got {_json_type(value)}")


def _check_typeddict(value: Any, td: Any, where: str, file: str) -> None:
    if not isinstance(value, dict):
        raise InputError(
            f"{file}: {where or '(top level)'}: expected object, got {_json_type(value)}"
        )
    hints = typing.get_type_hints(td)
    prefix = f"{where}." if where else ""
    for key in sorted(td.__required_keys__):
        if key not in value:
            raise InputError(f"{file}: {prefix}{key}: missing required key")
    for key, tp in hints.items():
        if key in value:
            _check(value[key], tp, f"{prefix}{key}", file)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def validate_results(data: Any, file: str = "results.json") -> Results:
    """Check ``data`` against :class:`Results`; raise InputError naming ``file`` and the key."""
    _check_typeddict(data, Results, "", file)
    if data["schema_version"] != SCHEMA_VERSION:
        raise InputError(
            f"{file}: schema_version: {data['schema_version']} is not supported "
            f"(this evalkit reads version {SCHEMA_VERSION})"
        )
    _check_intervals(data["metrics"], "metrics", file)
    names: set[str] = set()
    for i, stage in enumerate(data.get("stages") or []):
        if stage["name"] in names:
            raise InputError(f"{file}: stages[{i}].name: duplicate stage {stage['name']!r}")
        names.add(stage["name"])
        _check_intervals(stage["metrics"], f"stages[{i}].metrics", file)
    return data


def _check_intervals(metrics: dict[str, Any], where: str, file: str) -> None:
    for name, entry in metrics.items():
        interval = entry.get("interval")
        if interval is not None and len(interval) != 2:
            raise InputError(f"{file}: {where}.{name}.interval: expected [lo, hi]")


def read_results_file(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes of a ``results.json`` and its top-level JSON object, not checked further.

    For readers that need the exact bytes (hashes) or only a few keys; everything else
    uses :func:`load_results`.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such results file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e}") from None
    data = _parse_json(raw, str(p))
    if not isinstance(data, dict):
        raise InputError(f"{p}: (top level): expected object, got {_json_type(data)}")
    return raw, data


def _parse_json(raw: bytes, file: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{file}: not valid JSON: {e}") from None


def parse_results(raw: bytes, file: str = RESULTS_FILE) -> Results:
    """Parse and validate the bytes of a ``results.json``; errors name ``file``."""
    return validate_results(_parse_json(raw, file), file)


def load_results(path: str | Path) -> Results:
    """Read and validate a ``results.json``."""
    raw, data = read_results_file(path)
    return validate_results(data, str(path))


def safe_image_path(run_dir: Path, image: str, where: str) -> Path:
    """Resolve a run-relative image path; refuse absolute paths and anything outside ``run_dir``."""
    if (
        not image
        or "\x00" in image
        or "\\" in image
        or PurePosixPath(image).is_absolute()
        or PureWindowsPath(image).is_absolute()
        or PureWindowsPath(image).drive
        or ".." in PurePosixPath(image).parts
    ):
        raise InputError(
            f"{where}: image path {image!r} must be relative and inside the run folder"
        )
    root = run_dir.resolve()
    target = (root / image).resolve()
    if not target.is_relative_to(root):
        raise InputError(f"{where}: image path {image!r} leads outside the run folder")
    return target


def load_samples(path: str | Path, run_dir: str | Path | None = None) -> list[Sample]:
    """Read and validate ``samples.jsonl``; image paths must stay inside ``run_dir``.

    ``run_dir`` defaults to the folder holding ``path``.
    """
    p = Path(path)
    root = Path(run_dir) if run_dir is not None else p.parent
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{p}: no such samples file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read: {e}") from None
    samples: list[Sample] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON: {e}") from None
        _check_typeddict(rec, Sample, "", where)
        safe_image_path(root, rec["image"], f"{where}: image")
        samples.append(rec)
    return samples


@dataclass(frozen=True)
class RunFiles:
    """A run as read from disk: its validated results, their bytes, and its samples if any."""

    #: the ``results.json`` read
    results_path: Path
    #: the folder holding it (the run folder)
    folder: Path
    #: the exact bytes of ``results.json`` (what history records and hashes)
    raw: bytes
    results: Results
    #: the validated ``samples.jsonl`` records; None when the folder has no samples file
    samples: list[Sample] | None
    #: True when a folder was given (not a ``results.json`` path)
    from_folder: bool = False

    @property
    def run_dir(self) -> Path | None:
        """The run folder (images, features): given as such, or holding samples, else None."""
        return self.folder if self.from_folder or self.samples is not None else None


def locate_run(ref: str | Path) -> tuple[Path, Path]:
    """(``results.json`` path, run folder) of a run folder or a ``results.json`` path."""
    path = Path(ref)
    if path.is_dir():
        return path / RESULTS_FILE, path
    return path, path.parent


def read_run(ref: str | Path, *, missing_hint: str = "") -> RunFiles:
    """Read a run folder or a ``results.json``: results validated, samples (when present) too.

    ``missing_hint`` is added to the error when there is no results file.
    """
    results_path, folder = locate_run(ref)
    if missing_hint and not results_path.exists():
        raise InputError(f"{results_path}: no such results file ({missing_hint})")
    raw, data = read_results_file(results_path)
    results = validate_results(data, str(results_path))
    samples = load_run_samples(folder)
    return RunFiles(results_path, folder, raw, results, samples, from_folder=Path(ref).is_dir())


def load_run_samples(run_dir: str | Path) -> list[Sample] | None:
    """The validated ``samples.jsonl`` of ``run_dir``, or None when it has none."""
    path = Path(run_dir) / SAMPLES_FILE
    return load_samples(path, run_dir) if path.is_file() else None


# ---------------------------------------------------------------- reading helpers


def metric_direction(name: str, entry: dict[str, Any] | None = None) -> str | None:
    """ "lower" or "higher" (is better) for a metric, or None when unknown.

    A manifest may declare ``higher_is_better``; otherwise the built-in table decides.
    """
    manifest = (entry or {}).get("manifest") or {}
    flag = manifest.get("higher_is_better")
    if isinstance(flag, bool):
        return "higher" if flag else "lower"
    return METRIC_DIRECTIONS.get(name)


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        v = d.get(k)
        if v not in (None, "", {}):
            return v
    return None


#: keys of a reference identity that hash its content, most specific first
_REF_HASH_KEYS = (
    "sha256",
    "content_sha256",
    "files_sha256",
    "annotation_sha256",
    "captions_sha256",
    "hf_fingerprint",
    "render_hash",
    "hash",
)


def short_hash(value: Any, n: int = 12) -> str:
    """The first ``n`` characters of a hash string (``sha256:`` prefix dropped)."""
    s = str(value)
    if s.startswith("sha256:"):
        s = s[len("sha256:") :]
    return s[:n]


def metric_protocol_facts(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """Label/value pairs of the protocol facts a metric's manifest records, for reports."""
    m = entry.get("manifest") or {}
    facts: list[tuple[str, str]] = []
    ref = _first(m, "reference_identity", "reference", "reference_set")
    if isinstance(ref, dict):
        parts = [str(_first(ref, "name", "id", "source") or "?")]
        count = _first(ref, "count", "num_images", "n")
        if count is not None:
            parts.append(f"n={count}")
        for key in ("crop", "resize"):
            if ref.get(key):
                parts.append(f"{key} {ref[key]}")
        for key in _REF_HASH_KEYS:
            if ref.get(key):
                parts.append(f"{key} {short_hash(ref[key])}")
                break
        facts.append(("reference", ", ".join(parts)))
    elif ref is not None:
        facts.append(("reference", str(ref)))
    stats = m.get("reference_stats")
    ref_hash = _first(m, "reference_sha256", "stats_sha256") or (
        stats.get("key") if isinstance(stats, dict) else None
    )
    if ref_hash:
        facts.append(("reference stats", short_hash(ref_hash)))
    for label, keys in (
        ("implementation", ("implementation",)),
        ("extractor", ("extractor", "feature_extractor")),
        ("resize", ("resize", "resize_mode")),
        ("input size", ("input_size", "image_size")),
        ("CLIP backbone", ("backbone", "clip_backbone", "clip_model")),
        ("pretrained", ("pretrained", "clip_pretrained")),
        ("scale", ("scale", "clip_scale")),
    ):
        v = _first(m, *keys)
        if isinstance(v, dict):  # e.g. {"value": "raw cosine ...; details", ...}
            v = v.get("value")
        if v is not None:
            facts.append((label, str(v).split(";")[0].strip()))
    w = _first(m, "weights_sha256", "extractor_weights_sha256", "clip_weights_sha256")
    if w:
        facts.append(("weights", f"sha256 {short_hash(w)}"))
    return facts


def metric_n(entry: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """The sample size behind a metric: prompts for per-prompt metrics, else images."""
    per_item = entry.get("per_item")
    if per_item:
        return f"{len(per_item)} prompts"
    n = _first(entry.get("details") or {}, "n", "num_images")
    if n is None:
        n = results["manifest"]["sampling"].get("num_images")
    return f"{n} images" if n is not None else "?"


def format_value(value: Any) -> str:
    """A number with 4 significant digits (no exponent for ordinary magnitudes)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-4):
        return f"{v:.3e}"
    if abs(v) >= 1000:
        return f"{v:.1f}"
    return f"{v:.4g}"


def format_interval(interval: Any) -> str:
    """``[lo, hi]`` formatted, or an em dash when absent."""
    if not interval:
        return "—"
    return f"[{format_value(interval[0])}, {format_value(interval[1])}]"


def stage_metric_names(results: dict[str, Any]) -> list[str]:
    """Metric names over every ``results["stages"]`` entry, in order of first appearance."""
    names: dict[str, None] = {}
    for stage in results.get("stages") or []:
        names.update(dict.fromkeys(stage["metrics"]))
    return list(names)


def is_uncalibrated(results: Mapping[str, Any]) -> bool:
    """True when the results, the model or any metric is marked uncalibrated."""
    if results.get("uncalibrated"):
        return True
    if results.get("manifest", {}).get("model", {}).get("uncalibrated"):
        return True
    return any(m.get("uncalibrated") for m in results.get("metrics", {}).values())
