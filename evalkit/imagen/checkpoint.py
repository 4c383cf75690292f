"""Stage checkpoints: one safetensors file whose metadata holds the full stage config.

Layout of ``NAME.safetensors``: the network's state dict (float32 unless saved otherwise)
and metadata ``{"format": "evalkit-imagen-stage", "format_version": "1", "config": <JSON>}``,
where the config is :meth:`StageConfig.to_dict` (network, schedule, prediction, text
encoder spec, resolution, low-res size, default sampling). A human-readable copy of the
config is written beside it as ``NAME.json``. Loading rebuilds the network from the
config and refuses tensors that do not match it (never re-initialises silently).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalkit.atomic import atomic_write_json
from evalkit.errors import InputError, MissingWeightsError
from evalkit.hashing import sha256_file
from evalkit.imagen.cascade import Stage
from evalkit.imagen.configs import StageConfig
from evalkit.imagen.unet import build_model

FORMAT = "evalkit-imagen-stage"
FORMAT_VERSION = "1"


class CheckpointMismatchError(InputError):
    """A checkpoint's tensors do not match the network its config describes."""


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Path:
    """Atomically write a safetensors file (temp file beside it, then rename)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_stage(
    path: str | os.PathLike, config: StageConfig, model: nn.Module | dict[str, torch.Tensor]
) -> Path:
    """Write ``model``'s weights and ``config`` to ``path`` (.safetensors) plus a ``.json`` copy of the config."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    save_tensors(path, state, meta)
    atomic_write_json(
        path.with_suffix(".json"),
        {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict()},
    )
    return path


def read_stage_config(path: str | os.PathLike) -> StageConfig:
    """The stage config stored in a checkpoint's metadata."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"Imagen checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise InputError(
            f"Imagen checkpoint {path} is not a readable safetensors file ({exc})"
        ) from exc
    if meta.get("format") != FORMAT:
        raise InputError(
            f"{path} is not an evalkit Imagen stage checkpoint (metadata format {meta.get('format')!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format version {meta.get('format_version')} (this evalkit reads {FORMAT_VERSION})"
        )
    return StageConfig.from_dict(json.loads(meta["config"]))


def check_state_dict(
    expected: dict[str, torch.Tensor], found: dict[str, Any], where: str, limit: int = 10
) -> None:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(found)
        if tuple(found[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or shaped):
        return

    def show(keys: list[str]) -> str:
        more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    parts = [
        f"{name} ({len(keys)}): {show(keys)}"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
        if keys
    ]
    raise CheckpointMismatchError(
        f"{where}: tensors do not match the model config; " + "; ".join(parts)
    )


def load_stage(
    path: str | os.PathLike,
    sha256: str | None = None,
    config: StageConfig | None = None,
    device: str | torch.device = "cpu",
) -> Stage:
    """Rebuild a stage from ``path``: verify sha256 (when given), build from the stored (or given) config, load strictly."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"Imagen checkpoint {path} does not exist")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise InputError(
                f"Imagen checkpoint {path}: sha256 {actual} does not match the expected {sha256}"
            )
    config = config or read_stage_config(path)
    model = build_model(config.model)
    state = load_file(str(path), device="cpu")
    check_state_dict(model.state_dict(), state, f"Imagen checkpoint {path} (stage {config.name!r})")
    model.load_state_dict(state, strict=True)
    return Stage(config, model.to(device))
