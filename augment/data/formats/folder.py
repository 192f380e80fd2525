"""Plain folders: `images/` and `masks/` paired by file stem, classes named by `classes.json` or `--classes`.

Masks are single-channel images of class indices. The folders are either flat (one split, named by `--split`,
default train) or hold one sub-folder per split (`images/train/`, `masks/train/`, ...).
`classes.json` is a list of names, or {"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255};
without a palette the Pascal VOC colour map is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from augment.data.formats.base import (
    Discovery,
    LabelSet,
    bit_palette,
    files_by_stem,
    identity_labels,
    is_image_file,
    order_splits,
    pair_by_key,
)
from augment.core.errors import DatasetError

CLASSES_FILE = "classes.json"


def _roots(root: Path) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DatasetError(f"{root} does not look like an image/mask folder: it needs images/ and masks/ folders")
    return images, masks


def _split_dirs(folder: Path) -> set[str]:
    return {d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")}


def find_splits(root: Path) -> list[str]:
    """Split sub-folders; empty for a flat layout, where any split name labels the whole folder."""
    images, masks = _roots(root)
    if any(is_image_file(p) for p in images.iterdir()):
        return []
    return order_splits(_split_dirs(images) | _split_dirs(masks))


def discover(root: Path, split: str) -> Discovery:
    images_root, masks_root = _roots(root)
    if find_splits(root):
        images_root, masks_root = images_root / split, masks_root / split
    images, dup_images = files_by_stem(images_root) if images_root.is_dir() else ({}, [])
    masks, dup_masks = files_by_stem(masks_root) if masks_root.is_dir() else ({}, [])
    return pair_by_key(split, images, masks, dup_images + dup_masks)


def _parse_classes(data: Any, source: str) -> LabelSet:
    if isinstance(data, list):
        data = {"classes": data}
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise DatasetError(f"{source}: expected a list of class names or an object with a 'classes' list")
    classes = data["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise DatasetError(f"{source}: 'classes' must be a non-empty list of names")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{source}: class names repeat")
    palette = data.get("palette") or bit_palette(len(classes))
    if len(palette) != len(classes) or not all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette
    ):
        raise DatasetError(f"{source}: 'palette' must hold one [r, g, b] (0-255) per class ({len(classes)})")
    ignore_index = data.get("ignore_index", 255)
    if not isinstance(ignore_index, int):
        raise DatasetError(f"{source}: 'ignore_index' must be an integer")
    try:
        return identity_labels(classes, palette, ignore_index)
    except DatasetError as exc:
        raise DatasetError(f"{source}: {exc}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read classes ({exc})") from None


def label_set(root: Path, classes: str | None = None) -> LabelSet:
    """Classes from `classes` (a JSON file path or comma-separated names), else `root/classes.json`."""
    if classes is not None:
        if Path(classes).is_file():
            return _parse_classes(_read_json(Path(classes)), classes)
        if classes.lower().endswith(".json"):
            raise DatasetError(f"--classes {classes}: no such file")
        names = [c.strip() for c in classes.split(",")]
        if not all(names):
            raise DatasetError(f"--classes {classes!r}: not a file, nor comma-separated class names")
        return _parse_classes(names, "--classes")
    path = root / CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f"{root}: no {CLASSES_FILE}; name the classes there or pass --classes a,b,c")
    return _parse_classes(_read_json(path), str(path))
