"""Robust image reading: every PIL mode to 8-bit RGB, and every broken file to one ImageReadError."""

from __future__ import annotations

import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hdm_lightning.data.images import ImageReadError, load_mask, load_rgb, to_rgb
from tests.fixtures import write_16bit_png, write_corrupt_image, write_grey_jpeg, write_rgba_png


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def test_grey_jpeg_becomes_rgb(tmp_path):
    img = load_rgb(write_grey_jpeg(tmp_path / "g.jpg", value=120))
    assert img.size == (8, 6)
    assert np.abs(_pixels(img).astype(int) - 120).max() <= 2


def test_rgba_is_composited_onto_black(tmp_path):
    px = _pixels(load_rgb(write_rgba_png(tmp_path / "a.png")))
    assert (px[:, :4] == (200, 100, 50)).all()  # opaque half keeps its colour
    assert (px[:, 4:] == 0).all()  # transparent half: black, not the colour hidden under alpha 0


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.save(tmp_path / "opaque.png")
    px = _pixels(load_rgb(tmp_path / "opaque.png"))
    assert tuple(px[0, 0]) == (255, 0, 0) and tuple(px[1, 1]) == (10, 20, 30)
    p.save(tmp_path / "transparent.png", transparency=1)
    px = _pixels(load_rgb(tmp_path / "transparent.png"))
    assert tuple(px[0, 0]) == (0, 0, 0) and tuple(px[1, 1]) == (10, 20, 30)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    img = load_rgb(write_16bit_png(tmp_path / "g16.png", value=51400))  # 51400 / 257 = 200
    assert (_pixels(img) == 200).all()


@pytest.mark.parametrize(
    ("mode", "array", "expected"),
    [
        ("I;16B", np.full((3, 4), 257 * 100, ">u2"), 100),
        ("I", np.full((3, 4), 257 * 50, np.int32), 50),
        ("F", np.full((3, 4), 0.5, np.float32), 128),
        ("LA", np.dstack([np.full((3, 4), 90, np.uint8), np.full((3, 4), 255, np.uint8)]), 90),
    ],
)
def test_wide_and_alpha_grey_modes(mode, array, expected):
    img = Image.frombytes(mode, (4, 3), array.tobytes())
    assert (_pixels(to_rgb(img)) == expected).all()


def test_bilevel_and_cmyk(tmp_path):
    one = Image.new("1", (4, 4), 1)
    assert (_pixels(to_rgb(one)) == 255).all()
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    cmyk.save(tmp_path / "c.jpg")
    px = _pixels(load_rgb(tmp_path / "c.jpg")).astype(int)
    assert px[..., 0].min() > 200 and px[..., 1:].max() < 60


def test_16bit_rgb_png(tmp_path):
    w, h, value = 4, 3, 51400  # written by hand: PIL cannot write 16-bit RGB PNGs
    raw = b"".join(b"\x00" + struct.pack(">" + "H" * 3 * w, *[value] * 3 * w) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (tmp_path / "rgb16.png").write_bytes(png)
    assert (_pixels(load_rgb(tmp_path / "rgb16.png")) == 200).all()


def test_truncated_jpeg_fails_with_path_and_fix(tmp_path):
    path = write_corrupt_image(tmp_path / "broken.jpg")
    with pytest.raises(ImageReadError, match="truncated") as info:
        load_rgb(path)
    assert str(path) in str(info.value) and str(info.value).endswith("re-download or remove the file")
    assert isinstance(info.value, ValueError)


def test_missing_file_text_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        load_rgb(tmp_path / "nope.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image") as info:
        load_rgb(tmp_path / "text.jpg")
    assert "text.jpg" in str(info.value)
    with pytest.raises(ImageReadError, match="not a file"):
        load_rgb(tmp_path)


def test_image_read_error_pickles():
    err = pickle.loads(pickle.dumps(ImageReadError("/x/a.jpg", "broken")))
    assert err.path == "/x/a.jpg" and err.reason == "broken" and "/x/a.jpg" in str(err)


def test_load_mask_thresholds(tmp_path):
    soft = np.array([[0, 1, 100, 127, 128, 255]], np.uint8)
    Image.fromarray(soft, "L").save(tmp_path / "m.png")
    assert (np.asarray(load_mask(tmp_path / "m.png")) == [[0, 255, 255, 255, 255, 255]]).all()
    cub = load_mask(tmp_path / "m.png", threshold=127)  # CUB: more than half the annotators
    assert cub.mode == "L" and (np.asarray(cub) == [[0, 0, 0, 0, 255, 255]]).all()
    inverted = load_mask(tmp_path / "m.png", invert=True)
    assert (np.asarray(inverted) == [[255, 0, 0, 0, 0, 0]]).all()


def test_load_mask_colour_and_16bit(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (0, 0, 1)  # faint blue: still nonzero (a luminance conversion would round it to 0)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    assert (np.asarray(load_mask(tmp_path / "c.png")) == [[255, 0], [0, 0]]).all()
    write_16bit_png(tmp_path / "m16.png", value=1)
    assert (np.asarray(load_mask(tmp_path / "m16.png")) == 255).all()  # nonzero at 16 bits, not rounded to 0
    assert (np.asarray(load_mask(tmp_path / "m16.png", threshold=127)) == 0).all()
