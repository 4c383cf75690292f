"""Read a finished run folder (results.json + samples.jsonl + images/) for a rating study."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import InputError
from evalkit.results import RESULTS_FILE, SAMPLES_FILE, load_samples, read_results_file


@dataclass(frozen=True)
class RunItem:
    """One prompt of a run: its text, category and images by sample index (run-relative paths)."""

    item_id: str
    prompt: str
    category: str | None
    images: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunData:
    """What a study needs from one run."""

    path: Path
    run_id: str
    model: str
    fingerprint: str | None
    suite: str
    suite_version: str | None
    images_per_prompt: int
    items: dict[str, RunItem]
    clip_per_item: dict[str, float] | None


def _suite_name(spec: dict[str, Any], manifest: dict[str, Any]) -> str:
    suite = spec.get("suite")
    if isinstance(suite, dict):
        suite = suite.get("name")
    name = suite or (manifest.get("suite") or {}).get("name")
    return str(name) if name else ""


def load_run(run_dir: str | Path) -> RunData:
    """Load ``run_dir``; raise InputError naming the file and field at fault."""
    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise InputError(f"{run_dir}: not a run folder")
    # only the keys a study needs are read: results from other tools may omit the rest
    _, results = read_results_file(root / RESULTS_FILE)
    spec = results.get("spec") or {}
    manifest = results.get("manifest") or {}
    run_id = results.get("run_id")
    if not run_id:
        raise InputError(f"{root / RESULTS_FILE}: missing run_id")
    model_manifest = manifest.get("model") or {}
    model = str(model_manifest.get("name") or spec.get("model") or run_id)
    sampling = manifest.get("sampling") or {}
    ipp = spec.get("images_per_prompt", sampling.get("images_per_prompt"))
    if not isinstance(ipp, int) or ipp < 1:
        raise InputError(f"{root / RESULTS_FILE}: spec.images_per_prompt missing or invalid")
    suite_manifest = manifest.get("suite") or {}
    version = suite_manifest.get("version")
    items = _load_samples(root)
    clip = ((results.get("metrics") or {}).get("clip_score") or {}).get("per_item")
    clip_per_item = (
        {str(k): float(v) for k, v in clip.items() if isinstance(v, (int, float))}
        if isinstance(clip, dict)
        else None
    )
    return RunData(
        path=root,
        run_id=str(run_id),
        model=model,
        fingerprint=model_manifest.get("fingerprint"),
        suite=_suite_name(spec, manifest),
        suite_version=None if version is None else str(version),
        images_per_prompt=ipp,
        items=items,
        clip_per_item=clip_per_item or None,
    )


def _load_samples(root: Path) -> dict[str, RunItem]:
    path = root / SAMPLES_FILE
    items: dict[str, RunItem] = {}
    for rec in load_samples(path, root):
        item_id, index, prompt = rec["item_id"], rec["sample_index"], rec["prompt"]
        category = rec.get("category")
        item = items.get(item_id)
        if item is None:
            item = RunItem(item_id, prompt, None if category is None else str(category))
            items[item_id] = item
        elif item.prompt != prompt:
            raise InputError(f"{path}: item {item_id!r} has two different prompts")
        if index in item.images:
            raise InputError(f"{path}: item {item_id!r} sample {index} listed twice")
        item.images[index] = rec["image"]
    if not items:
        raise InputError(f"{path}: no samples")
    return items
