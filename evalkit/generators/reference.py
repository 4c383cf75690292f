"""The ``reference`` pseudo-model: returns the suite's own real image for each prompt.

Scoring it gives real-vs-real sanity numbers (the FID floor of a protocol, the CLIP
score of real captions) and exercises the whole pipeline without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from evalkit import __version__
from evalkit.errors import UsageError
from evalkit.generators.base import GenerationRequest, Generator, GeneratorContext
from evalkit.images import center_crop_resize
from evalkit.options import check_known


class ReferenceGenerator(Generator):
    """Real images of the suite, resized to the run's resolution."""

    name = "reference"

    def __init__(self, context: GeneratorContext) -> None:
        if context.suite is None:
            raise UsageError("model 'reference' needs a suite with reference images")
        self.suite = context.suite
        self.resolution = context.resolution

    @property
    def native_resolution(self) -> int:
        return self.resolution

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "reference", "suite": self.suite.describe(), "evalkit": __version__}

    def request_identity(self, request: GenerationRequest) -> dict[str, Any]:
        """The reference image depends on the item, not on the seed."""
        return {"item_id": request.item.id, "reference": request.item.reference}

    def generate(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        images = []
        for r in requests:
            image = self.suite.reference_image(r.item, self.resolution)
            if image.shape[:2] != (self.resolution, self.resolution):
                image = center_crop_resize(image, self.resolution)
            images.append(image)
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def make_reference_generator(
    options: dict[str, Any], context: GeneratorContext
) -> ReferenceGenerator:
    """Registry factory for ``reference`` (takes no options)."""
    check_known(options, (), "model 'reference'")
    return ReferenceGenerator(context)
