"""The dataset format: a folder of Parquet files plus `_dataset.json` and a dataset card, written atomically and
read as a stream.

Writers stage everything in a temporary sibling folder and move it into place at the end, so a run that fails
part-way leaves no half-written dataset. Each writer process writes its own part files, each holding rows of one
split; the driver merges the per-part statistics into `_dataset.json`. The names of the files beside the Parquet
files, and why they let pyarrow, Hugging Face `datasets`, DuckDB and Ray Data open the folder whole, are in
augment.data.layout; folders written with the earlier names (`dataset.json`) are read too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any, Iterator, Sequence

try:
    import fcntl
except ImportError:  # no flock on this platform: liveness by host and pid
    fcntl = None  # type: ignore[assignment]

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from augment.data import fs as afs
from augment.data.card import EMPTY_SPLIT, render_card
from augment.data.codec import decode_image, decode_mask
from augment.data.layout import (
    CARD_FILES, INFO_FILE, INFO_FILES, LEGACY_INFO_FILE, LEGACY_QUARANTINE_FILE, QUARANTINE_FILE,
)
from augment.data.schema import SCHEMA_VERSION, arrow_schema, check_schema
from augment.core.errors import DatasetError

TARGET_FILE_BYTES = 256 << 20
ROW_GROUP_BYTES = 32 << 20
ROW_GROUP_ROWS = 256
PART_FILE_PATTERN = r"part-\d{5,}-\d{4,}\.parquet"
"""Names of the Parquet files a PartWriter with prefix `part-<chunk:05d>` writes into a dataset folder."""
DATA_FILE = re.compile(PART_FILE_PATTERN + r"|data/shard-\d{5,}(?:\.r\d{6,}-[0-9a-f]{8})?\.parquet")
"""Names (relative to the dataset folder) of every Parquet file augment lists in a dataset's info: ingest's part files
and an augmentation job's shards (augment.runner.markers)."""
PARQUET_MAGIC = b"PAR1"


def parquet_write_options(schema: pa.Schema) -> dict[str, Any]:
    """The `pq.ParquetWriter` / `pq.write_table` options of every Parquet file augment writes with `schema`.

    zstd pages, each with a CRC that readers verify (see `open_parquet`). Statistics and dictionary encoding only for
    the scalar columns: the binary ones (encoded PNGs) hold unique values, so a dictionary never pays, and their
    min/max statistics would copy whole images into every page header and the footer.
    """
    scalar = [path for path, kind in _leaf_columns(schema)
              if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind))]
    return {"compression": "zstd", "write_page_checksum": True, "write_statistics": scalar, "use_dictionary": scalar}


def _leaf_columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """The Parquet leaf columns of `schema` as (dotted path, Arrow type): `image.bytes`, `class_pixels.list.element`."""
    out: list[tuple[str, pa.DataType]] = []
    stack = [(f.name, f.type) for f in reversed(schema)]
    while stack:
        path, kind = stack.pop()
        if pa.types.is_struct(kind):
            stack += [(f"{path}.{f.name}", f.type) for f in reversed(list(kind))]
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            stack.append((f"{path}.list.element", kind.value_type))
        else:
            out.append((path, kind))
    return out


def open_parquet(source: Any) -> pq.ParquetFile:
    """A Parquet file (path or open input file) read with page checksum verification: a damaged page raises
    OSError ("CRC checksum verification failed") instead of yielding wrong bytes."""
    return pq.ParquetFile(source, page_checksum_verification=True)


def parquet_format() -> pads.ParquetFileFormat:
    """The pyarrow dataset format augment reads its Parquet with: page checksums verified (see `open_parquet`)."""
    return pads.ParquetFileFormat(
        default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True)
    )


