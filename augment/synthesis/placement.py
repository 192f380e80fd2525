"""Placement from the data: objects of a class, where such objects stand in real label maps, and where to put one.

An *object* is an 8-connected component of one class in a label map (`find_objects`). A *contact pixel* of an
object is a pixel of its bottom boundary (the pixel below it is not the object's) within its lowest `foot`
fraction of rows (`contact_pixels`); the pixel below a contact pixel is what the object stands on.

`fit_context` learns, per class, from training label maps:
    ground   the share of each class under the contact pixels of its objects (each object one vote, split over
             the classes under it; ignore pixels and the image's bottom edge are not counted);
    rows     a histogram over normalised image rows ((row + 0.5) / H) of its objects' bottom rows;
    horizon  one normalised row for the whole dataset: objects shrink towards the horizon, so the height of an
             object of class c is modelled as a_c * (bottom row - horizon), with a slope per class and one shared
             horizon, fitted by least squares (each class weighted by its own noise level, `fit_horizon`) over a
             grid of rows in [0, 1]. Classes whose objects' heights do not grow with their rows (sky, ...) are left
             out of the fit; with no class left, horizon is None. The model assumes one camera height and pitch
             for the dataset (as in a driving sequence); where they vary a lot between images, it is rougher.
Objects that touch the bottom edge of their map count for neither ground nor rows, and those touching the top or
bottom edge not for the horizon (their true bottom or height is unknown).

`place` puts an object into a host label map: at a bottom row drawn from its class's row histogram, among rows
where a ground class of the class lies directly below, scaled by perspective, optionally flipped, at a column where
its contact pixels land on ground. It is deterministic given the numpy Generator. The result, a `Placement`, is
JSON-serialisable, as is the `PlacementContext`. Nothing here knows any dataset's class names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from augment.data.codec import resize_mask
from augment.core.errors import AugmentError
from augment.data.objects import DEFAULT_MIN_PIXELS, ObjectComponent, all_components, check_label_map, normalised_row

def contact_pixels(shape: np.ndarray, foot: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) in `shape` of its contact pixels: True pixels whose pixel below is False or outside, in the
    lowest max(1, ceil(foot * H)) rows of the shape."""
    below = np.zeros_like(shape)
    below[:-1] = shape[1:]
    edge = shape & ~below
    edge[: shape.shape[0] - max(1, math.ceil(foot * shape.shape[0]))] = False
    return np.nonzero(edge)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size (at least 1 x 1) of a `height` x `width` object scaled by `scale`."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def scale_shape(shape: np.ndarray, scale: float, flip: bool = False) -> np.ndarray:
    """`shape` (boolean) resized by `scale` to `scaled_size` (nearest), then flipped left-right if `flip`."""
    size = scaled_size(shape.shape[0], shape.shape[1], scale)
    out = resize_mask(np.ascontiguousarray(shape, np.uint8), size) > 0
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def _fail(what: str) -> AugmentError:
    return AugmentError(f"placement context: {what}")


def _table(value: Any, rows: int, cols: int, what: str) -> list[list[float]]:
    """`value` checked to be `rows` lists of `cols` non-negative numbers."""
    if not isinstance(value, list) or len(value) != rows:
        raise _fail(f"{what} must be a list of {rows} lists")
    out = []
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != cols:
            raise _fail(f"{what}[{i}] must be a list of {cols} numbers")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in row):
            raise _fail(f"{what}[{i}] must hold non-negative numbers")
        out.append([float(x) for x in row])
    return out


