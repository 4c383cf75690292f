"""One registry entry: a name, its factory (or where the factory lives) and a description.

Kept apart from :mod:`evalkit.registry` so that the modules which make entries (the
built-ins, model cards) need not import the registries themselves.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered name: where its factory lives and a one-line description."""

    name: str
    target: Any  # a "module:attr" string (lazy) or the factory itself
    description: str = ""
    source: str = "built-in"

    def load(self) -> Any:
        """Import (if needed) and return the factory."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