@dataclass
class PartStats:
    """Statistics of the rows one writer wrote; merged across parts into DatasetInfo."""

    num_classes: int
    rows: int = 0
    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    quarantine: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.class_pixels = self.class_pixels or [0] * self.num_classes
        self.class_images = self.class_images or [0] * self.num_classes

    def add_row(self, height: int, width: int, split: str, pixels: np.ndarray) -> None:
        self.rows += 1
        self.class_pixels = [a + int(b) for a, b in zip(self.class_pixels, pixels)]
        self.class_images = [a + int(b > 0) for a, b in zip(self.class_images, pixels)]
        key = f"{height}x{width}"
        self.sizes[key] = self.sizes.get(key, 0) + 1
        self.splits[split] = self.splits.get(split, 0) + 1

    def merge(self, other: "PartStats") -> "PartStats":
        self.rows += other.rows
        self.class_pixels = [a + b for a, b in zip(self.class_pixels, other.class_pixels)]
        self.class_images = [a + b for a, b in zip(self.class_images, other.class_images)]
        self.sizes = dict(Counter(self.sizes) + Counter(other.sizes))
        self.splits = dict(Counter(self.splits) + Counter(other.splits))
        self.files += other.files
        self.quarantine += other.quarantine
        return self


@dataclass
class DatasetInfo:
    """The content of `_dataset.json` (see schemas/dataset-v1.schema.json)."""

    classes: list[str]
    palette: list[list[int]]
    ignore_index: int = 255
    kind: str = "sample"
    num_rows: int = 0
    sizes: list[dict[str, int]] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    quarantined: int = 0
    files: list[str] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_at: str = ""
    card: dict[str, str] = field(default_factory=dict)
    """{card file: sha256} of the dataset card written with it (`write_card`): a card file is the dataset's own
    (replaced by `--overwrite`) only while it still has that content."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) when every row has the same size, else None."""
        if len(self.sizes) != 1:
            return None
        return self.sizes[0]["height"], self.sizes[0]["width"]

    def class_index(self, name_or_index: str | int) -> int:
        """Index of a class given by name or index (as int or numeric string)."""
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            idx = int(name_or_index)
            if not 0 <= idx < self.num_classes:
                raise DatasetError(f"class index {idx} out of range 0..{self.num_classes - 1}")
            return idx
        if name_or_index not in self.classes:
            raise DatasetError(f"unknown class {name_or_index!r}; classes are {', '.join(self.classes)}")
        return self.classes.index(name_or_index)

    def apply_stats(self, stats: PartStats) -> None:
        self.num_rows = stats.rows
        self.class_pixels = list(stats.class_pixels)
        self.class_images = list(stats.class_images)
        self.sizes = [
            {"height": int(k.split("x")[0]), "width": int(k.split("x")[1]), "rows": v}
            for k, v in sorted(stats.sizes.items(), key=lambda kv: -kv[1])
        ]
        self.splits = dict(sorted(stats.splits.items()))
        self.quarantined = len(stats.quarantine)
        self.files = sorted(stats.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = INFO_FILE) -> "DatasetInfo":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(
                f"{source}: schema_version {data.get('schema_version')!r} is not supported (this augment reads "
                f"version {SCHEMA_VERSION})"
            )
        try:
            jsonschema.validate(data, _dataset_json_schema())
        except jsonschema.ValidationError as exc:
            raise DatasetError(f"{source}: invalid dataset info: {exc.message}") from None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@lru_cache(maxsize=1)
def _dataset_json_schema() -> dict[str, Any]:
    return json.loads((resources.files("augment.schemas") / "dataset-v1.schema.json").read_text())


