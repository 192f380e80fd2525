"""`augment ingest` and `augment example-data`: write an augment Parquet dataset in parallel Ray tasks.

The driver lists the samples, cuts them into contiguous chunks and runs one Ray task per chunk (a bounded number
in flight). Each task writes its own part files `part-<chunk:05d>-NNNN.parquet` into the staging folder and
returns its PartStats; the driver merges them in chunk order, so the dataset's row order does not depend on how
many workers ran, and commits. Bad samples are quarantined by the tasks and the run goes on.

`match` (`--match REGEX`, every format) keeps only the pairs whose source image file name matches; the rest are
left out (not quarantined: they are not bad), and the lineage records the pattern and both counts. A format that
knows its images' sequences (`sequence_of(name)`, CamVid) also gets in the lineage the pairs given to the tasks
per sequence (a pair quarantined there still counts: the counts are of the selection, not of rows).
"""

from __future__ import annotations

import io
import math
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import ray
from PIL import Image
from tqdm import tqdm

import augment
from augment.data import example
from augment.data.codec import (
    MAX_PIXELS,
    check_same_size,
    class_pixels,
    decode_image,
    decode_mask,
    encode_image,
    encode_mask,
    image_format,
    resize_image,
    resize_mask,
)
from augment.data.dataset import DatasetInfo, PartStats, PartWriter, StagedOutput, make_row
from augment.data.formats.base import Discovery, LabelSet, SourcePair
from augment.core.errors import AugmentError, BadSample, DatasetError
from augment.core.cluster import cluster_cpus, imap_unordered, init_ray

FORMATS = ("camvid", "cityscapes", "voc", "folder")
DEFAULT_SPLIT = "train"
TARGET_CHUNK_BYTES = 128 << 20
MIN_CHUNK_ROWS = 64
MAX_CHUNK_ROWS = 1024
PROGRESS_EVERY = 8


@dataclass
class WriteResult:
    """What a parallel write produced, for the summary line."""

    out: str
    rows: int
    quarantined: int
    files: int
    seconds: float

    def summary(self, verb: str) -> str:
        return (
            f"{verb} {self.rows} rows ({self.quarantined} quarantined) into {self.files} Parquet file(s) "
            f"in {self.seconds:.1f} s: {self.out}"
        )


def format_module(name: str) -> ModuleType:
    if name not in FORMATS:
        raise AugmentError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return import_module(f"augment.data.formats.{name}")


def chunk_rows(n: int, bytes_per_row: int, workers: int, min_rows: int = MIN_CHUNK_ROWS) -> int:
    """Rows per task: about TARGET_CHUNK_BYTES of data, spread over `workers`, never fewer than `min_rows`."""
    by_bytes = TARGET_CHUNK_BYTES // max(bytes_per_row, 1)
    return max(min_rows, min(by_bytes, math.ceil(n / max(workers, 1)), MAX_CHUNK_ROWS))


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------------------------------------------
# One sample


