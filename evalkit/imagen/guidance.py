"""Classifier-free guidance and its composable generalisation, evaluated in one batched forward.

Each sample contributes one unconditional row plus one row per concept; all rows go
through the network together, then are combined per sample with

    ε̂ = (1 − Σᵢ wᵢ) ε(x) + Σᵢ wᵢ ε(x|cᵢ)  =  ε(x) + Σᵢ wᵢ (ε(x|cᵢ) − ε(x)),

which for one concept of weight w is ε̃ = w·ε(x,c) + (1−w)·ε(x) (Ho & Salimans 2022).
When a sample's weights sum to exactly 1 (plain prompt at w = 1), ε(x) has weight 0 and its
row is left out: the result is the same bit for bit, and the network runs half the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def cfg(out_cond: torch.Tensor, out_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """ε̃ = w·ε(x,c) + (1−w)·ε(x)."""
    return w * out_cond + (1.0 - w) * out_uncond


def compose(
    out_uncond: torch.Tensor, outs: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """ε̂ = (1 − Σwᵢ)·ε(x) + Σ wᵢ·ε(x|cᵢ); one concept reduces exactly to :func:`cfg`."""
    if len(outs) == 1:
        return cfg(outs[0], out_uncond, float(weights[0]))
    total = (1.0 - float(sum(weights))) * out_uncond
    for out, w in zip(outs, weights, strict=True):
        total = total + float(w) * out
    return total


@dataclass(frozen=True)
class RowPlan:
    """Layout of a guided batch: which sample and which text each network row belongs to."""

    sample: list[int]
    text: list[int]
    uncond_row: list[int | None]
    cond_rows: list[list[int]]
    weights: list[list[float]]

    @property
    def rows(self) -> int:
        return len(self.sample)


def plan_rows(concepts: Sequence[Sequence[tuple[int, float]]], null_text: int = 0) -> RowPlan:
    """Rows for samples whose concepts are (text index, effective weight) pairs; text ``null_text`` is ∅."""
    sample: list[int] = []
    text: list[int] = []
    uncond_row: list[int | None] = []
    cond_rows: list[list[int]] = []
    weights: list[list[float]] = []
    for i, group in enumerate(concepts):
        if group and sum(float(w) for _, w in group) == 1.0:
            uncond_row.append(None)  # ε(x) would get weight 1 − Σw = 0
        else:
            uncond_row.append(len(sample))
            sample.append(i)
            text.append(null_text)
        rows = []
        for t, _ in group:
            rows.append(len(sample))
            sample.append(i)
            text.append(t)
        cond_rows.append(rows)
        weights.append([float(w) for _, w in group])
    return RowPlan(sample, text, uncond_row, cond_rows, weights)


def _weighted_sum(outs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = float(weights[0]) * outs[0]
    for out, w in zip(outs[1:], weights[1:], strict=True):
        total = total + float(w) * out
    return total


def combine_rows(out: torch.Tensor, plan: RowPlan) -> torch.Tensor:
    """Per sample, :func:`compose` its unconditional and concept rows of ``out`` (Σ wᵢ·ε(x|cᵢ) without ε(x))."""
    return torch.stack(
        [
            compose(out[u], [out[r] for r in rows], w)
            if u is not None
            else _weighted_sum([out[r] for r in rows], w)
            for u, rows, w in zip(plan.uncond_row, plan.cond_rows, plan.weights, strict=True)
        ]
    )
