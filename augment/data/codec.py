"""Encoding and decoding of images and masks, and the per-sample checks every writer applies."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from augment.core.errors import BadSample

IMAGE_FORMATS = ("png", "jpeg")
# The most pixels (width x height) a decoded source image or mask may have: well above 4K and 8K frames, far below
# what would exhaust memory. `augment ingest --max-pixels` changes it for one ingest.
MAX_PIXELS = 64_000_000
# The smallest image side (height and width) the product takes anywhere (--size, example data, the GAN): the
# discriminator downsamples at least twice and keeps its bottleneck's short side >= 4, so 4 * 2**2; the generator's
# start map then has a short side >= 4 as well, and the torchvision segmenters (output stride 8 to 16) still see at
# least one feature pixel.
MIN_SIDE = 16


def _check_pixels(im: Image.Image, what: str, source: str, max_pixels: int | None) -> None:
    """BadSample when the header's width x height exceeds `max_pixels`; read before any pixel is decoded."""
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise BadSample(
            f"{what} is {width}x{height} ({width * height} pixels), over the cap of {max_pixels} pixels; not decoded",
            source,
        )


def _too_large(exc: Exception, what: str, source: str) -> BadSample:
    return BadSample(f"{what} is too large to decode safely ({exc})", source)


def decode_image(data: bytes, source: str = "", max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes to an RGB uint8 array H×W×3, fully (truncated files fail here).

    An image whose header claims more than `max_pixels` pixels (None: no cap of ours) raises BadSample before it is
    decoded; PIL's own decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) applies in any case.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im, "image", source, max_pixels)
            im.load()
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, "image", source) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadSample(f"corrupt or unreadable image ({exc})", source) from exc


def decode_mask(data: bytes, source: str = "", max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode a single-channel (L or palette) PNG to a uint8 array H×W of class indices; `max_pixels` as for
    decode_image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im, "mask", source, max_pixels)
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise BadSample(f"mask must be single-channel (L or palette PNG), got mode {im.mode}", source)
            arr = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, "mask", source) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadSample(f"corrupt or unreadable mask ({exc})", source) from exc
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise BadSample(f"mask value {int(arr.max())} does not fit a class index (0-255)", source)
        arr = arr.astype(np.uint8)
    return arr


def image_format(data: bytes) -> str | None:
    """'png', 'jpeg' or None, from the magic bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95, compress_level: int = 6) -> bytes:
    """Encode an RGB uint8 array as PNG (lossless) or JPEG."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=compress_level)
    else:
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_mask(mask: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode class indices H×W as a lossless single-channel (mode L) PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB array to size=(H, W)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image, "RGB").resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class map to size=(H, W)."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask, "L").resize((w, h), Image.NEAREST))


def class_pixels(mask: np.ndarray, num_classes: int, ignore_index: int, source: str = "") -> np.ndarray:
    """Pixel count per class (int64, length num_classes); raises BadSample for labels outside the class set."""
    counts = np.bincount(mask.ravel(), minlength=256)
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[ignore_index] = True
    bad = np.flatnonzero((counts > 0) & ~valid)
    if bad.size:
        raise BadSample(
            f"label value(s) {bad.tolist()[:8]} outside the {num_classes} classes (ignore index {ignore_index})",
            source,
        )
    return counts[:num_classes].astype(np.int64)


def check_same_size(image: np.ndarray, mask: np.ndarray, source: str = "") -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise BadSample(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {image.shape[1]}x{image.shape[0]}",
            source,
        )


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W); a single number means a square; both sides at least MIN_SIDE (else ValueError)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 256x512), got {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < MIN_SIDE:
        raise ValueError(f"size must look like HxW with both sides >= {MIN_SIDE}, got {text!r}")
    return dims[0], dims[1]
