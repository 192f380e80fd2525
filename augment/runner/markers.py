"""The output folder of an augmentation job, its completion markers, its job fingerprint and its run claims.

Layout (local folder or pyarrow URI such as s3://bucket/prefix); <run> is a run id, r<number>-<8 hex>::

    _runs/run-NNNNNN.json         one per run that claimed the output (RunClaim); the highest number is the current run
    _job.json                     the job's fingerprint, the canonical content it hashes and augment_version (written
                                  by each claim, only while it is current)
    _plan.json                    the synthesis plan (augment.synthesis.plan.Plan), written before any shard
    data/shard-NNNNN.<run>.parquet  shard NNNNN as run <run> wrote it, `synthetic` schema, rows in plan order
    data/.shard-NNNNN.<run>.<uuid>.tmp  a shard being written by run <run> (renamed to its run's name when complete)
    _markers/shard-NNNNN.<run>.json  completion marker of run <run>'s shard NNNNN with its stats (ShardStats), last
    _markers/shard-NNNNN.<run>.examples.pq  a few samples (PNG bytes + segmenter prediction) for the sheets, in
                                  Parquet but not named *.parquet, so that no reader takes them for data
    _sheets/<class>.png           per-class contact sheets (label | synthetic | prediction)
    _quarantine.jsonl             planned samples that could not be made (unreadable source map), when any
    _summary.json                 the run's summary (counts, images/s, wall time)
    _README.md, .huggingface.yaml the dataset card (augment.data.card), written just before _dataset.json
    _dataset.json                 written last, once every planned shard is complete: the output is then a dataset;
                                  it lists the exact shard files (one per shard) with their size and sha256
                                  (extra.file_checksums) and is what readers trust

Everything but the shard files is named with a leading "_" or "." (or lies in such a folder), so pyarrow, Ray Data,
DuckDB's `**/*.parquet` and Hugging Face `datasets` read exactly the shard files (see augment.data.layout).

Every Parquet file is written with page checksums (augment.data.dataset.parquet_write_options) and read with their
verification. Names from an augment before per-run names (data/shard-NNNNN.parquet, _markers/shard-NNNNN.json) are
not adopted: such shards are remade once and the old files removed as files of a superseded run. The job-wide files
of an augment before the "_" names (job.json, plan.json, summary.json, dataset.json, quarantine.jsonl, sheets/; see
LEGACY_NAMES) are read where the new name is absent (`OutputFolder.locate`: the job an output belongs to, verify)
and count as files of run 0, so the next run removes them and writes its own; examples named `.examples.parquet`
are files of their run that the output does not use (a resumed output's sheets show the examples of shards made
since).

Content-checked shards
    A marker records its shard file's size and sha256 (of the file bytes, streamed through the pyarrow
    filesystem), computed from the temporary file before it is renamed into place. A shard counts as done when one
    of its markers carries this job's fingerprint and its file is there with that size and checksum (`marker_done`,
    `OutputFolder.verified`; of several, the oldest run's); a shard that is missing, truncated or corrupt is
    therefore not done and is made again, under the new run's names. A marker without a checksum does not count.

Run claims (fencing)
    Each run that takes the output (new, resumed or overwritten) first creates the next `_runs/run-NNNNNN.json`
    (`claim_run`), create-exclusive: on a local filesystem the claim is written to a temporary sibling and
    hard-linked to its name, which fails when the name exists (falling back to `open(..., "x")` where the
    filesystem has no hard links); on S3 with boto3 installed, a conditional put (`If-None-Match: *`); elsewhere
    "absent, then written, then read back" (two runs claiming at the same instant may both proceed, but only the
    one whose claim the object holds passes the commit checks). Of two runs claiming the same number, one wins and
    the other is refused. Its `run_id` is the fencing token: workers carry it (ShardSettings.run_id).
    A shard commit checks the run is current before renaming its temporary file to its run's name, writes the
    examples and then the marker under its run's names, and checks again: a writer superseded by then removes its
    own marker, examples and file (unless the current run is of the same job, which may adopt them). Since every
    name a writer commits carries its run id, a stale writer can never replace another run's file, whenever it
    stalls. A resume of the same job takes over with a new run id and adopts the sound shards of earlier runs of the
    same fingerprint. The job an output belongs to is the current run's fingerprint (job.json's for outputs written
    before run claims).

Removal (what a run deletes, and when)
    Only files with the names above, never anything under `_runs/` (the claims and claims being created are the
    fencing history), and only names of runs no newer than the remover's claim: a run never removes a newer run's
    files. At its claim, a run removes the temporary files of older runs (their writers are fenced off) and the
    files of older runs of other jobs; with `--overwrite` also the job-wide files (job.json, plan.json, sheets,
    summary.json, dataset.json) and every older run's files. `--overwrite` removes anything only in a folder that
    provably belongs to augment (`OutputFolder.belongs_to_augment`: a run claim, or a job.json that `is_job_record`);
    any other folder holding these names is refused and listed, and files with other names are always refused, as is
    a dataset card whose content is not what `_dataset.json` records for it (someone edited it: `edited_cards`).
    At its finish, after the final verify and an ownership check, the run removes every shard file, marker, examples
    and temporary file of its own or an older run that the output does not use. A driver checks it still owns the
    output before each destructive step of its finish and writes nothing once superseded; it re-checks after writing
    dataset.json and takes back a dataset.json that carries its run id when a newer run claimed meanwhile.
    What remains: a check and the step after it are two operations, so a superseded driver can still write one
    job-wide file (sheets, summary.json, dataset.json) in that window; the newer run's finish replaces them, and
    they name only the superseded run's own files.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from augment.data import fs as afs
from augment.data.dataset import INFO_FILE, QUARANTINE_FILE, DatasetInfo, PartStats, own_card_files
from augment.data.layout import CARD_FILES, LEGACY_NAMES as LEGACY_DATASET_NAMES
from augment.core.errors import AugmentError

JOB_FILE = "_job.json"
PLAN_FILE = "_plan.json"
SUMMARY_FILE = "_summary.json"
DATA_DIR = "data"
MARKER_DIR = "_markers"
SHEETS_DIR = "_sheets"
RUNS_DIR = "_runs"
EXAMPLES_SUFFIX = ".examples.pq"
LEGACY_EXAMPLES_SUFFIX = ".examples.parquet"
LEGACY_NAMES = {**LEGACY_DATASET_NAMES, JOB_FILE: "job.json", PLAN_FILE: "plan.json", SUMMARY_FILE: "summary.json",
                SHEETS_DIR: "sheets"}
"""Each job-wide file's (and the sheets folder's) name in outputs written before the "_" names."""
VERIFY_THREADS = 8

_RUN_ID = r"r(\d{6,})-[0-9a-f]{8}"
_TMP_SUFFIX = r"(?:\.tmp-\d+-[0-9a-f]+)?$"
_JOB_WIDE = (JOB_FILE, PLAN_FILE, SUMMARY_FILE, INFO_FILE, QUARANTINE_FILE)


def _top_files(names: list[str], sheets: str) -> re.Pattern[str]:
    """The job-wide files `names`, the contact sheets `<sheets>/<class>.png`, and their temporary files."""
    return re.compile("^(?:" + "|".join(map(re.escape, names)) + f"|{re.escape(sheets)}/[A-Za-z0-9_.-]+\\.png)"
                      + _TMP_SUFFIX)


_TOP_FILES = _top_files([*_JOB_WIDE, *CARD_FILES], SHEETS_DIR)
_LEGACY_TOP_FILES = _top_files([LEGACY_NAMES[n] for n in _JOB_WIDE], LEGACY_NAMES[SHEETS_DIR])
_RUN_PART = re.compile(
    rf"^(?:data/shard-(\d{{5,}})\.{_RUN_ID}\.parquet|_markers/shard-(\d{{5,}})\.{_RUN_ID}"
    rf"(?:\.json|{re.escape(EXAMPLES_SUFFIX)}|{re.escape(LEGACY_EXAMPLES_SUFFIX)}))" + _TMP_SUFFIX
)
_LEGACY_PART = re.compile(r"^(?:data/shard-\d{5,}\.parquet|_markers/shard-\d{5,}\.(?:json|examples\.parquet))"
                          r"(?:\.tmp-\d+-[0-9a-f]+)?$")
_TMP_SHARD = re.compile(rf"^data/\.shard-\d{{5,}}\.(?:{_RUN_ID}\.)?[0-9a-f]+\.tmp$")
_RUN_FILE = re.compile(r"^run-(\d{6,})\.json$")
_MARKER = re.compile(rf"^shard-(\d{{5,}})\.({_RUN_ID})\.json$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def is_temporary(relative: str) -> bool:
    """A file being written (or left by a writer that died): never part of a job's content."""
    return bool(_TMP_SHARD.match(relative) or re.search(r"\.tmp-\d+-[0-9a-f]+$", relative))


