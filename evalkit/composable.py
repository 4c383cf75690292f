"""Composable Diffusion prompts (Liu et al. 2022): ``"a red cube:1.5 AND a blue sphere NOT fog:0.5"``.

Pure Python (no torch): the prompt syntax shared by the in-repo Imagen cascade and the
diffusers adapter, each of which combines the concepts' guidance its own way. Operators are
the upper-case words ``AND`` and ``NOT`` between concepts; each concept may end in
``:weight`` (only in a prompt with an operator, and not after a digit, so ``"16:9"`` or
``"at 12:30"`` stay text).
A NOT concept gets a negative weight. The guidance combination is

    ε̂ = ε(x) + Σᵢ wᵢ · g · (ε(x|cᵢ) − ε(x)),

with g the stage's guidance scale, so a single concept of weight 1 is ordinary
classifier-free guidance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evalkit.errors import InputError

_SPLIT = re.compile(r"\s+(AND|NOT)\s+")
_WEIGHT = re.compile(
    r"^(?P<text>.*?[^\d\s:])\s*:\s*(?P<w>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)$", re.S
)


@dataclass(frozen=True)
class Concept:
    """One concept of a composed prompt: its text and signed weight."""

    text: str
    weight: float = 1.0


def _concept(term: str, sign: float, prompt: str, weighted: bool = True) -> Concept:
    term = term.strip()
    weight = 1.0
    match = _WEIGHT.match(term) if weighted else None
    if match:
        term, weight = match.group("text").strip(), float(match.group("w"))
    if not term:
        raise InputError(
            f"composable prompt {prompt!r}: an AND/NOT operator has no concept beside it"
        )
    return Concept(term, sign * weight)


def parse_composable(prompt: str) -> list[Concept]:
    """Split ``prompt`` into weighted concepts; a prompt without operators is one concept of weight 1."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("composable prompt is empty")
    parts = _SPLIT.split(" " + prompt.strip() + " ")
    first = parts[0].strip()
    if not first:
        raise InputError(
            f"composable prompt {prompt!r}: must start with a concept, not an operator"
        )
    if len(parts) == 1:
        return [_concept(first, 1.0, prompt, weighted=False)]
    concepts = [_concept(first, 1.0, prompt)]
    for op, term in zip(parts[1::2], parts[2::2], strict=True):
        concepts.append(_concept(term, -1.0 if op == "NOT" else 1.0, prompt))
    if not any(c.weight > 0 for c in concepts):
        raise InputError(
            f"composable prompt {prompt!r}: needs at least one positively weighted concept"
        )
    return concepts


def is_composed(concepts: list[Concept]) -> bool:
    """True unless ``concepts`` is a single concept of weight 1 (plain guidance)."""
    return not (len(concepts) == 1 and concepts[0].weight == 1.0)


def format_composable(concepts: list[Concept]) -> str:
    """Inverse of :func:`parse_composable` (canonical spelling, weights always written)."""
    out = []
    for i, c in enumerate(concepts):
        op = "" if i == 0 else (" NOT " if c.weight < 0 else " AND ")
        if i == 0 and c.weight < 0:
            raise InputError("the first concept of a composed prompt must have a positive weight")
        out.append(f"{op}{c.text}:{abs(c.weight):g}")
    return "".join(out)