@dataclass
class PlacementContext:
    """What `fit_context` learnt (see the module docstring); `ground[c]` and `rows[c]` each sum to 1, or are all
    zero for a class with no counted object; `objects[c]` is the number of objects of class c that were counted."""

    num_classes: int
    ignore_index: int
    horizon: float | None
    ground: list[list[float]]
    rows: list[list[float]]
    objects: list[int]
    min_pixels: int
    foot: float

    def ground_classes(self, class_index: int, min_share: float = 0.1) -> list[int]:
        """The classes under at least `min_share` of the objects of `class_index`."""
        return [g for g, share in enumerate(self.ground[class_index]) if share > 0 and share >= min_share]

    def row_density(self, class_index: int, rows: np.ndarray) -> np.ndarray:
        """The histogram weight of `class_index`'s bottom rows at each normalised row in `rows`."""
        hist = np.asarray(self.rows[class_index], np.float64)
        bins = np.clip((np.asarray(rows, np.float64) * len(hist)).astype(np.int64), 0, len(hist) - 1)
        return hist[bins]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> PlacementContext:
        """The context written by `to_dict`; anything malformed raises AugmentError naming the key."""
        if not isinstance(d, dict):
            raise _fail("must be a JSON object")
        missing = sorted(set(cls.__dataclass_fields__) - set(d))
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if missing or unknown:
            raise _fail(f"missing keys {missing}" if missing else f"unknown keys {unknown}")
        n = d["num_classes"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _fail("num_classes must be a positive integer")
        if not isinstance(d["ignore_index"], int) or not isinstance(d["min_pixels"], int):
            raise _fail("ignore_index and min_pixels must be integers")
        horizon = d["horizon"]
        if horizon is not None and (not isinstance(horizon, (int, float)) or not 0 <= horizon <= 1):
            raise _fail("horizon must be null or a number in [0, 1]")
        if not isinstance(d["foot"], (int, float)) or not 0 < d["foot"] <= 1:
            raise _fail("foot must be a number in (0, 1]")
        rows = d["rows"]
        bins = len(rows[0]) if isinstance(rows, list) and rows and isinstance(rows[0], list) else 0
        if bins < 1:
            raise _fail("rows must be a list of non-empty histograms")
        objects = d["objects"]
        counts_ok = isinstance(objects, list) and all(isinstance(x, int) and x >= 0 for x in objects)
        if not counts_ok or len(objects) != n:
            raise _fail(f"objects must be a list of {n} non-negative integers")
        return cls(n, d["ignore_index"], None if horizon is None else float(horizon),
                   _table(d["ground"], n, n, "ground"), _table(rows, n, bins, "rows"), list(objects),
                   d["min_pixels"], float(d["foot"]))


def _normalised(counts: np.ndarray) -> list[list[float]]:
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0).tolist()


def _contact_classes(obj: ObjectComponent, mask: np.ndarray, foot: float) -> np.ndarray:
    """The labels of `mask` directly under `obj`'s contact pixels that lie inside the map."""
    ys, xs = contact_pixels(obj.shape, foot)
    ys, xs = ys + obj.top + 1, xs + obj.left
    inside = ys < mask.shape[0]
    return mask[ys[inside], xs[inside]]


def fit_horizon(
    classes: np.ndarray, rows: np.ndarray, heights: np.ndarray, *, min_objects: int = 5,
    min_correlation: float = 0.3, grid: int = 1001,
) -> float | None:
    """The shared horizon of the model height = a_c * (row - horizon), rows and heights normalised.

    Only classes with at least `min_objects` objects whose height/row correlation is at least `min_correlation`
    take part. Each class's squared error is divided by its own least error over the grid (its noise level, so a
    class that fits the model loosely weighs less) and multiplied by its number of objects. The horizon is the
    best of `grid` evenly spaced rows in [0, 1] (the lowest on ties); None when no class takes part.
    """
    candidates = np.linspace(0.0, 1.0, grid)
    loss = np.zeros(grid)
    used = 0
    for c in np.unique(classes):
        r, hgt = rows[classes == c], heights[classes == c]
        if len(r) < min_objects or r.std() == 0 or hgt.std() == 0 or np.corrcoef(r, hgt)[0, 1] < min_correlation:
            continue
        d = r[None, :] - candidates[:, None]
        sxx = (d * d).sum(axis=1)
        sxy = (d * hgt[None, :]).sum(axis=1)
        syy = float((hgt * hgt).sum())
        sse = syy - np.divide(sxy * sxy, sxx, out=np.zeros(grid), where=sxx > 0)
        loss += len(r) * sse / (max(float(sse.min()), 0.0) + 1e-9 * syy)
        used += 1
    return float(candidates[int(np.argmin(loss))]) if used else None