def is_run_claim(relative: str) -> bool:
    """A file under `_runs/` (a claim, or a claim being created): never removed by the product."""
    return relative.startswith(f"{RUNS_DIR}/")


def is_product_file(relative: str) -> bool:
    """Whether the name is one this layout gives a file, now or before (see the module docstring); `_runs/` is left
    out."""
    return bool(_TOP_FILES.match(relative) or _RUN_PART.match(relative) or _LEGACY_PART.match(relative)
                or _TMP_SHARD.match(relative) or _LEGACY_TOP_FILES.match(relative))


def run_number(relative: str) -> int | None:
    """The number of the run whose id names this shard file, marker, examples or temporary file (0 for the names of
    an augment from before per-run names, and for job-wide files with the names from before the "_" names); None for
    any other file."""
    if m := _RUN_PART.match(relative):
        return int(m.group(2) or m.group(4))
    if m := _TMP_SHARD.match(relative):
        return int(m.group(1) or 0)
    if _LEGACY_PART.match(relative) or _LEGACY_TOP_FILES.match(relative):
        return 0
    return None


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_file(index: int, run_id: str) -> str:
    """The data file of shard `index` written by run `run_id`, relative to the output folder."""
    return f"{DATA_DIR}/{shard_name(index)}.{run_id}.parquet"