def ingest_pair(
    pair: SourcePair, labels: LabelSet, size: tuple[int, int] | None, root: str = "", max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """A dataset row from one source image/mask pair; raises BadSample when the pair cannot be used.

    Without `size` an RGB PNG/JPEG keeps its original bytes; other images are stored as PNG.
    The mask is always stored as a single-channel PNG of class indices after the format's label mapping.
    An image or mask whose header claims more than `max_pixels` pixels is not decoded (BadSample).
    """
    image_bytes = _read(pair.image, "image")
    image = decode_image(image_bytes, pair.image, max_pixels)
    raw = decode_mask(_read(pair.mask, "mask"), pair.mask, max_pixels)
    check_same_size(image, raw, pair.mask)
    mask = labels.map(raw, pair.mask)
    stem = Path(pair.image).stem
    fmt = image_format(image_bytes)
    if size is not None:
        image, mask = resize_image(image, size), resize_mask(mask, size)
        image_bytes, fmt = encode_image(image, "png"), "png"
    elif fmt is None or _mode(image_bytes) != "RGB":
        image_bytes, fmt = encode_image(image, "png"), "png"
    pixels = class_pixels(mask, len(labels.classes), labels.ignore_index, pair.mask)
    row = make_row(
        pair.id, image_bytes, encode_mask(mask), mask.shape[0], mask.shape[1], pair.split, pixels,
        image_name=_relative(pair.image, root), mask_name=_relative(pair.mask, root),
    )
    row["image"]["path"] = f"{stem}.{'jpg' if fmt == 'jpeg' else 'png'}"
    row["mask"]["path"] = f"{stem}_mask.png"
    return row


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadSample(f"cannot read {what} ({exc.strerror or exc})", path) from exc


def _mode(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return im.mode


def _relative(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root)) if root else path
    except ValueError:
        return path


# ---------------------------------------------------------------------------------------------------------------
# Ray tasks


@ray.remote(num_cpus=0)
class _Progress:
    """Rows done across all tasks, polled by the driver's progress bar."""

    def __init__(self) -> None:
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    def value(self) -> int:
        return self.done


class _Reporter:
    def __init__(self, progress: Any) -> None:
        self.progress, self.pending = progress, 0

    def tick(self, final: bool = False) -> None:
        self.pending += 0 if final else 1
        if self.pending and (final or self.pending >= PROGRESS_EVERY):
            self.progress.add.remote(self.pending)
            self.pending = 0


@ray.remote(num_cpus=1)
def _ingest_chunk(
    chunk: int, filesystem: Any, staging: str, progress: Any,
    pairs: Sequence[SourcePair], labels: LabelSet, size: tuple[int, int] | None, root: str, max_pixels: int,
) -> tuple[int, PartStats]:
    writer = PartWriter(filesystem, staging, f"part-{chunk:05d}", "sample", len(labels.classes))
    reporter = _Reporter(progress)
    for pair in pairs:
        try:
            row = ingest_pair(pair, labels, size, root, max_pixels)
        except BadSample as exc:
            writer.quarantine(exc.source or pair.image, exc.reason, id=pair.id, split=pair.split)
        else:
            writer.write(row)
        reporter.tick()
    reporter.tick(final=True)
    return chunk, writer.close()


def example_rows(start: int, stop: int, size: tuple[int, int], seed: int, split: str) -> Iterator[dict[str, Any]]:
    """Rows `start..stop-1` of the example dataset; each depends only on (seed, index)."""
    for index in range(start, stop):
        sample_id, image, mask = example.render_sample(index, size, seed)
        pixels = class_pixels(mask, len(example.CLASSES), example.IGNORE_INDEX, sample_id)
        stem = sample_id.replace("/", "_")
        yield make_row(
            f"{split}/{stem}", encode_image(image, "png"), encode_mask(mask), size[0], size[1], split, pixels,
            image_name=f"{stem}.png", mask_name=f"{stem}_mask.png",
        )


@ray.remote(num_cpus=1)
def _example_chunk(
    chunk: int, filesystem: Any, staging: str, progress: Any,
    start: int, stop: int, size: tuple[int, int], seed: int, split: str,
) -> tuple[int, PartStats]:
    writer = PartWriter(filesystem, staging, f"part-{chunk:05d}", "sample", len(example.CLASSES))
    reporter = _Reporter(progress)
    for row in example_rows(start, stop, size, seed, split):
        writer.write(row)
        reporter.tick()
    reporter.tick(final=True)
    return chunk, writer.close()


# ---------------------------------------------------------------------------------------------------------------
# Driver


def _poll_progress(progress: Any, bar: tqdm, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        try:
            bar.update(ray.get(progress.value.remote(), timeout=5) - bar.n)
        except ray.exceptions.GetTimeoutError:
            continue


def write_parallel(
    out: str,
    task: Callable[..., Any],
    make_chunks: Callable[[int], Sequence[tuple[Any, ...]]],
    total: int,
    info: DatasetInfo,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    quarantine: Sequence[dict[str, str]] = (),
    inputs: Sequence[str] = (),
    desc: str = "writing",
) -> WriteResult:
    """Run `task.remote(chunk, fs, staging, progress, *args)` per chunk, merge the stats and commit the dataset.

    `make_chunks(workers)` gives each chunk's `args`. `quarantine` holds records the driver found itself (orphan
    files); they come first in quarantine.jsonl. `inputs` are the folders the command reads: `out` must be apart
    from them (see StagedOutput, which also decides what an existing `out` may be). Raises DatasetError when no row
    was written; then nothing is left at `out`.
    """
    started = time.time()
    try:
        merged = _run_chunks(out, task, make_chunks, total, info, workers, overwrite, quarantine, inputs, desc)
    except OSError as exc:
        raise AugmentError(f"{out}: cannot write the dataset ({exc})") from None
    return WriteResult(out, merged.rows, len(merged.quarantine), len(merged.files), time.time() - started)


def _run_chunks(
    out: str,
    task: Callable[..., Any],
    make_chunks: Callable[[int], Sequence[tuple[Any, ...]]],
    total: int,
    info: DatasetInfo,
    workers: int | None,
    overwrite: bool,
    quarantine: Sequence[dict[str, str]],
    inputs: Sequence[str],
    desc: str,
) -> PartStats:
    with StagedOutput(out, overwrite=overwrite, inputs=inputs) as staged:
        init_ray()
        in_flight = workers or cluster_cpus()
        chunk_args = make_chunks(in_flight)
        progress = _Progress.remote()
        args = ((i, staged.fs, staged.staging, progress, *a) for i, a in enumerate(chunk_args))
        results: dict[int, PartStats] = {}
        stop = threading.Event()
        try:
            with tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True) as bar:
                poller = threading.Thread(target=_poll_progress, args=(progress, bar, stop), daemon=True)
                poller.start()
                try:
                    for chunk, stats in imap_unordered(task, args, in_flight):
                        results[chunk] = stats
                finally:
                    stop.set()
                    poller.join()
                bar.update(total - bar.n)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, (AugmentError, OSError)):
                raise AugmentError(str(exc.cause)) from None
            raise
        finally:
            ray.kill(progress)
        merged = PartStats(info.num_classes, quarantine=list(quarantine))
        for chunk in sorted(results):
            merged.merge(results[chunk])
        if merged.rows == 0:
            first = merged.quarantine[0] if merged.quarantine else None
            raise DatasetError(
                f"no valid samples to write ({len(merged.quarantine)} quarantined"
                + (f"; first: {first['source']}: {first['reason']})" if first else ")")
            )
        info.apply_stats(merged)
        staged.commit(info, merged.quarantine)
    return merged


