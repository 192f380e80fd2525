"""Drawing label maps and images into PNG sheets, written to local paths or URIs.

Contact sheets (`render_sheet`, `contact_sheet`): one PNG grid per class, a row per sample
(label | synthetic | prediction) under a caption.

Layout (all sizes in pixels; panels are scaled up, nearest, to at least MIN_PANEL on their short side):
    a header strip of CAPTION_H naming the columns, then per sample a caption strip of CAPTION_H and the three
    panels side by side, each row framed by a BORDER-wide frame, green for accepted and red for rejected.
    width  = 3 * panel_w + 4 * BORDER
    height = CAPTION_H + n * (CAPTION_H + panel_h + 2 * BORDER)
Sample sheets of a generator (`render_sample_sheet`): a row per label map, `label | image 1 | image 2 ...`,
SHEET_GAP apart. Pair sheets (`render_pairs`): `image | label map` tiles.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageDraw

from augment.data import fs as afs
from augment.data.codec import resize_mask

MIN_PANEL = 96
CAPTION_H = 14
BORDER = 3
ACCEPTED_RGB = (40, 170, 60)
REJECTED_RGB = (210, 40, 40)
BACKGROUND_RGB = (255, 255, 255)
IGNORE_RGB = (0, 0, 0)
SHEET_GAP = 2
SAMPLE_SHEET_COLUMNS = ("label", "EMA, noise 1", "EMA, noise 2")

SheetRow = tuple[np.ndarray, np.ndarray, np.ndarray, bool, str]


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """H x W class indices -> H x W x 3 uint8 colours; labels without a palette entry (ignore) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_RGB
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return lut[np.asarray(mask, dtype=np.uint8)]