def temporary_shard_file(index: int, run_id: str) -> str:
    """A fresh temporary name for shard `index` written by run `run_id`, relative to the output folder."""
    return f"{DATA_DIR}/.{shard_name(index)}.{run_id}.{os.urandom(16).hex()}.tmp"


def run_file(run: int) -> str:
    return f"{RUNS_DIR}/run-{run:06d}.json"


def is_job_record(record: Any) -> bool:
    """Whether `record` (a parsed job.json) is one augment writes: a mapping with a 64-hex `fingerprint`, a
    `content` mapping and `augment_version`."""
    return (isinstance(record, dict) and isinstance(record.get("fingerprint"), str)
            and bool(_FINGERPRINT.match(record["fingerprint"])) and isinstance(record.get("content"), dict)
            and "augment_version" in record)


@dataclass
class RunClaim:
    """One run's claim on an output; `run_id` is the fencing token its workers carry."""

    run: int
    run_id: str
    fingerprint: str
    host: str = ""
    pid: int = 0
    claimed_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


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
    size: int = 0
    sha256: str = ""
    run_id: str = ""
    precision: str = ""  # the generator's resolved precision ("fp32" or "bf16"; "" in markers written before it)
    below: dict[str, int] | None = None
    """Samples scoring below each filter threshold ({"min_miou": n, ...}; None in markers written before it)."""

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

    def locate(self, name: str) -> str | None:
        """Where the job-wide file `name` (JOB_FILE, PLAN_FILE, INFO_FILE, ...) is in the output: `name`, else its name
        in outputs written before the "_" names (LEGACY_NAMES); None when it is under neither."""
        return next((rel for rel in (name, LEGACY_NAMES.get(name)) if rel and self.exists(rel)), None)

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

    def job_record(self) -> dict[str, Any] | None:
        """The parsed job.json, or None when there is none; AugmentError (one line) when it is not valid JSON or not
        a JSON object."""
        name = self.locate(JOB_FILE) or JOB_FILE
        try:
            record = self.read_json(name)
        except ValueError:
            raise AugmentError(f"{self.uri}/{name} is not valid JSON; remove it or choose another output") from None
        if record is not None and not isinstance(record, dict):
            raise AugmentError(f"{self.uri}/{name} is a JSON {type(record).__name__}, not a job record (an "
                               f"object); remove it or choose another output")
        return record

    def belongs_to_augment(self) -> bool:
        """Whether the folder provably is an augment job's output: it holds a run claim, or a job.json augment
        writes (`is_job_record`). Names alone prove nothing."""
        if self.runs():
            return True
        try:
            return is_job_record(self.job_record())
        except AugmentError:
            return False

    def classify(self) -> tuple[list[str], list[str]]:
        """(files with the names this layout gives, other files) under the output; run claims are in neither. A
        dataset card someone edited (`edited_cards`) is another file."""
        ours, other = [], []
        edited = self.edited_cards()
        for rel in self.relative_files():
            if not is_run_claim(rel):
                (ours if is_product_file(rel) and rel not in edited else other).append(rel)
        return ours, other

    def edited_cards(self) -> set[str]:
        """The dataset card files (`_README.md`, `.huggingface.yaml`) whose content is not what the output's
        `_dataset.json` records for them (augment.data.dataset.own_card_files). Without a readable `_dataset.json`
        (a job not finished, or one killed between writing its card and its info) the names decide."""
        try:
            info = DatasetInfo.from_dict(self.read_json(INFO_FILE) or {}) if self.exists(INFO_FILE) else None
        except (ValueError, TypeError, AugmentError):
            info = None
        if info is None:
            return set()
        return {name for name in CARD_FILES if self.exists(name)} - set(own_card_files(self.fs, self.path, info))

    def remove_job_files(self, files: list[str]) -> None:
        """Delete the listed files of this layout (never anything under `_runs/`), then the layout's folders if they
        are left empty."""
        for rel in files:
            if is_product_file(rel) and not is_run_claim(rel):
                try:
                    self.fs.delete_file(self.full(rel))
                except FileNotFoundError:  # removed meanwhile (a writer discarding its own file)
                    pass
        for folder in (DATA_DIR, MARKER_DIR, SHEETS_DIR, LEGACY_NAMES[SHEETS_DIR]):
            path = self.full(folder)
            if afs.is_dir(self.fs, path) and not self.fs.get_file_info(pafs.FileSelector(path)):
                self.fs.delete_dir(path)

    def read_bytes(self, relative: str) -> bytes:
        return afs.read_bytes(self.fs, self.full(relative))

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create the file with `data` unless it exists; True when this call created it (see the module docstring:
        atomic on a local filesystem and, with boto3, on S3; written-then-read-back elsewhere)."""
        path = self.full(relative)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            return _create_exclusive_local(path, data)
        if self.fs.type_name == "s3" and (put := _s3_conditional_put(self.uri)) is not None:
            return put(path, data)
        if self.exists(relative):
            return False
        self.write_bytes(relative, data)
        return self.read_bytes(relative) == data

    def runs(self) -> list[int]:
        """Numbers of the runs that claimed this output, ascending."""
        return sorted(int(m.group(1)) for info in self._listing(RUNS_DIR) if (m := _RUN_FILE.match(info.base_name)))

    def read_run(self, run: int) -> RunClaim | None:
        """The claim of run `run`, or None when it does not exist; a claim that does not parse is refused."""
        try:
            return RunClaim(**json.loads(self.read_bytes(run_file(run))))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise AugmentError(f"{self.uri}/{run_file(run)}: not a run claim ({exc}); remove it") from None

    def current_run(self) -> RunClaim | None:
        """The newest run's claim (the highest number), or None when no run has claimed the output."""
        runs = self.runs()
        return self.read_run(runs[-1]) if runs else None

    def is_current(self, run_id: str) -> bool:
        """Whether `run_id` is the current run's: the fencing check of every shard commit."""
        current = self.current_run()
        return current is not None and current.run_id == run_id

    def temporaries(self) -> dict[str, int]:
        """{temporary shard file: number of the run writing it} (0 for names from before run claims)."""
        found = {}
        for info in self._listing(DATA_DIR):
            rel = f"{DATA_DIR}/{info.base_name}"
            if _TMP_SHARD.match(rel):
                found[rel] = run_number(rel) or 0
        return found

    def sweep_temporaries(self, upto_run: int) -> list[str]:
        """Remove the temporary shard files of runs numbered up to `upto_run` (see the module docstring for when
        that is safe); returns them."""
        removed = [rel for rel, run in sorted(self.temporaries().items()) if run <= upto_run]
        for rel in removed:
            afs.delete_quietly(self.fs, self.full(rel))
        return removed

    def orphans(self, upto_run: int, keep: set[str], fingerprint: str | None = None) -> list[str]:
        """Shard files, markers, examples and temporary files named by runs numbered up to `upto_run` (0: legacy
        names) that are not in `keep`; with `fingerprint`, only those of runs whose claim is another job's (a run of
        the same job wrote files a resume adopts)."""
        same = {r for r in self.runs() if r <= upto_run and (c := self.read_run(r)) and c.fingerprint == fingerprint}
        found = []
        for rel in self.relative_files():
            run = run_number(rel)
            if run is None or run > upto_run or rel in keep:
                continue
            if fingerprint is not None and run in same and not is_temporary(rel):
                continue
            found.append(rel)
        return found

    def _listing(self, folder: str) -> list[pafs.FileInfo]:
        path = self.full(folder)
        if not afs.is_dir(self.fs, path):
            return []
        return [i for i in self.fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]

    def markers(self) -> list[tuple[int, int, str]]:
        """(shard, run number, run id) of every marker with a per-run name, by shard then run."""
        found = []
        for info in self._listing(MARKER_DIR):
            if m := _MARKER.match(info.base_name):
                found.append((int(m.group(1)), int(m.group(3)), m.group(2)))
        return sorted(found)

    def completed(self, fingerprint: str) -> dict[int, ShardStats]:
        """{shard: stats of its oldest run's marker that belongs to the job with `fingerprint`} (files unchecked)."""
        return {k: sts[0] for k, sts in self.candidates(fingerprint).items()}

    def candidates(self, fingerprint: str) -> dict[int, list[ShardStats]]:
        """{shard: stats of its markers that belong to the job with `fingerprint`, oldest run first}."""
        done: dict[int, list[ShardStats]] = {}
        for shard, _, run_id in self.markers():
            stats = read_marker(self, shard, run_id)
            if stats is not None and stats.fingerprint == fingerprint:
                done.setdefault(shard, []).append(stats)
        return done

    def verified(self, fingerprint: str, shards: int) -> tuple[dict[int, ShardStats], dict[int, str]]:
        """(sound, problems) among the first `shards` shards with a marker of this job: `sound` has, per shard, the
        stats of the oldest run's marker whose file matches it (size and sha256); `problems` says what is wrong with
        a shard none of whose markers has a sound file."""
        marked = {k: sts for k, sts in self.candidates(fingerprint).items() if k < shards}
        flat = [st for sts in marked.values() for st in sts]
        with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as pool:
            found = list(zip(flat, pool.map(lambda st: shard_problem(self, st), flat)))
        sound: dict[int, ShardStats] = {}
        problems: dict[int, str] = {}
        for st, problem in found:
            if problem is None:
                sound.setdefault(st.shard, st)
            else:
                problems.setdefault(st.shard, problem)
        return sound, {k: p for k, p in sorted(problems.items()) if k not in sound}


