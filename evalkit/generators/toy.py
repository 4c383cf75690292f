"""``toy``: a tiny deterministic procedural generator for tests and plumbing.

It draws a soft background and a few discs whose colours follow colour words in the
prompt, with positions and noise from the request's own seed. It has no weights and
makes no claim to quality; its images depend only on (prompt, seed, settings).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from evalkit import __version__
from evalkit.errors import UsageError
from evalkit.generators.base import GenerationRequest, Generator, GeneratorContext
from evalkit.hashing import sha256_text
from evalkit.images import center_crop_resize
from evalkit.options import as_float, as_int, check_known
from evalkit.seeding import numpy_rng

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SETTINGS = ("native_resolution", "num_blobs", "noise")
#: the component named in option errors
WHERE = "model 'toy'"


class ToyGenerator(Generator):
    """Procedural images from (prompt, seed)."""

    name = "toy"

    def __init__(
        self,
        context: GeneratorContext,
        native_resolution: int = 64,
        num_blobs: int = 3,
        noise: float = 8.0,
        delay_s: float = 0.0,
    ) -> None:
        if native_resolution < 8 or num_blobs < 0 or noise < 0 or delay_s < 0:
            raise UsageError("toy: native_resolution ≥ 8, num_blobs ≥ 0, noise ≥ 0, delay_s ≥ 0")
        self.resolution = context.resolution
        self._native = int(native_resolution)
        self.num_blobs = int(num_blobs)
        self.noise = float(noise)
        self.delay_s = float(
            delay_s
        )  # slows generation down (tests of interruption); not a pixel setting

    @property
    def native_resolution(self) -> int:
        return self._native

    def settings(self) -> dict[str, Any]:
        return {"native_resolution": self._native, "num_blobs": self.num_blobs, "noise": self.noise}

    def fingerprint(self) -> dict[str, Any]:
        return {
            "model": "toy",
            "settings": self.settings(),
            "code": f"evalkit-{__version__}-toy-v1",
        }

    def _draw(self, prompt: str, seed: int) -> np.ndarray:
        rng = numpy_rng(seed)
        n = self._native
        words = prompt.lower().replace(",", " ").split()
        colours: list[tuple[int, ...]] = [COLOURS[w] for w in words if w in COLOURS] or [
            tuple(int(sha256_text(prompt)[i : i + 2], 16) for i in (0, 2, 4))
        ]
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        base = np.array(colours[-1], dtype=np.float32) * 0.25 + 150.0
        image = np.broadcast_to(base, (n, n, 3)).astype(np.float32).copy()
        image += (yy[..., None] - 0.5) * 30.0
        for b in range(self.num_blobs):
            cx, cy = rng.uniform(0.2, 0.8, size=2)
            r = rng.uniform(0.08, 0.2)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
            image[mask] = colours[b % len(colours)]
        image += rng.normal(0.0, self.noise, size=image.shape)
        return np.clip(np.round(image), 0, 255).astype(np.uint8)

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        images = []
        for r in requests:
            image = self._draw(r.prompt, r.seed)
            if self._native != self.resolution:
                image = center_crop_resize(image, self.resolution)
            images.append(image)
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def make_toy_generator(options: dict[str, Any], context: GeneratorContext) -> ToyGenerator:
    """Registry factory for ``toy``: options native_resolution, num_blobs, noise, delay_s."""
    check_known(options, (*SETTINGS, "delay_s"), WHERE)
    kwargs: dict[str, Any] = {}
    if "native_resolution" in options:
        kwargs["native_resolution"] = as_int(
            options["native_resolution"], "native_resolution", WHERE, minimum=8
        )
    if "num_blobs" in options:
        kwargs["num_blobs"] = as_int(options["num_blobs"], "num_blobs", WHERE, minimum=0)
    for key in ("noise", "delay_s"):
        if key in options:
            kwargs[key] = as_float(options[key], key, WHERE, minimum=0)
    return ToyGenerator(context, **kwargs)