def _pick_splits(fmt: ModuleType, root: Path, split: str) -> list[str]:
    found = fmt.find_splits(root)
    if not found:
        return [DEFAULT_SPLIT if split == "all" else split]
    if split == "all":
        return getattr(fmt, "all_splits", lambda s: s)(found)
    if split not in found:
        raise DatasetError(f"{root}: no split {split!r} (found: {', '.join(found)})")
    return [split]


def select_pairs(pairs: Sequence[SourcePair], pattern: str) -> list[SourcePair]:
    """The pairs whose source image file name (its folders left out) matches the regular expression `pattern`
    (`re.search`), in their order; AugmentError when `pattern` is not a regular expression."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise AugmentError(f"--match {pattern!r} is not a regular expression ({exc})") from None
    return [pair for pair in pairs if regex.search(Path(pair.image).name)]


def pairs_per_sequence(fmt: ModuleType, pairs: Sequence[SourcePair]) -> dict[str, int] | None:
    """{sequence: pairs}, sorted by name, for a format with `sequence_of`; None for other formats or when an
    image's name carries no sequence."""
    sequence_of = getattr(fmt, "sequence_of", None)
    if sequence_of is None:
        return None
    try:
        counts = Counter(sequence_of(Path(pair.image).name) for pair in pairs)
    except AugmentError:
        return None
    return dict(sorted(counts.items()))


