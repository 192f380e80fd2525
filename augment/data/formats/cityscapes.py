"""Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/*_gtFine_labelIds.png`.

Label ids map to the 19 train ids exactly as cityscapesScripts' `labels.py` does; every other id is ignored (255).
The row id's stem is the shared prefix, e.g. `train/aachen_000000_000019`.
"""

from __future__ import annotations

from pathlib import Path

from augment.data.formats.base import Discovery, LabelSet, files_by_stem, make_lut, order_splits, pair_by_key
from augment.core.errors import DatasetError

IGNORE_INDEX = 255
IMAGE_SUFFIX = "_leftImg8bit"
MASK_SUFFIX = "_gtFine_labelIds"

# (name, label id, train id, colour) of cityscapesScripts' labels.py; train id 255 is ignored in training.
LABELS: list[tuple[str, int, int, tuple[int, int, int]]] = [
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]
_TRAIN = sorted((train_id, name, colour) for name, _, train_id, colour in LABELS if train_id != IGNORE_INDEX)
CLASSES = [name for _, name, _ in _TRAIN]
PALETTE = [list(colour) for _, _, colour in _TRAIN]
# labels.py's 'license plate' has id -1, which an 8-bit label image can only hold as 255.
ID_TO_TRAIN_ID = {label_id: train_id for _, label_id, train_id, _ in LABELS} | {255: IGNORE_INDEX}


def label_set(root: Path, classes: str | None = None) -> LabelSet:
    return LabelSet(CLASSES, PALETTE, IGNORE_INDEX, make_lut(ID_TO_TRAIN_ID))


def _roots(root: Path) -> tuple[Path, Path]:
    images, masks = root / "leftImg8bit", root / "gtFine"
    if not images.is_dir() or not masks.is_dir():
        raise DatasetError(f"{root} does not look like Cityscapes: it needs leftImg8bit/ and gtFine/ folders")
    return images, masks


def _subdirs(folder: Path) -> set[str]:
    return {d.name for d in folder.iterdir() if d.is_dir()} if folder.is_dir() else set()


def find_splits(root: Path) -> list[str]:
    images, masks = _roots(root)
    return order_splits(_subdirs(images) | _subdirs(masks))


def discover(root: Path, split: str) -> Discovery:
    images_root, masks_root = (r / split for r in _roots(root))
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    duplicates: list[tuple[Path, str]] = []
    for city in sorted(_subdirs(images_root) | _subdirs(masks_root)):
        for where, strip, into in ((images_root, IMAGE_SUFFIX, images), (masks_root, MASK_SUFFIX, masks)):
            if (where / city).is_dir():
                found, dups = files_by_stem(where / city, strip)
                duplicates += dups
                for key, path in found.items():
                    if key in into:
                        duplicates.append((path, f"same name as {into[key]}"))
                    else:
                        into[key] = path
    return pair_by_key(split, images, masks, duplicates)