class PartWriter:
    """Writes rows of one schema to Parquet files `<prefix>-NNNN.parquet` in a folder.

    A dataset's prefix is `part-<chunk:05d>` (one per writer), so the names match DATA_FILE: a later `--overwrite`
    deletes only files of those names. A file holds rows of one split: a row of another split than the one before
    starts a new file, so a dataset card can list each split's files (`files_by_split`).

    Row groups hold about ROW_GROUP_BYTES (at most ROW_GROUP_ROWS rows) and a file rolls over past
    TARGET_FILE_BYTES, so files stream well: no giant file, no swarm of tiny ones.
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        folder: str,
        prefix: str,
        schema_name: str,
        num_classes: int,
        target_file_bytes: int = TARGET_FILE_BYTES,
        row_group_bytes: int = ROW_GROUP_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        self.fs = filesystem
        self.folder = folder
        self.prefix = prefix
        self.schema = arrow_schema(schema_name)
        self.stats = PartStats(num_classes)
        self._target_file_bytes = target_file_bytes
        self._row_group_bytes = row_group_bytes
        self._row_group_rows = row_group_rows
        self._rows: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._file_bytes = 0
        self._split: str | None = None

    def write(self, row: dict[str, Any]) -> None:
        """Add one row (a dict with the schema's columns); `class_pixels` feeds the statistics."""
        if row["split"] != self._split:
            self._flush()
            self._close_file()
            self._split = row["split"]
        self._rows.append(row)
        self._buffered_bytes += len(row["image"]["bytes"]) + len(row["mask"]["bytes"])
        self.stats.add_row(row["height"], row["width"], row["split"], np.asarray(row["class_pixels"]))
        if self._buffered_bytes >= self._row_group_bytes or len(self._rows) >= self._row_group_rows:
            self._flush()

    def quarantine(self, source: str, reason: str, **extra: Any) -> None:
        self.stats.quarantine.append({"source": source, "reason": reason, **extra})

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            name = f"{self.prefix}-{len(self.stats.files):04d}.parquet"
            self._sink = self.fs.open_output_stream(afs.join(self.folder, name))
            self._writer = pq.ParquetWriter(self._sink, self.schema, **parquet_write_options(self.schema))
            self.stats.files.append(name)
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self._file_bytes += self._buffered_bytes
        self._rows, self._buffered_bytes = [], 0
        if self._file_bytes >= self._target_file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer, self._sink, self._file_bytes = None, None, 0

    def close(self) -> PartStats:
        self._flush()
        self._close_file()
        return self.stats


STAGING_FILE = re.compile("|".join([PART_FILE_PATTERN, *(re.escape(name) for name in (
    INFO_FILE, QUARANTINE_FILE, *CARD_FILES, LEGACY_INFO_FILE, LEGACY_QUARANTINE_FILE))]))
"""Names of the files a staging folder holds (the earlier names too: a staging folder an older augment left)."""
_SHOWN = 5


def _host_tag() -> str:
    """8 hex digits naming this machine in staging folder names (process ids mean something only on their host)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_suffix() -> str:
    """`<host>-<pid>-<random>`: the writer of a staging or set-aside folder, so a later run can tell it is gone."""
    return f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _describe(names: list[str], limit: int = _SHOWN) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _top_level(relative: list[str], dirs: set[str]) -> list[str]:
    """The first path component of each entry, `name/` for folders, sorted and unique."""
    tops = set()
    for rel in relative:
        head = rel.split("/", 1)[0]
        tops.add(head + "/" if head in dirs or "/" in rel else head)
    return sorted(tops)


def info_file(fs: pafs.FileSystem, path: str) -> str | None:
    """The name of the dataset info file in the folder `path`: `_dataset.json`, else (a folder written before that
    name) `dataset.json`; None when there is neither."""
    return next((name for name in INFO_FILES if afs.exists(fs, afs.join(path, name))), None)


def is_dataset(uri: str) -> bool:
    """Whether the folder `uri` holds a dataset info file (a committed dataset, either layout); reads no content."""
    filesystem, path = afs.resolve(uri)
    return info_file(filesystem, path) is not None


def dataset_files(fs: pafs.FileSystem, path: str) -> set[str]:
    """The files (relative to `path`) an augment dataset folder owns: its info file and quarantine file, its dataset
    card where it still has the content the info records (`DatasetInfo.card`; a card someone edited, or a README.md
    of theirs, is not the dataset's), and the Parquet files the info lists. A folder with the earlier names owns
    `dataset.json`, `quarantine.jsonl` and the listed files.

    A listed file counts as the dataset's only when its name is one augment writes (DATA_FILE) and, where it exists,
    it starts with Parquet's magic bytes; an info file that lists anything else (a hand-edited or forged one) makes
    the folder not a dataset. Raises DatasetError naming the file and why `path` is not such a dataset.
    """
    name = info_file(fs, path)
    if name is None:
        raise DatasetError(f"no {INFO_FILE}")
    try:
        info = DatasetInfo.from_dict(json.loads(afs.read_bytes(fs, afs.join(path, name))), source=name)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{name} is not valid JSON ({exc})") from None
    for listed in info.files:
        if posixpath.normpath(listed) != listed or listed.startswith(("/", "../")) or listed in (".", ".."):
            raise DatasetError(f"{name} lists {listed!r}, which is not a file inside the folder")
        if not DATA_FILE.fullmatch(listed):
            raise DatasetError(f"{name} lists {listed!r}, which is not a name augment gives its Parquet files "
                               f"(part-NNNNN-NNNN.parquet or data/shard-NNNNN.<run>.parquet)")
        head = _head(fs, afs.join(path, listed), len(PARQUET_MAGIC))
        if head is not None and head != PARQUET_MAGIC:
            raise DatasetError(f"{name} lists {listed!r}, which is not a Parquet file (no {PARQUET_MAGIC.decode()} "
                               f"magic)")
    if name == LEGACY_INFO_FILE:
        return {LEGACY_INFO_FILE, LEGACY_QUARANTINE_FILE, *info.files}
    return {INFO_FILE, QUARANTINE_FILE, *own_card_files(fs, path, info), *info.files}


def own_card_files(fs: pafs.FileSystem, path: str, info: DatasetInfo) -> list[str]:
    """The card files in the folder `path` that still have the sha256 `info.card` records for them."""
    own = []
    for name, digest in sorted(info.card.items()):
        if name in CARD_FILES and fs.get_file_info(afs.join(path, name)).type == pafs.FileType.File:
            if afs.size_and_sha256(fs, afs.join(path, name))[1] == digest:
                own.append(name)
    return own


def files_by_split(fs: pafs.FileSystem, path: str, info: DatasetInfo) -> dict[str, list[str]]:
    """{split: its Parquet files (relative, in the info's order)}, splits sorted, of the dataset in the folder `path`.

    With one split (or none: every file under EMPTY_SPLIT) every file is that split's; otherwise each file's `split`
    column says which (PartWriter writes one split per file). Raises DatasetError naming a file that holds rows of
    several splits.
    """
    if len(info.splits) <= 1:
        return {next(iter(info.splits), EMPTY_SPLIT): list(info.files)}
    found: dict[str, list[str]] = {}
    for name in info.files:
        with fs.open_input_file(afs.join(path, name)) as handle:
            splits = sorted(set(open_parquet(handle).read(columns=["split"]).column(0).to_pylist()))
        if len(splits) > 1:
            raise DatasetError(f"{name}: holds rows of several splits ({', '.join(splits)}); a dataset card lists "
                               f"whole files per split")
        found.setdefault(splits[0] if splits else EMPTY_SPLIT, []).append(name)
    return dict(sorted(found.items()))


def write_card(fs: pafs.FileSystem, path: str, info: DatasetInfo, name: str | None = None) -> None:
    """Write the dataset card of `info` (augment.data.card) into the folder `path`, each file atomically, and record
    each file's sha256 in `info.card`; the info file itself is written after it, by the caller. `name` (default: the
    folder's own name) is the name the card opens the folder by."""
    card, header = render_card(info, files_by_split(fs, path, info), name or posixpath.basename(path.rstrip("/")))
    info.card = {}
    for file, text in zip(CARD_FILES, (card, header)):
        data = text.encode()
        afs.write_bytes_atomic(fs, afs.join(path, file), data)
        info.card[file] = hashlib.sha256(data).hexdigest()


def _head(fs: pafs.FileSystem, path: str, size: int) -> bytes | None:
    """The first `size` bytes of the file at `path` (fewer if it is shorter); None when nothing is there, b"" when
    it is not a readable file (a folder)."""
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return None
    if kind != pafs.FileType.File:
        return b""
    with fs.open_input_stream(path) as handle:
        return handle.read(size)


def replaceable_files(fs: pafs.FileSystem, path: str, uri: str, overwrite: bool) -> list[str]:
    """What writing a dataset at `path` replaces: [] when it is absent or empty, else (with `overwrite`) the files of
    the dataset there, relative to `path`.

    Raises DatasetError, naming what is there, for a file, for a folder that is not an augment dataset, for a dataset
    folder that holds other files too, and for any dataset without `overwrite`.
    """
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return []
    if kind != pafs.FileType.Directory:
        raise DatasetError(f"{uri} is a file, not a folder; refusing to replace it")
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    if not entries:
        return []
    rel = {e.path[len(path.rstrip("/")) + 1:]: e.type for e in entries}
    files = sorted(r for r, t in rel.items() if t == pafs.FileType.File)
    dirs = {r for r, t in rel.items() if t == pafs.FileType.Directory}
    try:
        owned = dataset_files(fs, path)
    except DatasetError as exc:
        what = _describe(_top_level(sorted(rel), dirs))
        if overwrite:
            raise DatasetError(f"{uri}: not an augment dataset ({exc}; holds {what}); refusing to overwrite") from None
        raise DatasetError(f"{uri} exists and is not empty (holds {what}); choose another output") from None
    parents = {d for f in owned for d in _ancestors(f)}
    extra = [f for f in files if f not in owned] + sorted(d + "/" for d in dirs - parents)
    if extra:
        raise DatasetError(
            f"{uri} holds a dataset and files its {info_file(fs, path)} does not list ({_describe(extra)}); refusing "
            f"to {'overwrite' if overwrite else 'write'} it, choose another output"
        )
    if not overwrite:
        raise DatasetError(f"{uri} already holds a dataset; pass --overwrite to replace it")
    return [f for f in files if f in owned]


def _ancestors(relative: str) -> list[str]:
    parts = relative.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class Leftover:
    """A folder `<out>.tmp-<suffix>` (staging) or `<out>.old-<suffix>` (a replaced dataset set aside) of one writer,
    whose `suffix` is `<host>-<pid>-<hex>`."""

    path: str
    kind: str
    host: str
    pid: int
    suffix: str


def _lock_file(path: str, suffix: str) -> str:
    """`<path>.lock-<suffix>`: the file whose flock the writer of `<path>.tmp-<suffix>` holds while it runs."""
    return f"{path}.lock-{suffix}"


def _lock_held(fs: pafs.FileSystem, lock: str) -> bool | None:
    """Whether a process holds the flock on the file `lock`; None where that cannot be told (not a local filesystem,
    no such file, no flock on this platform or filesystem)."""
    if fcntl is None or not isinstance(fs, pafs.LocalFileSystem):
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def writer_gone(fs: pafs.FileSystem, path: str, leftover: Leftover) -> bool:
    """Whether the writer of `leftover` (of the output `path`) is gone for sure.

    Another host's writer never is. On this host the flock on its lock file decides where it can be told: a free lock
    means its writer is gone, whatever process now has its pid (containers sharing a hostname do not share pids);
    otherwise (no lock file, as for writers on filesystems without flock, or no flock) the writer is gone when no
    process `pid` exists here.
    """
    if leftover.host != _host_tag():
        return False
    held = _lock_held(fs, _lock_file(path, leftover.suffix))
    return not held if held is not None else not _pid_alive(leftover.pid)


def leftovers(fs: pafs.FileSystem, path: str, kind: str) -> list[Leftover]:
    """The `<path>.<kind>-<host>-<pid>-<hex>` folders next to `path` (kind "tmp" or "old"), by name."""
    parent, base = posixpath.split(path)
    pattern = re.compile(re.escape(base) + rf"\.{kind}-(([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}})")
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        match = pattern.fullmatch(entry.base_name)
        if match and entry.type == pafs.FileType.Directory:
            found.append(Leftover(entry.path, kind, match[2], int(match[3]), match[1]))
    return sorted(found, key=lambda f: f.path)


def _holds_only_staging_files(fs: pafs.FileSystem, folder: str) -> bool:
    """Whether `folder` holds only files a staging folder holds (STAGING_FILE, or their temporary files)."""
    inside = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return all(i.type == pafs.FileType.File and STAGING_FILE.fullmatch(_strip_tmp(i.base_name)) for i in inside)


def _forget(fs: pafs.FileSystem, path: str, leftover: Leftover) -> None:
    """Remove a gone writer's lock file once neither of its folders is left."""
    if not any(afs.exists(fs, f"{path}.{kind}-{leftover.suffix}") for kind in ("tmp", "old")):
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(_lock_file(path, leftover.suffix))


def remove_stale_staging(fs: pafs.FileSystem, path: str) -> list[str]:
    """Remove the staging folders `<path>.tmp-<host>-<pid>-<hex>` whose writer is gone (see `writer_gone`).

    Only folders of exactly that name holding only what a staging folder holds (STAGING_FILE: Parquet parts, the
    info, quarantine and card files, their temporary files) are removed; a live writer's, another host's and anything
    else are kept. Returns the folders removed.
    """
    removed = []
    for leftover in leftovers(fs, path, "tmp"):
        if not writer_gone(fs, path, leftover) or not _holds_only_staging_files(fs, leftover.path):
            continue
        with contextlib.suppress(FileNotFoundError):  # another run removing it at the same time
            fs.delete_dir(leftover.path)
        _forget(fs, path, leftover)
        print(f"removed {leftover.path}: staging folder of an earlier run (pid {leftover.pid}) that is gone",
              file=sys.stderr)
        removed.append(leftover.path)
    return removed


def recover_interrupted(fs: pafs.FileSystem, path: str) -> list[str]:
    """Put right what writers killed in the middle of a commit left of the output `path`; returns what it did.

    A gone writer's set-aside folder `<path>.old-...` (the dataset it was replacing) while `path` is missing: the
    writer died between moving the old dataset aside and moving its new one in, so the old one, the last committed
    state, is moved back to `path` (its unfinished staging folder is then removed by `remove_stale_staging`). Two or
    more such folders are not guessed between: DatasetError names them. While `path` exists, a gone writer's
    set-aside folder is what remained of a replaced dataset while its files were being deleted (its info file goes
    last, see `remove_replaced`): the files its info still lists are deleted, then the folder if nothing else
    is left in it; otherwise it is kept, with a line saying so.
    """
    gone = [f for f in leftovers(fs, path, "old") if writer_gone(fs, path, f)]
    done = []
    if gone and not afs.exists(fs, path):
        if len(gone) > 1:
            raise DatasetError(f"{path} is missing and {len(gone)} earlier runs killed while replacing it left "
                               f"{_describe([f.path for f in gone])}; move the right one back to {path} by hand")
        fs.move(gone[0].path, path)
        _forget(fs, path, gone[0])
        print(f"restored {path} from {gone[0].path}: an earlier run (pid {gone[0].pid}) was killed while replacing "
              f"it; its unfinished replacement is discarded", file=sys.stderr)
        return [gone[0].path]
    for leftover in gone:
        try:
            owned = dataset_files(fs, leftover.path)
        except DatasetError:
            owned = set()  # its info file, deleted last, is gone: only an empty folder is left to remove
        if remove_replaced(fs, leftover.path, sorted(owned), path):
            _forget(fs, path, leftover)
            done.append(leftover.path)
    return done


def remove_replaced(fs: pafs.FileSystem, old: str, owned: list[str], uri: str) -> bool:
    """Delete a replaced dataset's files `owned` (relative) from its set-aside folder `old`, its info file last (so a
    deletion cut short still lists what is left), then the folder if no file is left in it; True when it was removed.
    A folder holding other files (ones that appeared in `uri` while it was being replaced) is kept, with a line
    saying so."""
    for rel in sorted(owned, key=lambda r: r in INFO_FILES):
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(afs.join(old, rel))
    left = afs.list_files(fs, old, recursive=True)
    if left:
        print(f"kept {old}: it holds files that appeared in {uri} while it was replaced "
              f"({_describe([f[len(old) + 1:] for f in left])})", file=sys.stderr)
        return False
    fs.delete_dir(old)
    return True


def _strip_tmp(name: str) -> str:
    """A name without the `.tmp-<pid>-<hex>` suffix afs.write_bytes_atomic adds while writing."""
    return re.sub(r"\.tmp-\d+-[0-9a-f]+$", "", name)


class StagedOutput:
    """A dataset folder being written: a temporary sibling `<out>.tmp-<host>-<pid>-<hex>` until `commit` moves it
    into place.

    Refuses, with or without `overwrite`: an empty path, the current folder or one above it, an output that is one of
    `inputs`, inside one or holds one, a folder that is not an augment dataset, and a dataset folder holding files
    its info file does not list. An existing dataset is replaced only with `overwrite`, and only its own files are
    deleted. Leaving the `with` block without committing removes the staging folder.

    On a local filesystem the writer holds an flock on `<out>.lock-<same suffix>` from entering to leaving, so a later
    run can tell for sure whether it is gone (`writer_gone`; host and pid where flock is not available). Entering
    first recovers what gone writers left (`recover_interrupted`): a writer killed between moving the dataset it
    replaced aside to `<out>.old-<same suffix>` and moving its new one in left `<out>` missing; the old dataset, the
    last committed state, is moved back, and only then is the killed writer's staging folder removed (its new dataset
    was never committed; rerunning the command makes it again). Entering then removes staging folders of the same
    output left by writers that are gone (`remove_stale_staging`), before any refusal.
    """

    def __init__(self, uri: str, overwrite: bool = False, inputs: Sequence[str] = ()) -> None:
        afs.check_not_working_folder(uri)
        self.uri = uri
        self.fs, self.path = afs.resolve(uri)
        self.overwrite = overwrite
        self.inputs = tuple(inputs)
        self.suffix = _owner_suffix()
        self.staging = f"{self.path}.tmp-{self.suffix}"
        self.committed = False
        self._lock_fd: int | None = None

    def __enter__(self) -> "StagedOutput":
        for source in self.inputs:
            afs.check_apart(self.uri, source)
        recover_interrupted(self.fs, self.path)
        remove_stale_staging(self.fs, self.path)
        replaceable_files(self.fs, self.path, self.uri, self.overwrite)
        self._take_lock()
        try:
            self.fs.create_dir(self.staging, recursive=True)
        except BaseException:
            self._release_lock()
            raise
        return self

    def _take_lock(self) -> None:
        """Create and flock this writer's lock file (local filesystems with flock; elsewhere nothing)."""
        if fcntl is None or not isinstance(self.fs, pafs.LocalFileSystem):
            return
        lock = _lock_file(self.path, self.suffix)
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no flock on this filesystem: later runs go by host and pid
            os.close(fd)
            os.unlink(lock)
            return
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.unlink(_lock_file(self.path, self.suffix))  # while still held: no run ever sees it free too early
            os.close(self._lock_fd)
            self._lock_fd = None

    def commit(self, info: DatasetInfo, quarantine: list[dict[str, str]]) -> None:
        """Write the quarantine file, the dataset card (`write_card`) and the info file (last), then move the folder
        into place.

        A dataset already there (checked again now) is moved aside to `<out>.old-<suffix>` first (and back if the
        new one cannot be moved in), then only its own files are deleted.
        """
        info.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = "".join(json.dumps(q) + "\n" for q in quarantine)
        afs.write_bytes_atomic(self.fs, afs.join(self.staging, QUARANTINE_FILE), lines.encode())
        write_card(self.fs, self.staging, info, posixpath.basename(self.path.rstrip("/")))
        afs.write_bytes_atomic(self.fs, afs.join(self.staging, INFO_FILE), info.to_json().encode())
        owned = replaceable_files(self.fs, self.path, self.uri, self.overwrite)
        old = None
        if afs.exists(self.fs, self.path):
            old = f"{self.path}.old-{self.suffix}"
            self.fs.move(self.path, old)
        try:
            self.fs.move(self.staging, self.path)
        except BaseException:
            if old is not None:
                self.fs.move(old, self.path)
            raise
        self.committed = True
        if old is not None:
            remove_replaced(self.fs, old, owned, self.uri)

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.committed and afs.exists(self.fs, self.staging):
                self.fs.delete_dir(self.staging)
        finally:
            self._release_lock()


def _read_info(uri: str) -> tuple[DatasetInfo, str]:
    """(the info of the dataset at `uri`, the name of the file it was read from)."""
    filesystem, path = afs.resolve(uri)
    if not afs.exists(filesystem, path):
        raise DatasetError(f"{uri}: no such dataset folder")
    name = info_file(filesystem, path)
    if name is None:
        raise DatasetError(f"{uri}: not an augment dataset (no {INFO_FILE}); create one with `augment ingest`")
    info_path = afs.join(path, name)
    try:
        data = json.loads(afs.read_bytes(filesystem, info_path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{info_path}: not valid JSON ({exc})") from None
    return DatasetInfo.from_dict(data, source=info_path), name


def read_info(uri: str) -> DatasetInfo:
    """The info of the dataset at `uri` (`_dataset.json`, or `dataset.json` in a folder written before that name)."""
    return _read_info(uri)[0]


class Dataset:
    """An augment dataset opened for reading: its info plus streaming access to its rows."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.path = afs.resolve(uri)
        self.info, self.info_name = _read_info(uri)

    def info_bytes(self) -> bytes:
        """The bytes of the dataset's info file (`info_name`): what a job's fingerprint and a retrain's lineage hash."""
        return afs.read_bytes(self.fs, afs.join(self.path, self.info_name))

    def __len__(self) -> int:
        return self.info.num_rows

    @property
    def schema_name(self) -> str:
        return self.info.kind

    @property
    def files(self) -> list[str]:
        """Full paths (within `self.fs`) of the Parquet files, in a fixed order."""
        return [afs.join(self.path, f) for f in self.info.files]

    @property
    def uris(self) -> list[str]:
        """The Parquet files as paths/URIs other readers (Ray Data, DuckDB) accept."""
        if "://" in self.uri:
            scheme = self.uri.split("://", 1)[0]
            return [f"{scheme}://{p}" for p in self.files]
        return self.files

    @cached_property
    def arrow(self) -> pads.Dataset:
        """A pyarrow dataset over the files, schema-checked."""
        ds = pads.dataset(self.files, filesystem=self.fs, format=parquet_format())
        try:
            check_schema(ds.schema, self.schema_name, source=self.uri)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        return ds

    def iter_batches(
        self, columns: list[str] | None = None, batch_size: int = 64, filter: pads.Expression | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream record batches; memory holds about one batch at a time."""
        yield from self.arrow.to_batches(columns=columns, batch_size=batch_size, filter=filter)

    def iter_samples(
        self, columns: tuple[str, ...] = ("id", "image", "mask"), batch_size: int = 32
    ) -> Iterator[dict[str, Any]]:
        """Stream rows as dicts with decoded `image` (H×W×3 uint8) and `mask` (H×W uint8)."""
        for batch in self.iter_batches(list(columns), batch_size=batch_size):
            for row in batch.to_pylist():
                yield decode_row(row, source=self.uri)


def decode_row(row: dict[str, Any], source: str = "") -> dict[str, Any]:
    """Replace encoded image/mask structs in a row by arrays.

    A dataset's rows passed ingest's pixel cap (which `--max-pixels` may have raised), so only PIL's own
    decompression-bomb limit applies here.
    """
    out = dict(row)
    where = f"{source} row {row.get('id', '?')}"
    if "image" in row:
        out["image"] = decode_image(row["image"]["bytes"], where, max_pixels=None)
    if "mask" in row:
        out["mask"] = decode_mask(row["mask"]["bytes"], where, max_pixels=None)
    return out


def open_dataset(uri: str) -> Dataset:
    return Dataset(uri)


def make_row(
    sample_id: str,
    image_bytes: bytes,
    mask_bytes: bytes,
    height: int,
    width: int,
    split: str,
    pixels: np.ndarray,
    image_name: str | None = None,
    mask_name: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A row of the `sample` schema (plus `extra` columns for schemas that extend it)."""
    stem = sample_id.replace("/", "_")
    return {
        "id": sample_id,
        "image": {"bytes": image_bytes, "path": image_name or f"{stem}.png"},
        "mask": {"bytes": mask_bytes, "path": mask_name or f"{stem}_mask.png"},
        "height": int(height),
        "width": int(width),
        "split": split,
        "class_pixels": [int(x) for x in pixels],
        "source_image": image_name,
        "source_mask": mask_name,
        **extra,
    }

