"""Dataclass configs that fully describe a stage: its network, schedule, text encoder, sampling.

Every config round-trips through ``to_dict`` / ``from_dict`` (plain JSON types), which is
what checkpoints store. Unknown or missing keys are errors, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from evalkit.errors import InputError, UsageError
from evalkit.options import as_choice, as_float, as_int

T = TypeVar("T")

SAMPLERS = ("ddim", "ddpm")
PREDICTIONS = ("eps", "v")


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``; lists become tuples, unknown keys raise."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown} (known: {sorted(names)})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from exc


def _to_dict(obj: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


@dataclass(frozen=True)
class UNetConfig:
    """Base U-Net (Imagen base model, ADM-style) at ``resolution``."""

    resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    cross_attn_resolutions: tuple[int, ...] = (8,)
    head_dim: int = 32
    embed_dim: int = 0
    text_dim: int = 32
    groups: int = 8
    dropout: float = 0.0
    cond_channels: int = 0
    aug_embedding: bool = False

    kind = "unet"

    def __post_init__(self) -> None:
        if self.resolution % (2 ** (len(self.channel_mult) - 1)):
            raise UsageError(
                f"U-Net resolution {self.resolution} not divisible by 2^{len(self.channel_mult) - 1}"
            )

    @property
    def time_embed_dim(self) -> int:
        return self.embed_dim or 4 * self.channels

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        return _from_dict(cls, data, "U-Net config")


@dataclass(frozen=True)
class EfficientUNetConfig:
    """Efficient U-Net (Imagen App. B.1) for super-resolution; level i runs at resolution/2^i."""

    resolution: int = 64
    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (1, 1, 2)
    attn_resolutions: tuple[int, ...] = ()
    cross_attn_resolutions: tuple[int, ...] = (16,)
    head_dim: int = 32
    embed_dim: int = 0
    text_dim: int = 32
    groups: int = 8
    dropout: float = 0.0
    cond_channels: int = 3
    aug_embedding: bool = True
    skip_scale: float = 2**-0.5

    kind = "efficient_unet"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.blocks):
            raise UsageError(
                f"Efficient U-Net: {len(self.channels)} channel counts but {len(self.blocks)} block counts"
            )
        if self.resolution % (2 ** (len(self.channels) - 1)):
            raise UsageError(
                f"Efficient U-Net resolution {self.resolution} not divisible by 2^{len(self.channels) - 1}"
            )

    @property
    def time_embed_dim(self) -> int:
        return self.embed_dim or 4 * self.channels[0]

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EfficientUNetConfig:
        return _from_dict(cls, data, "Efficient U-Net config")


MODEL_CONFIGS: dict[str, type[UNetConfig] | type[EfficientUNetConfig]] = {
    "unet": UNetConfig,
    "efficient_unet": EfficientUNetConfig,
}


@dataclass(frozen=True)
class StageSampling:
    """Sampling knobs of one stage."""

    steps: int = 50
    guidance: float = 5.0
    sampler: str = "ddim"
    eta: float = 0.0
    thresholding: str = "dynamic"
    percentile: float = 99.5
    max_threshold: float | None = None
    aug_level: float = 0.0

    def __post_init__(self) -> None:
        # torch-backed module: configs stay importable without torch (model cards, the CLI)
        from evalkit.imagen.thresholding import THRESHOLDING

        where = "imagen sampling"
        as_int(self.steps, "steps", where, minimum=1)
        as_float(self.guidance, "guidance", where)
        as_choice(self.sampler, list(SAMPLERS), "sampler", where)
        as_float(self.eta, "eta", where, minimum=0.0, maximum=1.0)
        as_choice(self.thresholding, list(THRESHOLDING), "thresholding", where)
        if not 0.0 < as_float(self.percentile, "percentile", where) <= 100.0:
            raise UsageError(
                f"{where}: option percentile must be in (0, 100], got {self.percentile}"
            )
        if self.max_threshold is not None:
            as_float(self.max_threshold, "max_threshold", where, minimum=1.0)
        as_float(self.aug_level, "aug_level", where, minimum=0.0, maximum=1.0)

    def replace(self, **changes: Any) -> StageSampling:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSampling:
        return _from_dict(cls, data, "sampling config")


@dataclass(frozen=True)
class StageConfig:
    """Everything needed to rebuild one cascade stage."""

    model: UNetConfig | EfficientUNetConfig
    text_encoder: dict[str, Any] = field(default_factory=lambda: {"kind": "tiny"})
    schedule: str = "cosine"
    prediction: str = "eps"
    low_res: int | None = None
    sampling: StageSampling = field(default_factory=StageSampling)
    name: str = "base"

    def __post_init__(self) -> None:
        # torch-backed module: configs stay importable without torch (model cards, the CLI)
        from evalkit.imagen.schedules import get_schedule

        get_schedule(self.schedule)
        if self.prediction not in PREDICTIONS:
            raise UsageError(
                f"unknown prediction {self.prediction!r}; choose one of {list(PREDICTIONS)}"
            )
        if self.low_res is not None and self.model.cond_channels == 0:
            raise UsageError(
                f"stage {self.name!r} has low_res {self.low_res} but its model takes no image condition"
            )
        if self.low_res is None and self.model.cond_channels:
            raise UsageError(f"stage {self.name!r} model expects a low-res image; set low_res")

    @property
    def resolution(self) -> int:
        return self.model.resolution

    @property
    def is_sr(self) -> bool:
        return self.low_res is not None

    def replace(self, **changes: Any) -> StageConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model.kind,
            "model": self.model.to_dict(),
            "text_encoder": dict(self.text_encoder),
            "schedule": self.schedule,
            "prediction": self.prediction,
            "low_res": self.low_res,
            "sampling": self.sampling.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageConfig:
        if not isinstance(data, dict):
            raise InputError(f"stage config: expected an object, got {type(data).__name__}")
        known = {
            "name",
            "model_type",
            "model",
            "text_encoder",
            "schedule",
            "prediction",
            "low_res",
            "sampling",
        }
        unknown = sorted(set(data) - known)
        missing = sorted({"model_type", "model"} - set(data))
        if unknown or missing:
            raise InputError(f"stage config: unknown keys {unknown}, missing keys {missing}")
        model_cls = MODEL_CONFIGS.get(data["model_type"])
        if model_cls is None:
            raise InputError(
                f"stage config: unknown model_type {data['model_type']!r} (known: {sorted(MODEL_CONFIGS)})"
            )
        return cls(
            model=model_cls.from_dict(data["model"]),
            text_encoder=dict(data.get("text_encoder") or {"kind": "tiny"}),
            schedule=data.get("schedule", "cosine"),
            prediction=data.get("prediction", "eps"),
            low_res=data.get("low_res"),
            sampling=StageSampling.from_dict(data.get("sampling") or {}),
            name=data.get("name", "base"),
        )
