"""Compositing a placed object into a real host image and its label map (pure numpy + PIL).

A placed object is drawn on a *canvas*: its tight bounding box scaled by the placement (`scaled_size`) and grown
by `band` pixels on every side, whose top-left pixel lies at (top - band, left - band) of the host.

    feather_alpha   1 on the object, 1 - d / (band + 1) at chessboard distance d = 1..band from it, 0 beyond;
    composite       alpha * painted + (1 - alpha) * host: the host's bytes exactly where alpha is 0, the painted
                    bytes exactly where it is 1, blended (rounded) in between;
    label_placed    the host's labels with the object's pixels set to its class and the rest of the band
                    (0 < alpha, off the object) set to the ignore index;
    paste           the `paste` filler: the object's own real pixels (with the source pixels around it feeding the
                    band) composited into the host.
The `insert` filler paints the canvas with a generator instead and uses the same `placed_region`, `composite`
and `label_placed`. Canvases that stick out of the host are clipped.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from augment.data.objects import feather_alpha

DEFAULT_BAND = 3
"""Pixels of the feathered band around a pasted or painted object (blended; ignore in the written mask)."""
from augment.synthesis.placement import Placement, scale_shape, scaled_size


def _tight(shape: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the True pixels of `shape`."""
    ys, xs = np.nonzero(shape)
    if len(ys) == 0:
        raise ValueError("an object shape must have at least one True pixel")
    return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


def composite(host_image: np.ndarray, painted: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 `alpha` * `painted` + (1 - `alpha`) * `host_image`, rounded; `host_image`'s bytes exactly where alpha
    is 0 and `painted`'s where it is 1 (images H x W x C uint8, alpha H x W in [0, 1])."""
    if host_image.shape != painted.shape or alpha.shape != host_image.shape[:2]:
        raise ValueError(f"host {host_image.shape}, painted {painted.shape} and alpha {alpha.shape} do not match")
    a = alpha[..., None].astype(np.float32)
    blend = np.rint(host_image * (1.0 - a) + painted * a).clip(0, 255).astype(np.uint8)
    return np.where(a == 0, host_image, np.where(a == 1, painted, blend))


def _embed(canvas: np.ndarray, base: np.ndarray, top: int, left: int) -> np.ndarray:
    """A copy of `base` with `canvas` written over it at (top, left), clipped to `base`."""
    out = base.copy()
    h, w = base.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + canvas.shape[0], h), min(left + canvas.shape[1], w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = canvas[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def scale_pixels(obj_image: np.ndarray, obj_shape: np.ndarray, scale: float, flip: bool, band: int) -> np.ndarray:
    """The canvas of `obj_image` (H x W x 3 uint8, the object's pixels and the source around them; `obj_shape`
    H x W marks the object): the object's bounding box resized by `scale` (bilinear, antialiased when shrinking)
    with `band` pixels of the surrounding source on each side, flipped left-right if `flip`. Where the source
    crop ends before the band does, its edge pixels are repeated."""
    if obj_image.shape[:2] != obj_shape.shape:
        raise ValueError(f"object image {obj_image.shape[:2]} and shape {obj_shape.shape} differ")
    rows, cols = _tight(obj_shape)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    sh, sw = scaled_size(h, w, scale)
    fy, fx = h / sh, w / sw
    pad = math.ceil(band * max(fy, fx)) + 1
    padded = np.pad(np.ascontiguousarray(obj_image, np.uint8), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    box = (cols.start + pad - band * fx, rows.start + pad - band * fy,
           cols.stop + pad + band * fx, rows.stop + pad + band * fy)
    out = np.asarray(Image.fromarray(padded, "RGB").resize((sw + 2 * band, sh + 2 * band), Image.BILINEAR, box=box))
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def insertion_box(obj_shape: np.ndarray, placement: Placement) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) in host pixels of the object `obj_shape` (boolean, as `ObjectComponent.shape`)
    put in place by `placement`: its tight box scaled by `placement.scale` (`scaled_size`); it may reach past
    the host, which `augment.filtering.region.region_iou` clips."""
    ys, xs = np.nonzero(obj_shape)
    if len(ys) == 0:
        raise ValueError("an object shape must have at least one True pixel")
    h, w = scaled_size(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1, placement.scale)
    return placement.top, placement.left, placement.top + h, placement.left + w


def placed_region(
    obj_shape: np.ndarray, placement: Placement, host_size: tuple[int, int], band: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(object, alpha), both of `host_size`: where the placed, scaled and flipped object covers the host (bool),
    and its `feather_alpha` with `band`."""
    rows, cols = _tight(obj_shape)
    canvas = np.pad(scale_shape(obj_shape[rows, cols], placement.scale, placement.flip), band)
    top, left = placement.top - band, placement.left - band
    obj = _embed(canvas, np.zeros(host_size, bool), top, left)
    alpha = _embed(feather_alpha(canvas, band), np.zeros(host_size, np.float32), top, left)
    return obj, alpha


def placed_pixels(host_image: np.ndarray, obj_image: np.ndarray, obj_shape: np.ndarray, placement: Placement,
                  band: int) -> np.ndarray:
    """A copy of `host_image` with the object's canvas (`scale_pixels` of `obj_image` / `obj_shape`, as from
    `ObjectComponent.crop`) written over it where `placement` puts it, clipped: what `paste` blends in."""
    canvas = scale_pixels(obj_image, obj_shape, placement.scale, placement.flip, band)
    return _embed(canvas, host_image, placement.top - band, placement.left - band)


def label_placed(host_mask: np.ndarray, obj: np.ndarray, alpha: np.ndarray, class_index: int,
                 ignore_index: int) -> np.ndarray:
    """`host_mask` with `obj`'s pixels set to `class_index` and the band around it (alpha > 0 off `obj`) set to
    `ignore_index`: the pasted object is in front."""
    out = host_mask.copy()
    out[(alpha > 0) & ~obj] = ignore_index
    out[obj] = class_index
    return out


def paste(
    host_image: np.ndarray, host_mask: np.ndarray, obj_image: np.ndarray, obj_shape: np.ndarray,
    placement: Placement, band: int = DEFAULT_BAND, ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): the object's real pixels (`obj_image`, marked by `obj_shape`, as from
    `ObjectComponent.crop`) placed into the host by `placement`. Outside the object and its `band` the result is
    the host's bytes and labels exactly; the band is blended with `feather_alpha` and labelled `ignore_index`."""
    if host_image.shape[:2] != host_mask.shape:
        raise ValueError(f"host image {host_image.shape[:2]} and mask {host_mask.shape} differ")
    obj, alpha = placed_region(obj_shape, placement, host_mask.shape, band)
    image = composite(host_image, placed_pixels(host_image, obj_image, obj_shape, placement, band), alpha)
    return image, label_placed(host_mask, obj, alpha, placement.class_index, ignore_index)
