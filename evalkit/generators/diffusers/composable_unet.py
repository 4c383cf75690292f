"""Composable Diffusion inside an unchanged diffusers pipeline: the UNet call widened per concept.

The pipeline's guided UNet batch ``[uncond; cond]`` becomes ``[uncond, concept_1 … concept_k]``
per image (one batched forward in fixed-size micro-batches) and is folded back so the
pipeline's own guidance step computes ``ε_u + g · Σᵢ wᵢ (εᵢ − ε_u)``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from evalkit.batching import run_in_micro_batches
from evalkit.errors import GenerationError


@dataclass
class Composition:
    """Widens a pipeline's ``[uncond; cond]`` UNet batch to ``[uncond, concepts…]`` per image.

    ``weights[b]`` are image ``b``'s concept weights, ``embeds`` the concepts' text states in
    order, ``pooled`` their pooled embeddings (SDXL's ``text_embeds``). With learned variance
    (DeepFloyd IF) only the first half of the output channels is combined; the variance is
    the first concept's. The widened rows go through the UNet in fixed-shape micro-batches of
    ``unet_rows`` (the row count of a plain guided call), so a composed image does not depend
    on how many concepts the other prompts of its call have.
    """

    weights: list[list[float]]
    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    learned_variance: bool = False
    unet_rows: int = 2

    def _rows(self) -> tuple[list[int], list[int]]:
        """Source row of every widened row, and the widened rows that hold a concept."""
        batch, src, concept_rows = len(self.weights), [], []
        for b, ws in enumerate(self.weights):
            src.append(b)
            for _ in ws:
                concept_rows.append(len(src))
                src.append(batch + b)
        return src, concept_rows

    def forward(self, inner: Any, sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        """``inner`` (the UNet's own forward) on the widened batch, folded back to ``[uncond; cond]``."""
        batch = len(self.weights)
        if sample.shape[0] != 2 * batch:
            raise GenerationError(
                f"composable prompt: expected the pipeline's guided UNet batch of {2 * batch}, "
                f"got {sample.shape[0]} (is guidance > 1?)"
            )
        src, concept_rows = self._rows()
        index = torch.tensor(src, device=sample.device)
        at = torch.tensor(concept_rows, device=sample.device)
        return_dict = kwargs.pop("return_dict", True)
        states = _take_rows(kwargs.pop("encoder_hidden_states"), index, 2 * batch).clone()
        states[at] = self.embeds.to(states)
        kwargs = {k: _take_rows(v, index, 2 * batch) for k, v in kwargs.items()}
        if self.pooled is not None:
            added = dict(kwargs["added_cond_kwargs"])
            added["text_embeds"] = added["text_embeds"].clone()
            added["text_embeds"][at] = self.pooled.to(added["text_embeds"])
            kwargs["added_cond_kwargs"] = added
        sample, timestep = (
            _take_rows(sample, index, 2 * batch),
            _take_rows(timestep, index, 2 * batch),
        )
        total = len(src)

        def unet(rows: torch.Tensor) -> torch.Tensor:
            def pick(x: Any) -> Any:
                return _take_rows(x, rows.to(sample.device), total)

            chunk_kwargs = {k: pick(v) for k, v in kwargs.items()}
            return inner(
                pick(sample),
                pick(timestep),
                encoder_hidden_states=pick(states),
                return_dict=False,
                **chunk_kwargs,
            )[0]

        out = run_in_micro_batches(unet, torch.arange(total), size=self.unet_rows)
        n_eps = out.shape[1] // 2 if self.learned_variance else out.shape[1]
        uncond, cond, row = [], [], 0
        for ws in self.weights:
            u = out[row]
            delta = sum(w * (out[row + 1 + i, :n_eps] - u[:n_eps]) for i, w in enumerate(ws))
            guided = u[:n_eps] + delta
            if n_eps < out.shape[1]:
                guided = torch.cat([guided, out[row + 1, n_eps:]])
            uncond.append(u)
            cond.append(guided)
            row += 1 + len(ws)
        result = torch.stack(uncond + cond)
        if not return_dict:
            return (result,)
        # optional extra, imported only once a composed prompt is sampled
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=result)


def _take_rows(x: Any, index: torch.Tensor, n: int) -> Any:
    """Rows ``index`` of every tensor in ``x`` (a tensor, or a dict of them) that has ``n`` rows."""
    if isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == n:
        return x.index_select(0, index.to(x.device))
    if isinstance(x, dict):
        return {k: _take_rows(v, index, n) for k, v in x.items()}
    return x


@contextlib.contextmanager
def composed_unet(unet: torch.nn.Module, composition: Composition) -> Iterator[None]:
    """Route ``unet``'s forward through ``composition`` (offload hooks stay in place)."""
    previous = unet.__dict__.get("forward")
    inner = unet.forward
    # names of forward's arguments after (self, sample, timestep), for positional callers
    names = list(inspect.signature(type(unet).forward).parameters)[3:]

    def forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(zip(names, args, strict=False))
        return composition.forward(inner, sample, timestep, **kwargs)

    unet.forward = forward
    try:
        yield
    finally:
        if previous is None:
            unet.__dict__.pop("forward", None)
        else:
            unet.forward = previous