def fit_context(
    masks: Iterable[np.ndarray], num_classes: int, ignore_index: int, *, min_pixels: int = DEFAULT_MIN_PIXELS,
    row_bins: int = 20, foot: float = 0.1, min_objects: int = 5, min_correlation: float = 0.3,
) -> PlacementContext:
    """Learn a `PlacementContext` from label maps (H x W, labels < num_classes or `ignore_index`) as described in
    the module docstring, counting objects of at least `min_pixels` pixels; `min_objects` and `min_correlation`
    go to `fit_horizon`. A label outside the classes raises ValueError naming the map's position in `masks`."""
    ground = np.zeros((num_classes, num_classes))
    row_counts = np.zeros((num_classes, row_bins))
    objects = np.zeros(num_classes, np.int64)
    fit: list[tuple[int, float, float]] = []
    for i, mask in enumerate(masks):
        mask = check_label_map(mask)
        keep = mask != ignore_index
        if keep.any() and int(mask[keep].max()) >= num_classes:
            raise ValueError(f"label map {i} has label {int(mask[keep].max())}, outside 0..{num_classes - 1}")
        h = mask.shape[0]
        for obj in all_components(mask, keep):
            if obj.pixels < min_pixels or obj.bottom == h - 1:
                continue
            c = obj.class_index
            objects[c] += 1
            row_counts[c, min(int(obj.row * row_bins), row_bins - 1)] += 1
            under = _contact_classes(obj, mask, foot)
            under = under[under != ignore_index]
            if len(under):
                ground[c] += np.bincount(under, minlength=num_classes)[:num_classes] / len(under)
            if obj.top > 0:
                fit.append((c, obj.row, obj.height / h))
    data = np.asarray(fit, np.float64).reshape(-1, 3)
    horizon = fit_horizon(data[:, 0].astype(np.int64), data[:, 1], data[:, 2], min_objects=min_objects,
                          min_correlation=min_correlation)
    return PlacementContext(num_classes, ignore_index, horizon, _normalised(ground), _normalised(row_counts),
                            objects.tolist(), min_pixels, foot)


@dataclass(frozen=True)
class Placement:
    """Object `component` of class `class_index` from map `source_id`, put into map `host_id`: its shape, scaled
    by `scale` (to `scaled_size`, nearest) and flipped left-right if `flip`, has the top-left pixel of its bounding
    box at (`top`, `left`) of the host; that may lie outside the host where the object is clipped."""

    host_id: str
    source_id: str
    component: int
    class_index: int
    top: int
    left: int
    scale: float
    flip: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Placement:
        """The placement written by `to_dict`; anything malformed raises AugmentError naming the key."""
        kinds = {"host_id": str, "source_id": str, "component": int, "class_index": int, "top": int, "left": int,
                 "scale": (int, float), "flip": bool}
        if not isinstance(d, dict) or set(d) != set(kinds):
            raise AugmentError(f"placement: must be an object with keys {sorted(kinds)}")
        for key, kind in kinds.items():
            if not isinstance(d[key], kind) or (kind is not bool and isinstance(d[key], bool)):
                raise AugmentError(f"placement: {key} must be of type {getattr(kind, '__name__', 'number')}")
        if not d["scale"] > 0:
            raise AugmentError("placement: scale must be positive")
        return cls(**{**d, "scale": float(d["scale"])})


