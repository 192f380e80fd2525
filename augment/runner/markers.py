"""The output folder of an augmentation job, its completion markers and its job fingerprint.

Layout (local folder or pyarrow URI such as s3://bucket/prefix)::

    job.json                      written first: the job's fingerprint and the canonical content it hashes
    plan.json                     the synthesis plan (augment.synthesis.plan.Plan), written before any shard
    data/shard-NNNNN.parquet      one per planned shard, `synthetic` schema, rows in plan order
    data/.shard-NNNNN.<uuid>.tmp  a shard being written (renamed to its final name when complete)
    _markers/shard-NNNNN.json     completion marker of shard NNNNN with its stats (ShardStats), written last
    _markers/shard-NNNNN.examples.parquet  a few samples (PNG bytes + segmenter prediction) for the contact sheets
    sheets/<class>.png            per-class contact sheets (label | synthetic | prediction)
    quarantine.jsonl              planned samples that could not be made (unreadable source map), when any
    summary.json                  the run's summary (counts, images/s, wall time)
    dataset.json                  written last, once every planned shard is complete: the output is then a dataset

A shard counts as done only when its marker exists and carries this job's fingerprint; its Parquet file is in place
before the marker is written, so a marker always describes a complete file. Shards are deterministic, so a shard
made twice (a retried task, or two drivers running the same job) is rewritten with the same rows under the same name:
a local rename is atomic; on S3 pyarrow's move is copy + delete, never a partial object, and both copies are
identical. No lock is needed for correctness; the worker checks the marker before starting a shard to avoid most
duplicate work.

`--overwrite` removes only the files this layout names (listed above, matched by name), and only after the job is
validated; anything else in the output makes the job refuse it, overwrite or not.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from augment.data import fs as afs
from augment.data.dataset import INFO_FILE, QUARANTINE_FILE, PartStats

JOB_FILE = "job.json"
PLAN_FILE = "plan.json"
SUMMARY_FILE = "summary.json"
DATA_DIR = "data"
MARKER_DIR = "_markers"
SHEETS_DIR = "sheets"

_KNOWN = re.compile(
    r"^(?:(?:job|plan|summary|dataset)\.json|quarantine\.jsonl|data/shard-\d{5,}\.parquet"
    r"|_markers/shard-\d{5,}\.(?:json|examples\.parquet)|sheets/[A-Za-z0-9_.-]+\.png)"
    r"(?:\.tmp-\d+-[0-9a-f]+)?$"
    r"|^data/\.shard-\d{5,}\.[0-9a-f]+\.tmp$"
)
_TMP_SHARD = re.compile(r"^data/\.shard-\d{5,}\.[0-9a-f]+\.tmp$")


def is_temporary(relative: str) -> bool:
    """A file being written (or left by a writer that died): never part of a job's content."""
    return bool(_TMP_SHARD.match(relative) or re.search(r"\.tmp-\d+-[0-9a-f]+$", relative))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_file(index: int) -> str:
    """The shard's data file, relative to the output folder."""
    return f"{DATA_DIR}/{shard_name(index)}.parquet"


@dataclass
class ShardStats:
    """What a completed shard wrote; stored in its marker and merged into dataset.json by the driver."""

    shard: int
    fingerprint: str
    file: str
    rows: int
    generated: int
    accepted: dict[str, int]
    rejected: dict[str, int]
    rejected_ids: list[str]
    quarantined: list[dict[str, str]]
    part: dict[str, Any]
    seconds: float
    worker: str = ""
    node: str = ""
    attempt_id: str = ""
    examples: int = 0

    def part_stats(self) -> PartStats:
        return PartStats(**self.part)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ShardStats":
        return cls(**json.loads(text))