def _bytes_per_row(pairs: Sequence[SourcePair], size: tuple[int, int] | None) -> int:
    if size is not None:
        return size[0] * size[1] * 2
    sample = pairs[:: max(1, len(pairs) // 16)][:16]
    sizes = [Path(p.image).stat().st_size + Path(p.mask).stat().st_size for p in sample]
    return int(sum(sizes) / max(len(sizes), 1))


def ingest(
    src: str,
    fmt_name: str,
    out: str,
    split: str | None = None,
    size: tuple[int, int] | None = None,
    classes: str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    command: str = "",
    max_pixels: int = MAX_PIXELS,
    match: str | None = None,
) -> WriteResult:
    """Ingest the dataset at `src` laid out as `fmt_name` into a new augment dataset at `out`.

    Files over `max_pixels` pixels are quarantined undecoded. `out` may not be `src`, inside it or hold it.
    With `match`, only the pairs `select_pairs` keeps are ingested (DatasetError when none is); files the
    listing found unpaired or unusable are quarantined whatever their name.
    """
    fmt = format_module(fmt_name)
    root = Path(src).resolve()
    if not root.is_dir():
        raise DatasetError(f"{src}: no such folder")
    if classes is not None and fmt_name != "folder":
        raise AugmentError(f"--classes applies to --format folder only ({fmt_name} has fixed classes)")
    splits = _pick_splits(fmt, root, split or DEFAULT_SPLIT)
    labels = fmt.label_set(root, classes)
    found = Discovery()
    for name in splits:
        found.extend(fmt.discover(root, name))
    if not found.pairs:
        raise DatasetError(
            f"{root}: no image/mask pairs found for split(s) {', '.join(splits)} as {fmt_name}"
            + (f" ({len(found.orphans)} unpaired files, e.g. {found.orphans[0]['source']})" if found.orphans else "")
        )
    selection = None
    if match is not None:
        kept = select_pairs(found.pairs, match)
        if not kept:
            raise DatasetError(
                f"{root}: no image file name of the {len(found.pairs)} pairs in split(s) {', '.join(splits)} "
                f"matches --match {match!r} (e.g. {Path(found.pairs[0].image).name})"
            )
        selection = {"pattern": match, "kept": len(kept), "left_out": len(found.pairs) - len(kept)}
        found.pairs = kept
    bytes_per_row = _bytes_per_row(found.pairs, size)

    def make_chunks(workers: int) -> list[tuple[Any, ...]]:
        per_chunk = chunk_rows(len(found.pairs), bytes_per_row, workers)
        return [(chunk, labels, size, str(root), max_pixels) for chunk in _chunks(found.pairs, per_chunk)]

    info = DatasetInfo(
        classes=list(labels.classes),
        palette=[list(c) for c in labels.palette],
        ignore_index=labels.ignore_index,
        lineage={
            "source": str(root),
            "format": fmt_name,
            "splits": splits,
            "size": list(size) if size else None,
            "max_pixels": max_pixels,
            "augment_version": augment.__version__,
            "command": command,
        },
    )
    if selection is not None:
        info.lineage["match"] = selection
    sequences = pairs_per_sequence(fmt, found.pairs)
    if sequences is not None:
        info.lineage["sequences"] = sequences
    return write_parallel(
        out, _ingest_chunk, make_chunks, len(found.pairs), info,
        workers=workers, overwrite=overwrite, quarantine=found.orphans, inputs=[str(root)], desc=f"ingest {fmt_name}",
    )


def write_example_data(
    out: str,
    n: int,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    split: str = DEFAULT_SPLIT,
    overwrite: bool = False,
    workers: int | None = None,
    rows_per_chunk: int | None = None,
    command: str = "",
) -> WriteResult:
    """Write `n` procedural street scenes; the rows depend only on (n, size, seed, split), not on `workers`."""
    if seed < 0:
        raise AugmentError(f"--seed must be >= 0, got {seed}")
    example.generate(0, size, seed)

    def make_chunks(workers: int) -> list[tuple[Any, ...]]:
        per_chunk = rows_per_chunk or chunk_rows(n, size[0] * size[1] * 2, workers)
        return [(start, min(start + per_chunk, n), size, seed, split) for start in range(0, n, per_chunk)]

    info = DatasetInfo(
        classes=list(example.CLASSES),
        palette=[list(c) for c in example.PALETTE],
        ignore_index=example.IGNORE_INDEX,
        lineage={
            "source": "procedural",
            "generator": example.__name__,
            "seed": seed,
            "n": n,
            "size": list(size),
            "splits": [split],
            "augment_version": augment.__version__,
            "command": command,
        },
    )
    return write_parallel(out, _example_chunk, make_chunks, n, info, workers=workers, overwrite=overwrite,
                          desc="example-data")