def marker_file(index: int, run_id: str) -> str:
    return f"{MARKER_DIR}/{shard_name(index)}.{run_id}.json"


def examples_file(index: int, run_id: str) -> str:
    return f"{MARKER_DIR}/{shard_name(index)}.{run_id}{EXAMPLES_SUFFIX}"


def read_marker(out: OutputFolder, index: int, run_id: str | None = None) -> ShardStats | None:
    """The stats in shard `index`'s marker written by run `run_id` (None: by the oldest run that left one), or None
    when absent or unreadable (an unreadable marker means: not done)."""
    if run_id is None:
        runs = [r for shard, _, r in out.markers() if shard == index]
        if not runs:
            return None
        run_id = runs[0]
    try:
        return ShardStats.from_json(afs.read_bytes(out.fs, out.full(marker_file(index, run_id))))
    except (FileNotFoundError, OSError, ValueError, TypeError):
        return None


def write_marker(out: OutputFolder, stats: ShardStats) -> None:
    out.write_bytes(marker_file(stats.shard, stats.run_id), stats.to_json().encode())


def shard_problem(out: OutputFolder, stats: ShardStats) -> str | None:
    """What is wrong with the shard file its marker describes ("file missing", "checksum mismatch", ...), or None
    when the file is there with the marker's size and sha256."""
    if not stats.sha256:
        return "its marker has no checksum (written by an older augment)"
    if stats.file != shard_file(stats.shard, stats.run_id):
        return f"its marker names {stats.file!r}, not {shard_file(stats.shard, stats.run_id)}"
    info = out.fs.get_file_info(out.full(stats.file))
    if info.type != pafs.FileType.File:
        return "file missing"
    if info.size != stats.size:
        return f"{info.size} bytes, its marker says {stats.size} (truncated or replaced)"
    try:
        size, digest = afs.size_and_sha256(out.fs, out.full(stats.file))
    except FileNotFoundError:
        return "file missing"
    if size != stats.size or digest != stats.sha256:
        return "checksum mismatch"
    return None


