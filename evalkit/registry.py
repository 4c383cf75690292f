"""Typed registries of models, suites and metrics.

Built-ins are registered lazily as ``"module:attr"`` strings, so a heavy backend is
imported only when it is chosen. Third parties add entries without editing evalkit,
through entry-point groups in their own package metadata::

    [project.entry-points."evalkit.models"]
    my-model = "my_pkg.evalkit_plugin:make_generator"

Models can also be declared with no code at all, by a TOML model card (see
:mod:`evalkit.cards`). Each entry is a factory: ``factory(options, context)`` for
models and metrics, ``factory(options)`` for suites.

Usage::

    from evalkit.registry import MODELS
    factory = MODELS.get("reference")
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from evalkit.builtins import register_builtins
from evalkit.errors import UsageError
from evalkit.registry_entry import Entry

__all__ = ["METRICS", "MODELS", "REGISTRIES", "SUITES", "Entry", "Registry"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class Registry:
    """Names → factories for one kind of component (``models``, ``suites`` or ``metrics``)."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False
        self._extra_sources: list[Callable[[], list[Entry]]] = []
        self._resolvers: list[Callable[[str], Entry | None]] = []

    def register(
        self, name: str, target: Any = None, *, description: str = "", source: str = "built-in"
    ) -> Any:
        """Register ``target`` under ``name``; without a target, return a decorator."""
        if target is None:

            def decorator(obj: Any) -> Any:
                self.register(name, obj, description=description, source=source)
                return obj

            return decorator
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"invalid {self.kind} name {name!r}: use lower-case letters, digits, '-', '_' or '.'"
            )
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({self._entries[name].source})"
            )
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"lazy target for {self.kind} {name!r} must look like 'module:attr'")
        self._entries[name] = Entry(name, target, description, source)
        return target

    def add_source(self, source: Callable[[], list[Entry]]) -> None:
        """Add a function that yields extra entries on demand (e.g. model cards on disk)."""
        self._extra_sources.append(source)

    def add_resolver(self, resolver: Callable[[str], Entry | None]) -> None:
        """Add a function that turns a name no listing holds into an entry (e.g. a card's path)."""
        self._resolvers.append(resolver)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue  # built-ins win; a plugin cannot silently replace them
            self._entries[ep.name] = Entry(
                ep.name, ep.value, f"plugin ({ep.value})", f"entry point {self.group}"
            )

    def entries(self) -> dict[str, Entry]:
        """All entries: built-ins, entry-point plugins and extra sources (cards)."""
        self._load_plugins()
        merged = dict(self._entries)
        for source in self._extra_sources:
            for entry in source():
                merged.setdefault(entry.name, entry)
        return dict(sorted(merged.items()))

    def names(self) -> list[str]:
        """Sorted registered names."""
        return list(self.entries())

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises :class:`UsageError` with the nearest names."""
        entries = self.entries()
        if name in entries:
            return entries[name]
        for resolver in self._resolvers:
            resolved = resolver(name)
            if resolved is not None:
                return resolved
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown {self.kind[:-1]} {name!r}.{hint} Known {self.kind}: {', '.join(entries) or '(none)'}"
            f" (see `evalkit list {self.kind}`)."
        )

    def get(self, name: str) -> Any:
        """The factory registered under ``name`` (imported on first use)."""
        return self.entry(name).load()


MODELS = Registry("models", "evalkit.models")
SUITES = Registry("suites", "evalkit.suites")
METRICS = Registry("metrics", "evalkit.metrics")

REGISTRIES = {"models": MODELS, "suites": SUITES, "metrics": METRICS}

register_builtins(MODELS, SUITES, METRICS)
