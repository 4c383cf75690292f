"""evalkit's separable TF1 bilinear resize equals torch-fidelity's, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from evalkit.errors import InputError
from evalkit.metrics.tf1_resize import tf1_bilinear_resize


@pytest.mark.parametrize(
    "shape, size",
    [
        ((4, 3, 256, 256), (299, 299)),  # COCO protocol: 256 up to 299
        ((2, 3, 64, 64), (299, 299)),  # shapes suite
        ((2, 3, 512, 384), (299, 299)),  # downsampling, non-square input
        ((1, 3, 17, 300), (299, 299)),  # odd sizes, one axis shrinks
        ((2, 3, 299, 299), (299, 299)),  # identity size
        ((1, 2, 40, 50), (31, 77)),  # non-square output, other channel count
    ],
)
def test_tf1_resize_equals_torch_fidelity_bit_for_bit(shape, size):
    generator = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).float()
    expected = interpolate_bilinear_2d_like_tensorflow1x(images, size=size, align_corners=False)
    assert torch.equal(tf1_bilinear_resize(images, size), expected)


def test_tf1_resize_equals_torch_fidelity_on_non_integer_values():
    images = torch.rand(2, 3, 33, 45, generator=torch.Generator().manual_seed(3)) * 255
    expected = interpolate_bilinear_2d_like_tensorflow1x(
        images, size=(299, 299), align_corners=False
    )
    assert torch.equal(tf1_bilinear_resize(images, 299), expected)


def test_tf1_resize_refuses_non_float32_or_non_4d_input():
    with pytest.raises(InputError, match="float32"):
        tf1_bilinear_resize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 299)
    with pytest.raises(InputError, match="float32"):
        tf1_bilinear_resize(torch.zeros(3, 8, 8), 299)
