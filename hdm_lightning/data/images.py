"""Robust image and mask reading: any common PIL mode in, fully decoded 8-bit RGB (or a binary mask) out.

Every failure (missing file, not an image, truncated or corrupt data, an unsupported mode) becomes one
:class:`ImageReadError` that names the path, the reason and the fix, so a dataset run can record the item
as failed and go on with the rest.

EXIF orientation is deliberately *not* applied: CUB-200-2011's boxes and segmentations, and the masks of
image/mask pairs, are in the stored pixel grid, and torchvision's loaders read that grid as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ImageReadError", "fit_mask", "load_mask", "load_rgb"]

# Single-channel modes that hold more than 8 bits per pixel; PIL's own convert("RGB") clips them at 255,
# so a 16-bit PNG would come out (almost) all white. They are rescaled by their value range instead.
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageReadError(ValueError):
    """An image or mask file that cannot be used: missing, not an image, truncated, corrupt or unsupported.

    Attributes:
        path: the file, as given.
        reason: what went wrong, without the path.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}; re-download or remove the file")

    def __reduce__(self):  # keep the exception picklable (DataLoader workers) despite the two-argument __init__
        return (type(self), (self.path, self.reason))


def _open(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path`` (``.load()`` inside the try, so truncated files are caught here)."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(path, "file does not exist")
    if not p.is_file():
        raise ImageReadError(path, "not a file")
    try:
        with Image.open(p) as im:
            im.load()  # decoding is lazy: without this a truncated file fails later, far from its path
        return im  # the pixels are loaded, so closing the file does not affect them
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image file PIL can identify") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"refused as a decompression bomb ({e})") from None
    except Exception as e:
        # Decoders raise OSError, SyntaxError, struct.error, zlib.error, IndexError, ... on bad bytes; all of
        # them mean the same thing here: the file on disk is not a usable image.
        raise ImageReadError(path, f"corrupt or truncated image data ({type(e).__name__}: {e})") from None


def _grey_full_scale(im: Image.Image, arr: np.ndarray) -> float:
    """The value that means 'white' for a wide single-channel image (its dtype range)."""
    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode == "I":
        # 32-bit ints: PIL opens 16-bit PNG/TIFF greys as "I" in many versions, so values up to 65535 are
        # 16-bit data; anything larger can only be scaled by the full 32-bit range, which is what it is.
        return 65535.0 if arr.size == 0 or arr.max() <= 65535 else float(2**31 - 1)
    # "F": floats have no integer range; [0, 1] is the convention (e.g. tifffile/skimage outputs). Values
    # beyond 1 are taken as an 8-bit range when they fit in it, else stretched by their maximum.
    top = float(arr.max()) if arr.size else 1.0
    if top <= 1.0:
        return 1.0
    return 255.0 if top <= 255.0 else top


def _wide_grey_to_l(im: Image.Image) -> Image.Image:
    """Rescale a 16/32-bit integer or float grey image to 8-bit "L" by its value range (16-bit: /257)."""
    arr = np.asarray(im).astype(np.float64)
    full = _grey_full_scale(im, arr)
    arr = np.clip(np.round(arr * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L")


def _composite_on_black(im: Image.Image) -> Image.Image:
    """RGBA -> RGB over a black background.

    Black, i.e. colour * alpha (premultiplied alpha): the colour stored under fully transparent pixels is
    arbitrary (often left-over or garbage), and PIL's plain ``convert("RGB")`` would expose it to the
    classifier. Compositing onto a fixed background makes the input depend only on what is visible, and
    black is the background that adds nothing to the colour that is.
    """
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """Convert a decoded PIL image of any common mode to 8-bit RGB (see :func:`load_rgb` for the rules).

    Args:
        im: a decoded image.
        path: named in the error if the mode cannot be converted.

    Raises:
        ImageReadError: a mode PIL cannot convert to RGB.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(im).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    try:
        if has_alpha:
            return _composite_on_black(im)
        return im.convert("RGB")  # L, 1, P (opaque), CMYK, YCbCr, ...
    except (ValueError, OSError) as e:
        raise ImageReadError(path, f"unsupported image mode {mode!r} ({e})") from None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Read an image file as a fully decoded 8-bit RGB PIL image.

    Modes: grey ("L", "1"), palette ("P", with or without transparency), grey + alpha ("LA"), RGBA and CMYK
    are converted; alpha is composited onto black (see :func:`_composite_on_black` for why). 16-bit and
    32-bit integer and float greys ("I;16", "I;16B", "I", "F") are rescaled by their value range (16-bit:
    divided by 257), not clipped. 16-bit RGB PNGs are reduced to 8 bits by PIL itself. EXIF orientation is
    not applied (boxes and masks are in the stored pixel grid).

    Args:
        path: the image file.

    Returns:
        A loaded ``"RGB"`` image, independent of the file (the file is closed).

    Raises:
        ImageReadError: missing file, not an image, truncated or corrupt data, or an unsupported mode.
    """
    return to_rgb(_open(path), path)


def mask_array(im: Image.Image, threshold: int = 0) -> np.ndarray:
    """Binary foreground of a decoded mask image: bool ``[H, W]``.

    Args:
        im: a mask image of any mode. Colour masks count a pixel as foreground if any colour channel
            exceeds the threshold (alpha is ignored); palette masks are judged by their colours.
        threshold: in 8-bit units; foreground is ``value > threshold`` (0: any nonzero pixel). Wider
            images are compared at the same fraction of their range (16-bit: ``threshold * 257``).
    """
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode in ("LA", "La"):
        im = im.getchannel("L")
    elif im.mode in ("RGBA", "RGBa"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype == bool:  # mode "1"
        return arr.copy() if threshold < 255 else np.zeros_like(arr)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    full = _grey_full_scale(im, arr.astype(np.float64)) if im.mode in _WIDE_GREY_MODES else 255.0
    return arr > threshold * (full / 255.0)


def load_mask(path: str | os.PathLike, threshold: int = 0, invert: bool = False) -> Image.Image:
    """Read a ground-truth mask file as a binary ``"L"`` image: 255 = foreground, 0 = background.

    Args:
        path: the mask file (any image format and mode).
        threshold: foreground is ``value > threshold`` in 8-bit units. ``0`` (default): any nonzero pixel.
            CUB-200-2011's segmentations are soft (0..255: the average of several annotators' masks), so
            they are read with ``127``: a pixel is foreground when more than half the annotators marked it.
        invert: swap foreground and background after thresholding, for masks drawn with the object in
            black (e.g. the iChallenge/PALM lesion masks: lesion 0, background 255).

    Raises:
        ImageReadError: as :func:`load_rgb`.
    """
    fg = mask_array(_open(path), threshold)
    if invert:
        fg = ~fg
    return Image.fromarray(fg.astype(np.uint8) * 255, "L")


def fit_mask(mask: Image.Image, size: tuple[int, int], path: str | os.PathLike) -> Image.Image:
    """``mask`` at the image's ``size`` (W, H); a mask at another scale of the same aspect is resized (nearest).

    Raises:
        ImageReadError: the aspect ratios differ (by more than 2 %), so the mask cannot belong to the image.
    """
    if mask.size == size:
        return mask
    (mw, mh), (w, h) = mask.size, size
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise ImageReadError(path, f"mask is {mw}x{mh} but its image is {w}x{h} (a different aspect ratio)")
    return mask.resize(size, Image.Resampling.NEAREST)
