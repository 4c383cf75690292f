"""The specification of a run: frozen, canonical JSON, hashed into the run id.

Only what changes the numbers goes into the spec (batch size, device and process
count do not: images and metrics are independent of them by construction).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from evalkit.errors import UsageError
from evalkit.hashing import sha256_json

DEFAULT_METRICS = {
    "shapes": ("fid", "kid", "shapes_accuracy"),  # CLIP weights are not available offline
    "coco": ("fid", "clip_score"),
    "drawbench": ("clip_score",),
}
FALLBACK_METRICS = ("clip_score",)
DEFAULT_RESOLUTION = {"shapes": 64, "coco": 256}
FALLBACK_RESOLUTION = 256
_SAFE = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's images and numbers."""

    model: str
    """Registry name of the model (or a model card name)."""
    suite: str
    """Registry name of the suite."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Model options overriding the card's defaults (sampling settings, weights)."""
    suite_options: dict[str, Any] = field(default_factory=dict)
    """Suite options (prompt file path, COCO root, shapes num_items ...)."""
    num_samples: int | None = None
    """Number of prompts to use (None: the suite's default, e.g. 30,000 for COCO)."""
    images_per_prompt: int = 1
    """K images per prompt (DrawBench's human evaluation uses 8)."""
    seed: int = 0
    """Run seed; per-image seeds derive from (seed, item id, sample index)."""
    resolution: int = 256
    """Side length of the images scored."""
    metrics: tuple[str, ...] = ()
    """Registry names of the metrics to compute."""
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-metric options, e.g. {"clip_score": {"model": "ViT-B-32-quickgelu"}}."""
    reference: str | None = None
    """A folder of reference images, or an FID statistics file, replacing the suite's (``--ref``)."""

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise UsageError(f"--images-per-prompt must be ≥ 1, got {self.images_per_prompt}")
        if self.num_samples is not None and self.num_samples < 1:
            raise UsageError(f"--num-samples must be ≥ 1, got {self.num_samples}")
        if not 8 <= self.resolution <= 4096:
            raise UsageError(f"--resolution must be between 8 and 4096, got {self.resolution}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        if d["reference"] is None:  # absent, so that run ids made before --ref existed stay
            del d["reference"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["metrics"] = tuple(d.get("metrics", ()))
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The part of the spec that determines the generated images (no metrics)."""
        d = self.to_dict()
        d.pop("metrics")
        d.pop("metric_options")
        d.pop("reference", None)
        return d

    def run_id(self) -> str:
        """``<model>-<suite>-<12 hex>``: readable, and a hash of the whole spec."""
        digest = sha256_json(self.to_dict())[:12]
        return f"{_slug(self.model)}-{_slug(self.suite)}-{digest}"


def _slug(text: str) -> str:
    return _SAFE.sub("-", text.lower()).strip("-")[:40] or "x"


def default_metrics(suite: str) -> tuple[str, ...]:
    """The metrics a suite is scored with when none are named."""
    return DEFAULT_METRICS.get(suite, FALLBACK_METRICS)


def default_resolution(suite: str) -> int:
    """The resolution a suite is scored at when none is named (256 for COCO, as Imagen)."""
    return DEFAULT_RESOLUTION.get(suite, FALLBACK_RESOLUTION)


def parse_value(text: str) -> Any:
    """Parse a command-line option value: int, float, bool, null or string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``; a malformed pair names the flag."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what}: expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out
