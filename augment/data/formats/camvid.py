"""CamVid in SegNet's layout: `<split>/` images, `<split>annot/` label maps, optional `<split>.txt` list files.

List-file lines pair an image path and a label path that carry SegNet's absolute `/SegNet/CamVid/` prefix; each
path is resolved by its longest tail that exists under the dataset root; an entry whose `..` climbs out of the root
is quarantined (naming its line) and never read. Without a list file, `<split>/` and
`<split>annot/` are paired by file stem. Label 11 (unlabelled) becomes the ignore index 255.

Frame names carry their video sequence before the first underscore (`0001TP_006690.png`, `0006R0_f00930.png`,
`0016E5_07959.png`, `Seq05VD_f00000.png`): `sequence_of` reads it, which makes sequence-disjoint splits possible
(val is 101 frames of 0016E5, a sequence that also gives 204 of the 367 train frames).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from augment.data.formats.base import (
    Discovery,
    LabelSet,
    SourcePair,
    escape_record,
    files_by_stem,
    inside,
    make_lut,
    order_splits,
    pair_by_key,
)
from augment.core.errors import AugmentError, DatasetError

CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]
PALETTE = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]
UNLABELLED = 11
IGNORE_INDEX = 255


def sequence_of(frame_name: str) -> str:
    """The sequence of a CamVid frame: its file name's part before the first underscore (`0006R0_f00930.png` ->
    `0006R0`); folders in the name are ignored. AugmentError for a name without `<sequence>_<frame>`."""
    stem = PurePosixPath(frame_name.replace("\\", "/")).stem
    sequence, sep, frame = stem.partition("_")
    if not (sequence and sep and frame):
        raise AugmentError(f"{frame_name!r} is not a CamVid frame name (<sequence>_<frame>, e.g. 0001TP_006690.png)")
    return sequence


def label_set(root: Path, classes: str | None = None) -> LabelSet:
    mapping = {i: i for i in range(len(CLASSES))}
    mapping[UNLABELLED] = IGNORE_INDEX
    mapping[IGNORE_INDEX] = IGNORE_INDEX
    return LabelSet(CLASSES, PALETTE, IGNORE_INDEX, make_lut(mapping))


def _list_files(root: Path) -> dict[str, Path]:
    """`<split>.txt` files whose first line pairs two paths."""
    found = {}
    for path in sorted(root.glob("*.txt")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines and len(lines[0].split()) == 2:
            found[path.stem] = path
    return found


def _folder_splits(root: Path) -> list[str]:
    return [d.name for d in root.iterdir() if d.is_dir() and (root / f"{d.name}annot").is_dir()]


def find_splits(root: Path) -> list[str]:
    splits = set(_list_files(root)) | set(_folder_splits(root))
    if not splits:
        raise DatasetError(
            f"{root} does not look like CamVid (SegNet layout): no <split>.txt list files and no "
            "<split>/ + <split>annot/ folders"
        )
    return order_splits(splits)


def _escapes(root: Path, listed: str) -> bool:
    """Whether a list entry climbs out of `root` with `..` (relative entries are taken under `root`)."""
    path = PurePosixPath(listed.replace("\\", "/"))
    if ".." not in path.parts:
        return False
    return not inside(root, path if path.is_absolute() else PurePosixPath(root) / path)


def _resolve(root: Path, listed: str) -> Path:
    """The file a list entry names: its longest path tail that exists under `root` (else the split/name tail).

    Only paths under `root` are tried, so an entry never reads a file outside the dataset.
    """
    parts = [p for p in PurePosixPath(listed.replace("\\", "/")).parts if p not in ("/", "")]
    for i in range(len(parts)):
        candidate = root.joinpath(*parts[i:])
        if inside(root, candidate) and candidate.is_file():
            return candidate
    tail = root.joinpath(*parts[-2:])
    return tail if inside(root, tail) else root / parts[-1]


def _from_list(root: Path, split: str, list_file: Path) -> Discovery:
    found = Discovery()
    seen: set[str] = set()
    for lineno, line in enumerate(list_file.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_file}:{lineno}"
        if len(fields) != 2:
            found.orphans.append({"source": where, "reason": "list line does not pair an image and a label path",
                                  "split": split})
            continue
        escaping = [f for f in fields if _escapes(root, f)]
        if escaping:
            found.orphans.append(escape_record(where, escaping[0], split))
            continue
        image, mask = _resolve(root, fields[0]), _resolve(root, fields[1])
        if not image.is_file():
            found.orphans.append({"source": str(image), "split": split,
                                  "reason": f"image listed in {where} not found under the dataset root"})
        elif not mask.is_file():
            found.orphans.append({"source": str(image), "reason": f"image without a mask ({mask} listed in "
                                  f"{where} not found)", "split": split})
        elif image.stem in seen:
            found.orphans.append({"source": str(image), "reason": f"listed twice (again at {where})",
                                  "split": split})
        else:
            seen.add(image.stem)
            found.pairs.append(SourcePair(f"{split}/{image.stem}", split, str(image), str(mask)))
    return found


def discover(root: Path, split: str) -> Discovery:
    list_file = _list_files(root).get(split)
    if list_file is not None:
        return _from_list(root, split, list_file)
    images, dup_images = files_by_stem(root / split)
    masks, dup_masks = files_by_stem(root / f"{split}annot")
    return pair_by_key(split, images, masks, dup_images + dup_masks)