def panel_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) a height x width sample is drawn at: scaled by an integer factor to reach MIN_PANEL."""
    factor = max(1, -(-MIN_PANEL // min(height, width)))
    return height * factor, width * factor


def render_sheet(rows: Sequence[SheetRow], palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The sheet as an H x W x 3 uint8 array (layout in the module docstring)."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    ph, pw = panel_size(*rows[0][0].shape[:2])
    row_h = CAPTION_H + ph + 2 * BORDER
    width = 3 * pw + 4 * BORDER
    sheet = Image.new("RGB", (width, CAPTION_H + len(rows) * row_h), BACKGROUND_RGB)
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(("label", "synthetic", "prediction")):
        draw.text((BORDER + i * (pw + BORDER) + 2, 1), title, fill=(0, 0, 0))
    for r, (mask, image, pred, accepted, caption) in enumerate(rows):
        top = CAPTION_H + r * row_h
        colour = ACCEPTED_RGB if accepted else REJECTED_RGB
        draw.rectangle([0, top, width - 1, top + row_h - 1], fill=colour)
        draw.rectangle([BORDER, top, width - 1 - BORDER, top + CAPTION_H - 1], fill=BACKGROUND_RGB)
        draw.text((BORDER + 2, top + 1), f"{'accepted' if accepted else 'REJECTED'}  {caption}", fill=colour)
        panels = (
            colorize(resize_mask(np.asarray(mask, np.uint8), (ph, pw)), palette),
            np.asarray(Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").resize((pw, ph), Image.NEAREST)),
            colorize(resize_mask(np.asarray(pred, np.uint8), (ph, pw)), palette),
        )
        for i, panel in enumerate(panels):
            sheet.paste(Image.fromarray(panel), (BORDER + i * (pw + BORDER), top + CAPTION_H + BORDER))
    return np.asarray(sheet)


def render_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, str]], palette: Sequence[Sequence[int]], columns: int = 3
) -> np.ndarray:
    """A grid of `image | colourised mask` tiles, each under its caption, `columns` tiles per row (H x W x 3 uint8).

    Every tile is drawn at the first sample's panel size: width = columns * (2 * pw + 3 * BORDER), height =
    CAPTION_H + rows * (CAPTION_H + ph + 2 * BORDER).
    """
    if not pairs:
        raise ValueError("a pair sheet needs at least one sample")
    ph, pw = panel_size(*np.asarray(pairs[0][1]).shape[:2])
    tile_w, tile_h = 2 * pw + 3 * BORDER, CAPTION_H + ph + 2 * BORDER
    columns = max(1, min(columns, len(pairs)))
    rows = -(-len(pairs) // columns)
    sheet = Image.new("RGB", (columns * tile_w, CAPTION_H + rows * tile_h), BACKGROUND_RGB)
    draw = ImageDraw.Draw(sheet)
    draw.text((BORDER + 2, 1), "image | label map (black: ignore)", fill=(0, 0, 0))
    for k, (image, mask, caption) in enumerate(pairs):
        left, top = (k % columns) * tile_w, CAPTION_H + (k // columns) * tile_h
        draw.text((left + BORDER + 2, top + 1), caption, fill=(0, 0, 0))
        panels = (
            np.asarray(Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").resize((pw, ph), Image.NEAREST)),
            colorize(resize_mask(np.asarray(mask, np.uint8), (ph, pw)), palette),
        )
        for i, panel in enumerate(panels):
            sheet.paste(Image.fromarray(panel), (left + BORDER + i * (pw + BORDER), top + CAPTION_H + BORDER))
    return np.asarray(sheet)


def contact_sheet(rows: Sequence[SheetRow], palette: Sequence[Sequence[int]], path: str) -> None:
    """Write the sheet of `rows` (mask, image, prediction, accepted, caption) as a PNG to a local path or URI."""
    save_png(path, render_sheet(rows, palette))


def render_sample_sheet(
    masks: np.ndarray, columns: Sequence[np.ndarray], palette: Sequence[Sequence[int]],
    titles: Sequence[str] = SAMPLE_SHEET_COLUMNS,
) -> np.ndarray:
    """H x W x 3 sheet: a header of `titles`, then per label map a row `label | column 1 | column 2 ...`.

    `masks` B x h x w, each column B x h x w x 3 uint8. Panels are scaled up (nearest) as in `panel_size`:
    with n = 1 + len(columns) panels of ph x pw, width = n * pw + (n + 1) * SHEET_GAP and
    height = CAPTION_H + B * ph + (B + 1) * SHEET_GAP.
    """
    b, h, w = masks.shape
    ph, pw = panel_size(h, w)
    n = 1 + len(columns)
    sheet = Image.new("RGB", (n * pw + (n + 1) * SHEET_GAP, CAPTION_H + b * ph + (b + 1) * SHEET_GAP), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(titles[:n]):
        draw.text((SHEET_GAP + i * (pw + SHEET_GAP) + 2, 1), title, fill=(0, 0, 0))
    for r in range(b):
        panels = [colorize(masks[r], palette)] + [np.ascontiguousarray(c[r], dtype=np.uint8) for c in columns]
        top = CAPTION_H + SHEET_GAP + r * (ph + SHEET_GAP)
        for i, panel in enumerate(panels):
            tile = Image.fromarray(panel, "RGB").resize((pw, ph), Image.NEAREST)
            sheet.paste(tile, (SHEET_GAP + i * (pw + SHEET_GAP), top))
    return np.asarray(sheet)


def png_bytes(image: np.ndarray) -> bytes:
    """An H x W x 3 (or H x W) uint8 array encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str, image: np.ndarray) -> None:
    """Write an H x W x 3 uint8 array as a PNG to a local path or URI, atomically (parent folders created)."""
    filesystem, target = afs.resolve(path)
    write_png(filesystem, target, image)


def write_png(filesystem: pafs.FileSystem, target: str, image: np.ndarray) -> None:
    """`save_png` on an already resolved filesystem and path."""
    parent = target.rsplit("/", 1)[0]
    if parent:
        filesystem.create_dir(parent, recursive=True)
    afs.write_bytes_atomic(filesystem, target, png_bytes(image))
