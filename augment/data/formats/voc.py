"""Pascal VOC segmentation: `JPEGImages/`, palette PNGs in `SegmentationClass/`, `ImageSets/Segmentation/<split>.txt`.

The root may be the VOC20xx folder itself or a folder above it (such as VOCdevkit). Mask values 0-20 are the 21
classes, 255 (object borders, "void") is ignored. `--split all` takes every list file except `trainval` when
`train` and `val` are both present (it is their union). A list entry naming a file outside its folder (`..`, an
absolute path) is quarantined, naming its line, and never read.
"""

from __future__ import annotations

from pathlib import Path

from augment.data.formats.base import (
    IMAGE_SUFFIXES,
    Discovery,
    LabelSet,
    SourcePair,
    bit_palette,
    escape_record,
    identity_labels,
    inside,
    order_splits,
)
from augment.core.errors import DatasetError

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
PALETTE = bit_palette(len(CLASSES))
IGNORE_INDEX = 255


def label_set(root: Path, classes: str | None = None) -> LabelSet:
    return identity_labels(CLASSES, PALETTE, IGNORE_INDEX)


def locate(root: Path) -> Path:
    """The folder holding JPEGImages/ and SegmentationClass/: `root`, or the one such folder below it."""
    if (root / "JPEGImages").is_dir():
        base = root
    else:
        below = sorted({p.parent for p in list(root.glob("*/JPEGImages")) + list(root.glob("*/*/JPEGImages"))})
        if len(below) != 1:
            raise DatasetError(
                f"{root} does not look like Pascal VOC: no JPEGImages/ folder"
                + (f" (several below it: {', '.join(map(str, below))}; pass one)" if below else "")
            )
        base = below[0]
    for sub in ("SegmentationClass", "ImageSets/Segmentation"):
        if not (base / sub).is_dir():
            raise DatasetError(f"{base} does not look like Pascal VOC segmentation: no {sub}/ folder")
    return base


def find_splits(root: Path) -> list[str]:
    return order_splits(p.stem for p in (locate(root) / "ImageSets" / "Segmentation").glob("*.txt"))


def all_splits(splits: list[str]) -> list[str]:
    if "train" in splits and "val" in splits:
        return [s for s in splits if s != "trainval"]
    return splits


def _image_for(folder: Path, stem: str) -> Path | None:
    for suffix in (".jpg", *IMAGE_SUFFIXES, ".JPG"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def discover(root: Path, split: str) -> Discovery:
    base = locate(root)
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    found = Discovery()
    seen: set[str] = set()
    for lineno, line in enumerate(list_file.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        stem = line.split()[0]
        where = f"{list_file}:{lineno}"
        if not all(inside(base / sub, base / sub / stem) for sub in ("JPEGImages", "SegmentationClass")):
            found.orphans.append(escape_record(where, stem, split))
            continue
        image = _image_for(base / "JPEGImages", stem)
        mask = base / "SegmentationClass" / f"{stem}.png"
        if image is None:
            found.orphans.append({"source": str(base / "JPEGImages" / f"{stem}.jpg"),
                                  "reason": f"image listed in {where} not found", "split": split})
        elif not mask.is_file():
            found.orphans.append({"source": str(image), "reason": "image without a mask", "split": split})
        elif stem in seen:
            found.orphans.append({"source": str(image), "reason": f"listed twice (again at {where})", "split": split})
        else:
            seen.add(stem)
            found.pairs.append(SourcePair(f"{split}/{stem}", split, str(image), str(mask)))
    return found
