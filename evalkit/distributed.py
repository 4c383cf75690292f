"""Data parallelism with torchrun: rank and world size from the environment.

Each rank generates the images ``requests[rank::world]`` into the shared cache;
rank 0 waits at a barrier, then writes the manifest and computes the metrics.
Because every image's seed depends only on its identity, the result equals a
single-process run exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from evalkit.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer") from exc


def dist_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (defaults: one process)."""
    info = DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise UsageError(f"invalid RANK={info.rank} for WORLD_SIZE={info.world_size}")
    return info


def init_process_group(info: DistInfo, device: str) -> None:
    """Join the torchrun process group (NCCL on CUDA, Gloo otherwise); no-op for one process."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo, device: str) -> list[float]:
    """Element-wise sum of ``values`` over every rank (the same list for one process)."""
    if not info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return list(values)
    where = device if device.startswith("cuda") else "cpu"  # NCCL reduces GPU tensors only
    total = torch.tensor(values, dtype=torch.float64, device=where)
    dist.all_reduce(total)
    return total.tolist()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, info: DistInfo) -> str:
    """``cuda`` becomes ``cuda:<local rank>``; other devices are returned unchanged."""
    if device == "cuda":
        return f"cuda:{info.local_rank}"
    return device


def check_device(device: str) -> None:
    """UsageError unless ``device`` names a torch device that this machine has (cpu, cuda[:N], mps)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(
            f"--device {device!r} is not a device name torch knows; use cpu, cuda or cuda:N"
        ) from exc
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: no CUDA GPU is visible to torch on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)")
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device}: MPS is not available on this machine")
        return
    raise UsageError(f"--device {device}: evalkit runs on cpu, cuda or mps, not {parsed.type}")
