"""Model cards: TOML files that declare a model with no code.

A card names an adapter (a registered model factory), its weights (local path or hub
id, each with a sha256) and default sampling settings::

    name = "my-imagen"
    adapter = "imagen"
    description = "Imagen trained on my data"

    [weights.base]
    path = "my_imagen/base.safetensors"     # relative to the card's folder
    sha256 = "9f2c..."

    [sampling]
    guidance = 5.0
    steps = 50

Cards are found in the folders of ``$EVALKIT_MODEL_PATH`` (``os.pathsep``-separated),
then ``./models`` of the working directory, then the cards shipped inside the package
(:data:`BUNDLED_CARDS_DIR`: the bundled Imagen and the diffusers baselines, so a plain
``pip install`` has them). A path ending in ``.toml`` names one card file directly
(``evalkit run --model path/to/card.toml``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.errors import InputError, UsageError
from evalkit.registry_entry import Entry

if TYPE_CHECKING:
    from evalkit.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the model cards shipped inside the package (and the bundled Imagen's weights beside them)
BUNDLED_CARDS_DIR = Path(__file__).resolve().parent / "model_cards"


@dataclass(frozen=True)
class WeightSpec:
    """One weights file of a model: where it is and the sha256 it must have."""

    key: str
    path: Path | None = None
    hub_id: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ModelCard:
    """A parsed model card."""

    name: str
    adapter: str
    path: Path
    description: str = ""
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def card_dirs() -> list[Path]:
    """Folders searched for model cards, in priority order."""
    dirs = [Path(p) for p in os.environ.get("EVALKIT_MODEL_PATH", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "models", BUNDLED_CARDS_DIR]
    seen: list[Path] = []
    for d in dirs:
        resolved = d.resolve()
        if resolved.is_dir() and resolved not in seen:
            seen.append(resolved)
    return seen


def _require(data: Mapping[str, Any], key: str, kind: type, path: Path) -> Any:
    if key not in data:
        raise InputError(f"model card {path}: missing required field '{key}'")
    if not isinstance(data[key], kind):
        raise InputError(f"model card {path}: field '{key}' must be a {kind.__name__}")
    return data[key]


def load_card(path: str | os.PathLike) -> ModelCard:
    """Parse and validate one card; errors name the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"model card {path}: cannot be read as TOML ({exc})") from exc
    name = _require(data, "name", str, path)
    adapter = _require(data, "adapter", str, path)
    weights: dict[str, WeightSpec] = {}
    for key, spec in (data.get("weights") or {}).items():
        if not isinstance(spec, Mapping):
            raise InputError(
                f"model card {path}: weights.{key} must be a table with path/hub_id and sha256"
            )
        local = spec.get("path")
        hub_id = spec.get("hub_id")
        if local is None and hub_id is None:
            raise InputError(f"model card {path}: weights.{key} needs 'path' or 'hub_id'")
        sha = spec.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
            raise InputError(f"model card {path}: weights.{key}.sha256 must be 64 hex characters")
        resolved = (path.parent / local).resolve() if local is not None else None
        weights[key] = WeightSpec(key=key, path=resolved, hub_id=hub_id, sha256=sha)
    sampling = data.get("sampling") or {}
    options = data.get("options") or {}
    if not isinstance(sampling, Mapping) or not isinstance(options, Mapping):
        raise InputError(f"model card {path}: 'sampling' and 'options' must be tables")
    return ModelCard(
        name=name,
        adapter=adapter,
        path=path,
        description=str(data.get("description", "")),
        weights=weights,
        sampling=dict(sampling),
        options=dict(options),
    )


def _card_factory(models: Registry, card: ModelCard, options: dict[str, Any], context: Any) -> Any:
    """Build ``card``'s model: its adapter from ``models`` with the card's options merged in."""
    adapter = models.get(card.adapter)
    merged = {**card.options, **card.sampling, **options}
    if context is not None:
        context.extra["card"] = card  # adapters read weights from context.extra["card"]
    return adapter(merged, context)


def card_entries(models: Registry) -> list[Entry]:
    """Registry entries for every card found (a broken card is skipped here, reported on use).

    ``models`` is the registry the cards' adapters are looked up in when a card is used.
    """
    entries: list[Entry] = []
    for folder in card_dirs():
        for path in sorted(folder.glob("*.toml")):
            try:
                card = load_card(path)
            except InputError as exc:
                entries.append(
                    Entry(path.stem, partial(_broken_card, exc), f"BROKEN CARD: {exc}", str(path))
                )
                continue
            entries.append(
                Entry(card.name, partial(_card_factory, models, card), card.description, str(path))
            )
    return entries


def _broken_card(exc: InputError, *args: Any, **kwargs: Any) -> Any:
    raise exc


def card_entry_for_path(models: Registry, name: str) -> Entry | None:
    """The registry entry of a card given by its path (``--model path/to/card.toml``), else None.

    UsageError when ``name`` ends in ``.toml`` but no such file exists; InputError (naming the
    file and field) when it is not a valid card.
    """
    if not name.endswith(".toml"):
        return None
    path = Path(name).expanduser()
    if not path.is_file():
        raise UsageError(f"--model {name}: no such model card file")
    card = load_card(path)
    return Entry(name, partial(_card_factory, models, card), card.description, str(path.resolve()))
