"""Objects in label maps: the connected components of a class, and grown (feathered) object masks.

Pure numpy geometry on H x W label maps, below everything that places, crops or paints objects
(augment.synthesis.placement, augment.synthesis.composite, augment.training.crops).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


DEFAULT_MIN_PIXELS = 16
"""Smallest object (in pixels) that placement, insertion plans and training crops take by default."""

_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # with their opposites: the 8-neighbourhood


@dataclass(frozen=True, eq=False)
class ObjectComponent:
    """One 8-connected component of `class_index` in a label map of `image_size` (H, W).

    `index` is its rank among all components of that class in the map, in raster order of their first pixel
    (before any size filter), so it names the component whatever `min_pixels` a caller used. `shape` is the
    boolean crop of its bounding box whose top-left pixel is (`top`, `left`).
    """

    class_index: int
    index: int
    top: int
    left: int
    shape: np.ndarray
    image_size: tuple[int, int]

    @property
    def height(self) -> int:
        return int(self.shape.shape[0])

    @property
    def width(self) -> int:
        return int(self.shape.shape[1])

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(top, left, bottom + 1, right + 1)."""
        return self.top, self.left, self.top + self.height, self.left + self.width

    @property
    def pixels(self) -> int:
        return int(self.shape.sum())

    @property
    def bottom(self) -> int:
        """The image row of its lowest pixel."""
        return self.top + self.height - 1

    @property
    def centre_col(self) -> float:
        """The mean image column of its pixels."""
        return self.left + float(np.nonzero(self.shape)[1].mean())

    @property
    def row(self) -> float:
        """Its bottom row, normalised: (bottom + 0.5) / H."""
        return normalised_row(self.bottom, self.image_size[0])

    def crop(self, image: np.ndarray, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, shape): `image` (the map's own image, H x W x C) and the object's shape over its bounding box
        grown by `margin` pixels on each side, clipped to the image; the shape is False in the margin."""
        h, w = self.image_size
        if image.shape[:2] != (h, w):
            raise ValueError(f"image is {image.shape[:2]}, the object's map is {(h, w)}")
        y0, x0 = max(self.top - margin, 0), max(self.left - margin, 0)
        y1, x1 = min(self.top + self.height + margin, h), min(self.left + self.width + margin, w)
        shape = np.zeros((y1 - y0, x1 - x0), bool)
        shape[self.top - y0 : self.top - y0 + self.height, self.left - x0 : self.left - x0 + self.width] = self.shape
        return image[y0:y1, x0:x1].copy(), shape


def normalised_row(row: int, height: int) -> float:
    """The normalised position (row + 0.5) / height of image row `row`."""
    return (row + 0.5) / height


def _label(mask: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of equal values of `mask` among the pixels where `keep` holds.

    Returns (labels, n): labels is int64 H x W, -1 outside `keep`, else 0..n-1 in raster order of each
    component's first pixel. Union-find with min-hooking and pointer jumping, vectorised over pixel pairs.
    """
    h, w = mask.shape
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    us, vs = [], []
    for dy, dx in _NEIGHBOURS:
        a = (slice(0, h - dy), slice(max(-dx, 0), w - max(dx, 0)))
        b = (slice(dy, h), slice(max(dx, 0), w - max(-dx, 0)))
        same = keep[a] & keep[b] & (mask[a] == mask[b])
        us.append(idx[a][same])
        vs.append(idx[b][same])
    u, v = np.concatenate(us), np.concatenate(vs)
    parent = np.arange(h * w, dtype=np.int64)
    while True:
        ru, rv = parent[u], parent[v]
        apart = ru != rv
        if not apart.any():
            break
        u, v, ru, rv = u[apart], v[apart], ru[apart], rv[apart]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    labels = np.full(h * w, -1, np.int64)
    kept = keep.ravel()
    roots, labels[kept] = np.unique(parent[kept], return_inverse=True)
    return labels.reshape(h, w), len(roots)


def all_components(mask: np.ndarray, keep: np.ndarray) -> list[ObjectComponent]:
    """Every component of `_label(mask, keep)`, each with its class and its index among its class's components."""
    labels, n = _label(mask, keep)
    ys, xs = np.nonzero(labels >= 0)
    comp = labels[ys, xs]
    order = np.argsort(comp, kind="stable")
    ys, xs, comp = ys[order], xs[order], comp[order]
    starts = np.searchsorted(comp, np.arange(n + 1))
    seen: dict[int, int] = {}
    out = []
    for k in range(n):
        cy, cx = ys[starts[k] : starts[k + 1]], xs[starts[k] : starts[k + 1]]
        top, left = int(cy.min()), int(cx.min())
        shape = np.zeros((int(cy.max()) - top + 1, int(cx.max()) - left + 1), bool)
        shape[cy - top, cx - left] = True
        cls = int(mask[cy[0], cx[0]])
        out.append(ObjectComponent(cls, seen.get(cls, 0), top, left, shape, (int(mask.shape[0]), int(mask.shape[1]))))
        seen[cls] = seen.get(cls, 0) + 1
    return out


def check_label_map(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a label map must be a non-empty H x W array, got shape {mask.shape}")
    return mask


def find_objects(mask: np.ndarray, class_index: int, min_pixels: int = 1) -> list[ObjectComponent]:
    """The 8-connected components of `class_index` in `mask` (H x W) with at least `min_pixels` pixels, in raster
    order of their first pixel."""
    mask = check_label_map(mask)
    found = all_components(mask, mask == class_index)
    return [o for o in found if o.pixels >= min_pixels]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one pixel towards its 8 neighbours."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    out[:, 1:] |= grown[:, :-1]
    out[:, :-1] |= grown[:, 1:]
    return out


def feather_alpha(shape: np.ndarray, band: int) -> np.ndarray:
    """float32 alpha of `shape`'s size: 1 where `shape` holds, 1 - d / (band + 1) at chessboard distance
    d = 1..band from it, 0 elsewhere."""
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    shape = np.asarray(shape, bool)
    alpha = shape.astype(np.float32)
    reached = shape
    for d in range(1, band + 1):
        grown = _dilate(reached)
        alpha[grown & ~reached] = 1.0 - d / (band + 1)
        reached = grown
    return alpha