def marker_done(out: OutputFolder, index: int, fingerprint: str) -> ShardStats | None:
    """The shard's stats when it is complete for this job (a marker of this fingerprint, by any run, whose file
    matches it), else None."""
    for stats in out.candidates(fingerprint).get(index, []):
        if shard_problem(out, stats) is None:
            return stats
    return None


def claim_run(out: OutputFolder, fingerprint: str, seen: RunClaim | None) -> RunClaim:
    """Claim the output for a new run of the job `fingerprint`: create the claim numbered one past `seen` (the
    current claim the caller decided on, None when there was none). Raises AugmentError when another run made that
    claim first."""
    run = (seen.run if seen is not None else 0) + 1
    claim = RunClaim(run=run, run_id=f"r{run:06d}-{os.urandom(4).hex()}", fingerprint=fingerprint,
                     host=socket.gethostname(), pid=os.getpid(),
                     claimed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        created = out.create_exclusive(run_file(run), claim.to_json().encode())
    except FileNotFoundError:
        raise AugmentError(f"{out.uri}: the claim {run_file(run)} being created vanished (something removed files "
                           f"under {RUNS_DIR}/); rerun") from None
    if not created:
        other = out.read_run(run)
        whose = f"job {other.fingerprint[:12]} on {other.host} pid {other.pid}" if other else "unknown"
        raise AugmentError(
            f"{out.uri}: another run claimed this output at the same moment ({run_file(run)}: {whose}); "
            f"choose another output, or rerun to take it over if it is the same job"
        )
    return claim


def _create_exclusive_local(path: str, data: bytes) -> bool:
    """Create a local file with `data` unless it exists: a hard link of a complete temporary sibling, so the name
    never shows partial content (where hard links are unsupported, `open(path, "xb")`). FileNotFoundError when the
    temporary file vanished before it was linked."""
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
        return True
    except (FileExistsError, FileNotFoundError):
        if not os.path.exists(tmp):
            raise FileNotFoundError(tmp) from None
        return False
    except OSError:
        try:
            with open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _s3_conditional_put(uri: str) -> Any:
    """A function (path "bucket/key", data) -> whether it created the object, through boto3's conditional put
    (`If-None-Match: *`) to the endpoint the URI names; None when boto3 is not installed."""
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError:
        return None
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region"))

    def put(path: str, data: bytes) -> bool:
        bucket, key = path.split("/", 1)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise AugmentError(f"{uri}: could not create {key}: {exc}") from None

    return put


__all__ = [
    "DATA_DIR", "EXAMPLES_SUFFIX", "INFO_FILE", "JOB_FILE", "LEGACY_NAMES", "MARKER_DIR", "OutputFolder", "PLAN_FILE",
    "QUARANTINE_FILE", "RUNS_DIR", "RunClaim", "SHEETS_DIR", "SUMMARY_FILE", "ShardStats", "claim_run", "examples_file",
    "is_job_record", "is_product_file", "is_run_claim", "is_temporary", "marker_done", "marker_file", "read_marker", "run_file",
    "run_number", "shard_file", "shard_name", "shard_problem", "temporary_shard_file", "write_marker",
]