def perspective_scale(
    source_row: float, host_row: float, horizon: float | None, size_ratio: float = 1.0,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> float | None:
    """(host_row - horizon) / (source_row - horizon) times `size_ratio` (host height / source height), clipped to
    `scale_range`; None when the two rows are not strictly on the same side of the horizon. Rows are normalised;
    with no horizon the scale is `size_ratio` (clipped)."""
    lo, hi = scale_range
    if horizon is None:
        return float(min(max(size_ratio, lo), hi))
    if (source_row - horizon) * (host_row - horizon) <= 0:
        return None
    return float(min(max((host_row - horizon) / (source_row - horizon) * size_ratio, lo), hi))


def _valid_lefts(shape: np.ndarray, bottom: int, on_ground: np.ndarray, foot: float, min_contact: float) -> np.ndarray:
    """Left columns at which `shape`, with its lowest row on host row `bottom`, has at least `min_contact` of its
    contact pixels over ground (`on_ground`, H x W) and all of them inside the host; none for an empty shape."""
    h, w = on_ground.shape
    ys, xs = contact_pixels(shape, foot)
    if len(ys) == 0:
        return np.zeros(0, np.int64)
    below = bottom - (shape.shape[0] - 1) + ys + 1
    if below.min() < 0 or below.max() >= h:
        return np.zeros(0, np.int64)
    lefts = np.arange(-int(xs.min()), w - int(xs.max()))
    share = on_ground[below[:, None], lefts[None, :] + xs[:, None]].mean(axis=0)
    return lefts[share >= min_contact]


def place(
    obj: ObjectComponent, host_mask: np.ndarray, context: PlacementContext, rng: np.random.Generator, *,
    source_id: str = "", host_id: str = "", min_ground: float = 0.1, min_contact: float = 1.0,
    scale_range: tuple[float, float] = (0.5, 2.0), flip_prob: float = 0.5, tries: int = 8,
    hole_margin: int | None = None,
) -> Placement | None:
    """A placement of `obj` in `host_mask`, or None when the context gives no spot for it there.

    The ground classes are `context.ground_classes(obj.class_index, min_ground)`. Candidate bottom rows are host
    rows with a ground pixel directly below, on the same side of the horizon as the object's own bottom row,
    weighted by the class's row histogram; up to `tries` of them are drawn (without replacement). For each, the
    object is scaled by `perspective_scale` and placed at a column, drawn uniformly, where at least `min_contact`
    of its contact pixels have ground directly below; the first row with such a column is taken. The object is
    flipped with probability `flip_prob`. The same arguments and generator state give the same result.
    With `hole_margin` (mode insert: the hole dilation) a scale whose object, grown by the margin on every side,
    would not fit a square of the host's shorter side is skipped: the generator paints a square window of the host.
    """
    host_mask = check_label_map(host_mask)
    c = obj.class_index
    grounds = context.ground_classes(c, min_ground)
    flip = bool(rng.random() < flip_prob)
    if not grounds:
        return None
    h, w = host_mask.shape
    on_ground = np.isin(host_mask, grounds)
    bottoms = np.nonzero(on_ground[1:].any(axis=1))[0]
    rows = normalised_row(bottoms, h)
    weights = context.row_density(c, rows)
    if context.horizon is not None:
        weights = weights * ((rows - context.horizon) * (obj.row - context.horizon) > 0)
    if not weights.any():
        return None
    picks = rng.choice(len(bottoms), size=min(tries, int(np.count_nonzero(weights))), replace=False,
                       p=weights / weights.sum())
    for k in picks:
        scale = perspective_scale(obj.row, float(rows[k]), context.horizon, h / obj.image_size[0], scale_range)
        if scale is None:
            continue
        shape = scale_shape(obj.shape, scale, flip)
        if hole_margin is not None and max(shape.shape) + 2 * hole_margin > min(h, w):
            continue
        lefts = _valid_lefts(shape, int(bottoms[k]), on_ground, context.foot, min_contact)
        if len(lefts):
            left = int(lefts[rng.integers(len(lefts))])
            top = int(bottoms[k]) - (shape.shape[0] - 1)
            return Placement(host_id, source_id, obj.index, c, top, left, scale, flip)
    return None
