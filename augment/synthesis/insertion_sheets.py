"""Contact sheets for insertions: a row per inserted object, host | object | result | prediction.

Layout (sizes in pixels; `augment.data.drawing`' constants, colours and `colorize`; panels scaled up, nearest,
to at least MIN_PANEL on their short side by `panel_size` of the first row's host):
    a header strip of CAPTION_H naming the columns, then per insertion a caption strip of CAPTION_H and four panels
    side by side, each row framed BORDER wide, green for accepted and red for rejected:
        host        the real host image before the insertion;
        object      the source crop: the object's real pixels with its source image dimmed around it, fitted
                    into the panel keeping its aspect ratio (nearest), centred on the background;
        result      the written image, with the object's box outlined just outside it (BOX_RGB) so it can be found;
        close-up    the written image around the object's box (half the box's longer side, at least the band, on
                    every side, clipped), undimmed, fitted into the panel as the object panel is: the inserted
                    object large enough to be judged beside its source (at about half the object panel's scale,
                    since it shows more of its surroundings);
        prediction  the segmenter's prediction on the result, colourised (ignore black).
    width  = 5 * panel_w + 6 * BORDER
    height = CAPTION_H + n * (CAPTION_H + panel_h + 2 * BORDER)
`render_panel_rows` draws any number of such columns; `render_insertion_sheet` is it for the five above;
`insertion_row` makes a row from a planned insertion and its images, `insertion_sheets` one sheet per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from augment.data.drawing import (
    ACCEPTED_RGB, BACKGROUND_RGB, BORDER, CAPTION_H, REJECTED_RGB, colorize, panel_size,
)
from augment.synthesis.composite import placed_region
from augment.synthesis.composite import DEFAULT_BAND
from augment.synthesis.fill import source_object
from augment.synthesis.insert_plan import PlannedInsertion

COLUMNS = ("host", "object", "result", "close-up", "prediction")
BOX_RGB = (255, 230, 0)
DIM = 0.35
"""The brightness left to the source pixels around an object in its panel."""


@dataclass
class InsertionRow:
    """One inserted object: the host image and the result (H x W x 3 uint8), the object's source crop
    (`object_image` h x w x 3 and `object_shape` h x w bool, as `ObjectComponent.crop` gives), the segmenter's
    prediction (H x W class indices), whether the filter accepted it, a caption, and the object's box in the
    result (top, left, bottom, right; exclusive, clipped when drawn) or None."""

    host: np.ndarray
    object_image: np.ndarray
    object_shape: np.ndarray
    result: np.ndarray
    prediction: np.ndarray
    accepted: bool
    caption: str
    box: tuple[int, int, int, int] | None = None


def _scaled(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` (H x W x 3 uint8) resized to `size` (H, W), nearest."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").resize(size[::-1], Image.NEAREST))


def object_panel(image: np.ndarray, shape: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The object panel of `size` (H, W): `image` dimmed by DIM where `shape` is False, fitted into the panel
    keeping its aspect ratio (at least 1 x 1), centred on BACKGROUND_RGB."""
    if image.shape[:2] != shape.shape:
        raise ValueError(f"object image {image.shape[:2]} and shape {shape.shape} differ")
    shown = np.where(shape[..., None], image, np.rint(image * DIM)).astype(np.uint8)
    ph, pw = size
    factor = min(ph / shape.shape[0], pw / shape.shape[1])
    h, w = max(1, min(ph, int(shape.shape[0] * factor))), max(1, min(pw, int(shape.shape[1] * factor)))
    panel = np.empty((ph, pw, 3), np.uint8)
    panel[:] = BACKGROUND_RGB
    top, left = (ph - h) // 2, (pw - w) // 2
    panel[top : top + h, left : left + w] = _scaled(shown, (h, w))
    return panel