@dataclass
class OutputFolder:
    """The job output at `uri`, through its pyarrow filesystem."""

    uri: str
    fs: pafs.FileSystem = field(init=False)
    path: str = field(init=False)

    def __post_init__(self) -> None:
        self.fs, self.path = afs.resolve(self.uri)

    def full(self, relative: str) -> str:
        return afs.join(self.path, relative)

    def exists(self, relative: str = "") -> bool:
        return afs.exists(self.fs, self.full(relative) if relative else self.path)

    def read_json(self, relative: str) -> dict[str, Any] | None:
        """The parsed file, or None when it does not exist."""
        path = self.full(relative)
        if not afs.exists(self.fs, path):
            return None
        return json.loads(afs.read_bytes(self.fs, path))

    def write_bytes(self, relative: str, data: bytes) -> None:
        path = self.full(relative)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        afs.write_bytes_atomic(self.fs, path, data)

    def write_json(self, relative: str, data: Any) -> None:
        self.write_bytes(relative, json.dumps(data, indent=1, sort_keys=False).encode())

    def relative_files(self) -> list[str]:
        """Every plain file under the output, relative to it."""
        prefix = self.path.rstrip("/") + "/"
        return [p[len(prefix):] for p in afs.list_files(self.fs, self.path, recursive=True)]

    def classify(self) -> tuple[list[str], list[str]]:
        """(files a job writes, other files) under the output."""
        ours, other = [], []
        for rel in self.relative_files():
            (ours if _KNOWN.match(rel) else other).append(rel)
        return ours, other

    def remove_job_files(self, files: list[str]) -> None:
        """Delete the listed job files, then the layout's folders if they are left empty."""
        for rel in files:
            if _KNOWN.match(rel):
                self.fs.delete_file(self.full(rel))
        for folder in (DATA_DIR, MARKER_DIR, SHEETS_DIR):
            path = self.full(folder)
            if afs.is_dir(self.fs, path) and not self.fs.get_file_info(pafs.FileSelector(path)):
                self.fs.delete_dir(path)

    def stale_temporaries(self) -> list[str]:
        """Temporary shard files left by writers that died mid-shard."""
        return [
            f"{DATA_DIR}/{info.base_name}"
            for info in self._listing(DATA_DIR)
            if _TMP_SHARD.match(f"{DATA_DIR}/{info.base_name}")
        ]

    def _listing(self, folder: str) -> list[pafs.FileInfo]:
        path = self.full(folder)
        if not afs.is_dir(self.fs, path):
            return []
        return [i for i in self.fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]

    def completed(self, fingerprint: str) -> dict[int, ShardStats]:
        """Stats of the shards whose marker exists and belongs to the job with `fingerprint`."""
        done: dict[int, ShardStats] = {}
        for info in self._listing(MARKER_DIR):
            m = re.fullmatch(r"shard-(\d{5,})\.json", info.base_name)
            if not m:
                continue
            stats = read_marker(self, int(m.group(1)))
            if stats is not None and stats.fingerprint == fingerprint:
                done[stats.shard] = stats
        return done


def marker_file(index: int) -> str:
    return f"{MARKER_DIR}/{shard_name(index)}.json"


def examples_file(index: int) -> str:
    return f"{MARKER_DIR}/{shard_name(index)}.examples.parquet"


def read_marker(out: OutputFolder, index: int) -> ShardStats | None:
    """The marker's stats, or None when absent or unreadable (an unreadable marker means: not done)."""
    path = out.full(marker_file(index))
    try:
        return ShardStats.from_json(afs.read_bytes(out.fs, path))
    except (FileNotFoundError, OSError, ValueError, TypeError):
        return None


def write_marker(out: OutputFolder, stats: ShardStats) -> None:
    out.write_bytes(marker_file(stats.shard), stats.to_json().encode())


def marker_done(out: OutputFolder, index: int, fingerprint: str) -> ShardStats | None:
    """The shard's stats when it is complete for this job, else None."""
    stats = read_marker(out, index)
    if stats is None or stats.fingerprint != fingerprint or not out.exists(stats.file):
        return None
    return stats


__all__ = [
    "DATA_DIR", "INFO_FILE", "JOB_FILE", "MARKER_DIR", "OutputFolder", "PLAN_FILE", "QUARANTINE_FILE", "SHEETS_DIR",
    "SUMMARY_FILE", "ShardStats", "examples_file", "is_temporary", "marker_done", "marker_file", "read_marker",
    "shard_file", "shard_name", "write_marker",
]
