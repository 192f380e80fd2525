"""What every source layout reader returns: pairs of image/mask files, orphans to quarantine, and its label set.

A format module exposes three functions:

- `find_splits(root) -> list[str]`: the splits present (raises DatasetError when `root` is not that layout),
- `discover(root, split) -> Discovery`: the image/mask pairs of one split, in a fixed order,
- `label_set(root, classes=None) -> LabelSet`: class names, palette, ignore index and the raw-label mapping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Iterable

import numpy as np

from augment.data.fs import is_within
from augment.core.errors import BadSample, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class SourcePair:
    """One sample of a source dataset: row id `<split>/<stem>`, absolute image and mask paths."""

    id: str
    split: str
    image: str
    mask: str


@dataclass
class Discovery:
    pairs: list[SourcePair] = field(default_factory=list)
    orphans: list[dict[str, str]] = field(default_factory=list)

    def extend(self, other: "Discovery") -> "Discovery":
        self.pairs += other.pairs
        self.orphans += other.orphans
        return self


@dataclass(frozen=True)
class LabelSet:
    """Classes of a format and `lut`, the map from raw mask values to class indices (-1: not a valid label)."""

    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    lut: tuple[int, ...]

    def map(self, raw: np.ndarray, source: str = "") -> np.ndarray:
        """Class indices of a raw mask; BadSample naming the raw values that are no label of this format."""
        lut = np.asarray(self.lut, dtype=np.int16)
        mapped = lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0]).tolist()
            raise BadSample(
                f"label value(s) {bad[:8]} outside the {len(self.classes)} classes (ignore index {self.ignore_index})",
                source,
            )
        return mapped.astype(np.uint8)


def make_lut(mapping: dict[int, int]) -> tuple[int, ...]:
    """A 256-entry lookup table from {raw value: class index}; unlisted values are invalid (-1)."""
    lut = [-1] * 256
    for raw, idx in mapping.items():
        lut[raw] = idx
    return tuple(lut)


def identity_labels(classes: list[str], palette: list[list[int]], ignore_index: int = 255) -> LabelSet:
    """Masks that already hold class indices 0..n-1 and the ignore index."""
    if not 0 <= ignore_index <= 255 or ignore_index < len(classes):
        raise DatasetError(f"ignore index {ignore_index} must be in {len(classes)}..255 (after the class indices)")
    mapping = {i: i for i in range(len(classes))}
    mapping[ignore_index] = ignore_index
    return LabelSet(list(classes), [list(c) for c in palette], ignore_index, make_lut(mapping))


def bit_palette(n: int) -> list[list[int]]:
    """The Pascal VOC colour map: distinct, deterministic colours built from the bits of the index."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append([r, g, b])
    return colours


def order_splits(names: Iterable[str]) -> list[str]:
    """train, val, test first, then the rest alphabetically."""
    names = set(names)
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(names - set(known))


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def inside(root: Path, path: PurePath) -> bool:
    """Whether `path`, with `..` resolved by name (symlinks are the user's layout, not followed), is under `root`."""
    return is_within(os.path.normpath(path), os.path.normpath(root))


def escape_record(where: str, listed: str, split: str) -> dict[str, str]:
    """The quarantine record of a list-file entry that names a file outside the dataset root (never read)."""
    return {"source": where, "reason": f"listed path {listed!r} leaves the dataset root; not read", "split": split}


def pair_by_key(
    split: str, images: dict[str, Path], masks: dict[str, Path], duplicates: Iterable[tuple[Path, str]] = ()
) -> Discovery:
    """Pairs for the keys present in both; quarantine records for the rest (and for duplicate keys)."""
    found = Discovery()
    for key in sorted(images.keys() | masks.keys()):
        image, mask = images.get(key), masks.get(key)
        if image is not None and mask is not None:
            found.pairs.append(SourcePair(f"{split}/{key}", split, str(image), str(mask)))
        elif image is not None:
            found.orphans.append({"source": str(image), "reason": "image without a mask", "split": split})
        else:
            found.orphans.append({"source": str(mask), "reason": "mask without an image", "split": split})
    for path, reason in duplicates:
        found.orphans.append({"source": str(path), "reason": reason, "split": split})
    return found


def files_by_stem(folder: Path, strip: str = "") -> tuple[dict[str, Path], list[tuple[Path, str]]]:
    """Image files directly in `folder` keyed by stem, minus the stem suffix `strip` (files without it are skipped).

    A later file whose key is taken is returned as a duplicate to quarantine.
    """
    by_key: dict[str, Path] = {}
    duplicates: list[tuple[Path, str]] = []
    for path in sorted(folder.iterdir()):
        if not is_image_file(path) or not path.stem.endswith(strip):
            continue
        key = path.stem[: len(path.stem) - len(strip)]
        if key in by_key:
            duplicates.append((path, f"another file has the same name stem ({by_key[key].name})"))
        else:
            by_key[key] = path
    return by_key, duplicates
