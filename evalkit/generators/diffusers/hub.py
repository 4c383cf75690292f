"""Where a diffusers pipeline's files are: local folders, the Hugging Face cache, and their hashes.

A hub id resolves to its snapshot in the local Hugging Face cache (downloaded only with
``fetch``); a folder must hold ``model_index.json``. :func:`folder_digest` hashes the files
that determine a pipeline's output, memoised in memory and under the cache directory.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.atomic import atomic_write_json
from evalkit.errors import InputError, MissingWeightsError
from evalkit.generators.diffusers.options import PipelineSource
from evalkit.hashing import sha256_file, sha256_json

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_SUFFIXES = (".json", ".txt", ".model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# in-process memo of file hashes: (resolved path, size, mtime_ns) -> sha256
_FILE_HASHES: dict[str, str] = {}


def _looks_local(name: str) -> bool:
    """True when ``name`` is a path rather than an ``owner/repo`` hub id."""
    return not _HUB_ID.match(name) or name.startswith((".", "/", "~"))


def _fetch_hint(name: str) -> str:
    """How to get a pipeline that is not in the local cache."""
    return (
        f"run once online with --model-opt fetch=true (downloads {name} into the Hugging Face "
        "cache; gated repositories such as DeepFloyd IF need `hf auth login` and the licence "
        "accepted on the hub first), or pass a local folder saved with save_pretrained: "
        "--model-opt pipeline=/path/to/pipeline"
    )


def resolve_pipeline_folder(
    source: PipelineSource, *, variant: str | None, fetch: bool, skip: Sequence[str] = ()
) -> tuple[Path, dict[str, Any]]:
    """A local pipeline folder for ``source`` and its identity; downloads only when ``fetch``.

    ``skip`` names components that will not be loaded (so are not downloaded either).
    """
    path = Path(source.name).expanduser()
    if path.exists() or _looks_local(source.name):
        if not path.is_dir():
            raise MissingWeightsError(
                f"diffusers pipeline folder {path} not found; pass an existing folder "
                "(saved with save_pretrained) or a hub id, e.g. --model-opt "
                "pipeline=stable-diffusion-v1-5/stable-diffusion-v1-5 --model-opt fetch=true"
            )
        if not (path / "model_index.json").is_file():
            raise InputError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); save one with "
                "DiffusionPipeline.save_pretrained or give the hub id"
            )
        return path.resolve(), {"path": str(path.resolve())}
    from diffusers import DiffusionPipeline  # optional extra, needed only for hub ids

    try:
        folder = DiffusionPipeline.download(
            source.name,
            revision=source.revision,
            variant=variant,
            local_files_only=not fetch,
            **{name: None for name in skip},
        )
    except Exception as exc:  # the hub client raises many error types; all mean "not here"
        if fetch:
            raise MissingWeightsError(
                f"diffusers: could not download pipeline {source.name!r} ({exc}); check the hub "
                "id, your network and (for gated models) `hf auth login`, or pass a local folder "
                "with --model-opt pipeline=/path/to/pipeline"
            ) from exc
        raise MissingWeightsError(
            f"diffusers pipeline {source.name!r} is not a local folder and not in the local "
            "Hugging Face cache "
            f"(evalkit never downloads implicitly): {_fetch_hint(source.name)}"
        ) from exc
    folder = Path(folder)
    return folder, {"hub_id": source.name, "revision": source.revision, "snapshot": folder.name}


def _file_variant(name: str) -> str | None:
    """``fp16`` for ``x.fp16.safetensors`` / ``x.fp16-00001-of-00002.safetensors``; else None."""
    stem = name
    for suffix in _WEIGHT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    parts = stem.split(".")
    return parts[-1].split("-")[0] if len(parts) > 1 else None


def pipeline_files(
    folder: Path, variant: str | None = None, exclude: Sequence[str] = ()
) -> list[Path]:
    """The files of a pipeline folder that determine its output, as diffusers would load them.

    Per component folder: the weights of ``variant`` (falling back to the plain weights, like
    diffusers), safetensors preferred over ``.bin``; plus every config and tokenizer file
    (``*.json``, ``*.txt``, ``*.model``; shard index files excluded). Components named in
    ``exclude`` (not loaded, e.g. the safety checker) are left out.
    """
    by_dir: dict[Path, list[Path]] = {}
    configs: list[Path] = []
    for p in sorted(folder.rglob("*")):
        parts = p.relative_to(folder).parts
        if not p.is_file() or any(part.startswith(".") for part in parts):
            continue
        if len(parts) > 1 and parts[0] in exclude:
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES):
            by_dir.setdefault(p.parent, []).append(p)
        elif p.suffix in _CONFIG_SUFFIXES and ".index." not in p.name:
            configs.append(p)
    weights: list[Path] = []
    for files in by_dir.values():
        chosen = [f for f in files if _file_variant(f.name) == variant]
        if not chosen and variant is not None:
            chosen = [f for f in files if _file_variant(f.name) is None]
        safetensors = [f for f in chosen if f.name.endswith(".safetensors")]
        weights += safetensors or chosen
    return sorted(weights) + configs


def _hash_store(cache_dir: str | None) -> Path | None:
    """The on-disk memo of file hashes under ``cache_dir`` (None without a cache)."""
    return Path(cache_dir) / "diffusers" / "file-sha256.json" if cache_dir else None


def folder_digest(
    folder: Path,
    variant: str | None = None,
    cache_dir: str | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """sha256 over the sha256 of every file :func:`pipeline_files` selects.

    File hashes are memoised by (path, size, mtime) in memory and, when ``cache_dir`` is
    given, in ``<cache_dir>/diffusers/file-sha256.json``, so large weights hash once.
    """
    files = pipeline_files(folder, variant, exclude)
    if not any(f.name.endswith(_WEIGHT_SUFFIXES) for f in files):
        raise InputError(f"diffusers pipeline folder {folder} holds no weights (*.safetensors)")
    store_path = _hash_store(cache_dir)
    stored: dict[str, str] = {}
    if store_path is not None and store_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads(store_path.read_text(encoding="utf-8"))
    changed = False
    hashes: dict[str, str] = {}
    for f in files:
        real = f.resolve()
        st = real.stat()
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        digest = _FILE_HASHES.get(key) or stored.get(key)
        if digest is None:
            digest = sha256_file(real)
            stored[key], changed = digest, True
        _FILE_HASHES[key] = digest
        hashes[f.relative_to(folder).as_posix()] = digest
    if changed and store_path is not None:
        with contextlib.suppress(OSError):
            atomic_write_json(store_path, stored)
    n_weights = sum(1 for name in hashes if name.endswith(_WEIGHT_SUFFIXES))
    return {"sha256": sha256_json(hashes), "weight_files": n_weights, "files": len(hashes)}