def closeup(image: np.ndarray, box: tuple[int, int, int, int] | None, band: int = DEFAULT_BAND) -> np.ndarray:
    """The part of `image` (H x W x 3) around `box` (top, left, bottom, right; exclusive) that the close-up panel
    shows (module docstring); the whole image for None."""
    if box is None:
        return image
    h, w = image.shape[:2]
    margin = max(band, max(box[2] - box[0], box[3] - box[1]) // 2)
    top, left = max(box[0] - margin, 0), max(box[1] - margin, 0)
    bottom, right = min(box[2] + margin, h), min(box[3] + margin, w)
    return image[top:bottom, left:right] if bottom > top and right > left else image


def render_panel_rows(
    titles: Sequence[str], rows: Sequence[tuple[Sequence[np.ndarray], bool, str]],
) -> np.ndarray:
    """A sheet (H x W x 3 uint8) of rows of equal-sized RGB panels (`rows`: (panels, accepted, caption)), one
    column per title, framed and captioned as the module docstring says."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    ph, pw = rows[0][0][0].shape[:2]
    if any(len(p) != len(titles) or any(x.shape != (ph, pw, 3) for x in p) for p, _, _ in rows):
        raise ValueError(f"every row needs {len(titles)} panels of {ph}x{pw}x3")
    row_h = CAPTION_H + ph + 2 * BORDER
    width = len(titles) * (pw + BORDER) + BORDER
    sheet = Image.new("RGB", (width, CAPTION_H + len(rows) * row_h), BACKGROUND_RGB)
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(titles):
        draw.text((BORDER + i * (pw + BORDER) + 2, 1), title, fill=(0, 0, 0))
    for r, (panels, accepted, caption) in enumerate(rows):
        top = CAPTION_H + r * row_h
        colour = ACCEPTED_RGB if accepted else REJECTED_RGB
        draw.rectangle([0, top, width - 1, top + row_h - 1], fill=colour)
        draw.rectangle([BORDER, top, width - 1 - BORDER, top + CAPTION_H - 1], fill=BACKGROUND_RGB)
        draw.text((BORDER + 2, top + 1), f"{'accepted' if accepted else 'REJECTED'}  {caption}", fill=colour)
        for i, panel in enumerate(panels):
            sheet.paste(Image.fromarray(panel), (BORDER + i * (pw + BORDER), top + CAPTION_H + BORDER))
    return np.asarray(sheet)


def _outlined(image: np.ndarray, box: tuple[int, int, int, int] | None, factor_y: float,
              factor_x: float) -> np.ndarray:
    """`image` with `box` (in the unscaled image's pixels) outlined one pixel wide just outside it (one unscaled
    pixel around it), clipped; unchanged for None."""
    if box is None:
        return image
    h, w = image.shape[:2]
    top, left = max(int((box[0] - 1) * factor_y), 0), max(int((box[1] - 1) * factor_x), 0)
    bottom, right = min(int((box[2] + 1) * factor_y), h) - 1, min(int((box[3] + 1) * factor_x), w) - 1
    if bottom < top or right < left:
        return image
    out = image.copy()
    out[[top, bottom], left : right + 1] = BOX_RGB
    out[top : bottom + 1, [left, right]] = BOX_RGB
    return out


def render_insertion_sheet(rows: Sequence[InsertionRow], palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The sheet of `rows` (layout in the module docstring) as an H x W x 3 uint8 array; every row's host, result
    and prediction must have the first row's size."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    h, w = rows[0].host.shape[:2]
    ph, pw = panel_size(h, w)
    drawn = []
    for row in rows:
        if row.host.shape[:2] != (h, w) or row.result.shape[:2] != (h, w) or row.prediction.shape != (h, w):
            raise ValueError(f"{row.caption}: host, result and prediction must all be {h}x{w}")
        prediction = colorize(np.asarray(row.prediction, np.uint8), palette)
        near = closeup(row.result, row.box)
        panels = (_scaled(row.host, (ph, pw)), object_panel(row.object_image, row.object_shape, (ph, pw)),
                  _outlined(_scaled(row.result, (ph, pw)), row.box, ph / h, pw / w),
                  object_panel(near, np.ones(near.shape[:2], bool), (ph, pw)), _scaled(prediction, (ph, pw)))
        drawn.append((panels, row.accepted, row.caption))
    return render_panel_rows(COLUMNS, drawn)


def insertion_row(
    planned: PlannedInsertion, host_image: np.ndarray, source_image: np.ndarray, source_mask: np.ndarray,
    result: np.ndarray, prediction: np.ndarray, accepted: bool, caption: str | None = None,
    margin: int = DEFAULT_BAND,
) -> InsertionRow:
    """The row of `planned`: its object cropped from the source with `margin` pixels around it, its box the
    placed object's pixels in the host (clipped; None when none lies inside), by default the caption
    "<sample id>  <source id> -> <host id>  x<scale>[ flip]"."""
    obj = source_object(source_mask, planned)
    pixels, shape = obj.crop(source_image, margin)
    placed, _ = placed_region(obj.shape, planned.placement, host_image.shape[:2], 0)
    ys, xs = np.nonzero(placed)
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if len(ys) else None
    p = planned.placement
    if caption is None:
        caption = f"{planned.sample_id}  {p.source_id} -> {p.host_id}  x{p.scale:.2f}{' flip' if p.flip else ''}"
    return InsertionRow(host_image, pixels, shape, result, prediction, accepted, caption, box)


def insertion_sheets(
    planned: Sequence[PlannedInsertion], rows: Sequence[InsertionRow], palette: Sequence[Sequence[int]],
    classes: Sequence[str],
) -> dict[str, np.ndarray]:
    """One sheet per target class (by name, in class order) of the `rows` of `planned` (one row each, in order)."""
    if len(planned) != len(rows):
        raise ValueError(f"{len(planned)} insertions and {len(rows)} rows")
    by_class: dict[int, list[InsertionRow]] = {}
    for p, row in zip(planned, rows):
        by_class.setdefault(p.target_class, []).append(row)
    return {classes[c]: render_insertion_sheet(by_class[c], palette) for c in sorted(by_class)}
