"""Image files: lossless round trip, conversions of real-world modes, clear errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evalkit.errors import InputError
from evalkit.images import center_crop_resize, load_generated, load_reference, save_png


def _rgb(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_lossless_and_leaves_no_temp_file(tmp_path):
    array = _rgb()
    path = save_png(tmp_path / "a.png", array)
    assert np.array_equal(load_generated(path, 8), array)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_truncated_png_is_an_input_error_naming_the_file(tmp_path):
    path = save_png(tmp_path / "cut.png", _rgb(32, 32))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InputError, match=r"cut\.png.*corrupt or truncated"):
        load_generated(path)
    with pytest.raises(InputError, match=r"cut\.png"):
        load_reference(path)


def test_non_image_bytes_and_missing_files_are_input_errors(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"junk\.png.*corrupt"):
        load_reference(junk)
    with pytest.raises(InputError, match=r"absent\.png: file not found"):
        load_generated(tmp_path / "absent.png")


def test_generated_image_of_the_wrong_size_or_mode_is_refused(tmp_path):
    path = save_png(tmp_path / "a.png", _rgb(8, 8))
    with pytest.raises(InputError, match=r"size 8x8, expected 16x16"):
        load_generated(path, 16)
    gray = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(gray)
    with pytest.raises(InputError, match=r"g\.png: mode 'L'"):
        load_generated(gray)


def test_reference_grayscale_rgba_palette_and_16_bit_become_8_bit_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray, mode="L").save(tmp_path / "l.png")
    out = load_reference(tmp_path / "l.png")
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 0], gray)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, half of it fully transparent
    rgba[:2, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = load_reference(tmp_path / "t.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[3, 3].tolist() == [255, 255, 255]

    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert load_reference(tmp_path / "p.png").shape == (8, 8, 3)

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = load_reference(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out[7, 7, 0] == round(63 * 1000 / 65535 * 255)


def test_center_crop_resize_squares_non_square_images_and_rejects_unknown_filters():
    out = center_crop_resize(_rgb(10, 20), 6)
    assert out.shape == (6, 6, 3)
    with pytest.raises(ValueError, match="unknown resample"):
        center_crop_resize(_rgb(), 4, resample="nearest-ish")
