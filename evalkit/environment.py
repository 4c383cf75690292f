"""What the protocol manifest records about the software and hardware."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = (
    "evalkit",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "pillow",
    "torch-fidelity",
    "torchmetrics",
    "open-clip-torch",
    "transformers",
    "diffusers",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (absent packages are left out)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding evalkit's source, or (None, None)."""
    where = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_name() -> str:
    """The CPU model name (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware(device: str, world_size: int) -> dict[str, Any]:
    """Device, CPU, visible GPUs and process count."""
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - hardware probing must never fail a run
        gpus = []
    return {"device": device, "cpu": cpu_name(), "gpus": gpus, "world_size": world_size}


def torch_threads() -> dict[str, Any]:
    """torch's CPU threading and kernel set: they fix the low bits of CPU results.

    ``intra_op``/``inter_op`` are ``torch.get_num_threads()``/``get_num_interop_threads()``;
    ``cpu_capability`` is the ATen kernel set in use (``AVX2``, ``AVX512``, ``DEFAULT`` ...,
    chosen by the CPU or ``ATEN_CPU_CAPABILITY``).
    """
    try:
        import torch

        backend = torch.__config__.parallel_info()
        return {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
            "parallel_backend": "OpenMP" if "parallel backend: OpenMP" in backend else "other",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
    except Exception:  # noqa: BLE001 - probing must never fail a run
        return {}


def environment(device: str, world_size: int) -> dict[str, Any]:
    """The manifest's ``environment`` block."""
    commit, dirty = git_state()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "hardware": hardware(device, world_size),
        "threads": torch_threads(),
    }
