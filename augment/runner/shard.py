"""The shard processor: one per worker, models loaded once, turning planned samples into a Parquet shard.

For each batch of a shard: the source label maps are decoded and edited on a thread pool (one batch ahead), the
generator and the segmenter run on the device back to back, and PNG encoding of the results runs on the thread
pool while the next batch is on the device. Rows stream into `data/.shard-NNNNN.<run>.<uuid>.tmp` in plan order
(Parquet with page checksums); when the shard is complete its size and sha256 are read back from the file, the
worker checks its run still owns the output (the fencing check, augment.runner.markers), the file is renamed to
`data/shard-NNNNN.<run>.parquet` (a name of this run only, so it never replaces another run's file), then the
examples and finally the marker with the size and checksum are written under names of this run too, and the run is
checked again. A worker whose run was superseded before the rename discards its shard (removes its temporary file,
renames nothing, writes no marker); one superseded while it committed removes its own marker, examples and file
(unless the newer run is of the same job, which may adopt them); either returns a stale report instead of stats.
Memory holds about three batches.

Stage timings: set `ShardProcessor.timings` to a dict and `run` adds the busy seconds of each stage to it (see
`STAGES`; pool stages are timed on their threads, so they overlap the device stages and the sum exceeds the wall
time). On CUDA the device stages are then timed with a synchronize after each, which costs a little throughput.

`ShardProcessor` is a plain class; the job runner wraps it in a Ray actor.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from augment.data.codec import class_pixels, decode_image, decode_mask, encode_image, encode_mask
from augment.data import fs as afs
from augment.data.lookup import RowLookup
from augment.data.dataset import (
    ROW_GROUP_BYTES, PartStats, make_row, open_dataset, open_parquet, parquet_write_options,
)
from augment.data.schema import arrow_schema
from augment.core.errors import BadSample
from augment.core.device import RESOLVED_PRECISIONS, pick_device
from augment.filtering.quality import FilterConfig, accept, below_thresholds, pixel_ignore_masks, score_batch
from augment.filtering.region import RegionFilterConfig, accept_regions, pixel_rule, region_iou
from augment.models.segmenter import segment
from augment.runner.markers import (
    DATA_DIR, OutputFolder, ShardStats, examples_file, marker_done, marker_file, shard_file, shard_name,
    temporary_shard_file, write_marker,
)
from augment.synthesis.composite import insertion_box, placed_region
from augment.synthesis.edit import apply_edits
from augment.synthesis.fill import fill_batch, source_object
from augment.synthesis.insert_plan import PlannedInsertion
from augment.synthesis.generate import synthesise
from augment.synthesis.plan import PlannedSample
from augment.models.store import CheckpointError, load_generator, load_segmenter
from augment.training.transforms import normalize

SYNTHETIC_SPLIT = "train"
STAGES = {
    "decode": "read the source label maps from Parquet, decode and edit them (thread pool)",
    "generate": "noise + generator forward, incl. the masks' copy to the device",
    "segment": "normalise + segmenter forward",
    "score": "scores, filter verdicts, pixel-ignore masks and the copy of the results to the CPU",
    "encode": "PNG encoding of accepted images and masks (thread pool)",
    "write": "Parquet row groups and contact-sheet examples",
    "wait": "the device loop blocked on the thread pool (decode or encode behind)",
}
ROW_GROUP_ROWS = 64
# zlib level of the synthetic images' PNGs: the fastest, trading a few bytes for CPU time, since on a GPU worker PNG
# encoding is the stage that must keep up with the device (figures: docs/results.md).
PNG_COMPRESS_LEVEL = 1
EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("target_class", pa.int32()), ("accepted", pa.bool_()), ("caption", pa.string()),
    ("image", pa.binary()), ("mask", pa.binary()), ("pred", pa.binary()),
    # modes paste and insert only (null in mode scene): the host before the insertion, the object's source crop,
    # its shape (0/1) and the placed object's box (top, left, bottom, right) in the host
    ("host", pa.binary()), ("object", pa.binary()), ("object_shape", pa.binary()), ("box", pa.list_(pa.int32())),
])


@dataclass(frozen=True)
class SynthesisSettings:
    """How a worker turns planned samples into rows: built once on the driver when the job is prepared
    (augment.runner.job.prepare_job) and sent to every worker as it is. `precision` is resolved ("fp32" or
    "bf16", never "auto"): every worker of a job computes in the same arithmetic."""

    filter: FilterConfig
    keep_rejected: bool
    noise: str
    precision: str
    batch_size: int
    sheets: int
    mode: str = "scene"
    """scene: whole images from edited label maps (PlannedSample); paste or insert: a real object put into a real
    host (PlannedInsertion, augment.synthesis.fill), scored by `region`."""
    band: int = 0
    dilation: int = 0
    """Mode insert: the hole's dilation (resolved from the generator's card when the job file gives none)."""
    region: RegionFilterConfig | None = None
    class_means: tuple[float | None, ...] | None = None
    """With `region.pixel_rule`: the real-data segmenter's mean loss per class on the real training images."""

    def __post_init__(self) -> None:
        if self.precision not in RESOLVED_PRECISIONS:
            raise ValueError(f"a worker's precision must be resolved to one of {RESOLVED_PRECISIONS}, "
                             f"got {self.precision!r}")
        if self.inserts and self.region is None:
            raise ValueError(f"mode {self.mode} needs its region filter")
        if self.inserts and self.region.pixel_rule and self.class_means is None:
            raise ValueError("the pixel rule needs the class means")

    @property
    def inserts(self) -> bool:
        return self.mode != "scene"

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change what is written, for the job's fingerprint (augment.runner.job):

        - filter: which samples pass, and with pixel_ignore the masks written;
        - keep_rejected: whether rejected samples are written too (rows with accepted = false), so it changes the
          rows and what the final check expects;
        - noise: the images;
        - precision (resolved): the images' arithmetic; bf16 images differ slightly from fp32 ones, so shards of
          both must never sit under one fingerprint.

        Left out: batch_size, like the other resources, is how the work is cut, not what it makes (in fp32 on a
        CPU an image has the same bytes at any batch size); sheets only picks the contact-sheet examples, which
        are not rows.

        Modes paste and insert record the mode, band, dilation and region filter instead of the whole-image filter
        and noise they do not use; mode scene records exactly what version 1 jobs did, so their outputs resume."""
        if self.inserts:
            return {"mode": self.mode, "band": self.band, "dilation": self.dilation,
                    "region_filter": asdict(self.region), "keep_rejected": self.keep_rejected,
                    "precision": self.precision}
        return {"filter": asdict(self.filter), "keep_rejected": self.keep_rejected, "noise": self.noise,
                "precision": self.precision}


@dataclass(frozen=True)
class ShardSettings:
    """What a worker needs to make shards of one job, sent once per worker (Ray pickles it); `run_id` is the run's
    claim on the output (augment.runner.markers.claim_run), checked at every shard commit."""

    data: str
    generator: str | None
    segmenter: str
    output: str
    fingerprint: str
    classes: list[str]
    ignore_index: int
    generator_sha256: str | None
    segmenter_sha256: str
    run_id: str
    synthesis: SynthesisSettings
    threads: int = 1


@dataclass
class _Prepared:
    """The label maps of one batch, after edits; samples whose source could not be read are quarantined."""

    samples: list[Any]
    masks: list[np.ndarray]
    quarantined: list[dict[str, str]]
    seconds: float = 0.0
    hosts: list[np.ndarray] = field(default_factory=list)
    """Modes paste and insert: the host images; `masks` are the host masks."""
    sources: list[tuple[np.ndarray | None, np.ndarray]] = field(default_factory=list)
    """Modes paste and insert: (source image, source mask) of each sample's object (the image read for paste and
    for contact-sheet examples only)."""


@dataclass
class _Encoded:
    rows: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    seconds: float = 0.0


@dataclass
class _Tally:
    """What one shard has made so far: counts per class, rejected ids, quarantine, contact-sheet examples."""

    classes: list[str]
    sheets: int
    stats: PartStats
    generated: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_ids: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    slots: Counter[tuple[int, bool]] = field(default_factory=Counter)
    below: Counter[str] = field(default_factory=Counter)

    def judge(self, samples: list[PlannedSample], accepted: list[bool], below: dict[str, list[bool]]) -> list[bool]:
        """Count the filter's verdicts and, per threshold key, the samples `below` it; returns which samples to
        keep as examples (the first `sheets` per slot)."""
        chosen = []
        self.generated += len(samples)
        self.below.update({key: sum(flags) for key, flags in below.items()})
        for sample, ok in zip(samples, accepted):
            (self.accepted if ok else self.rejected)[self.classes[sample.target_class]] += 1
            if not ok:
                self.rejected_ids.append(sample.sample_id)
            slot = (sample.target_class, bool(ok))
            chosen.append(self.slots[slot] < self.sheets)
            self.slots[slot] += chosen[-1]
        return chosen

    def add(self, encoded: _Encoded) -> list[dict[str, Any]]:
        """Take an encoded batch's examples and statistics; returns its rows."""
        for row in encoded.rows:
            self.stats.add_row(row["height"], row["width"], row["split"], np.asarray(row["class_pixels"]))
        self.examples += encoded.examples
        return encoded.rows


class ShardProcessor:
    """Loads the generator, the segmenter and the dataset once; `run` makes one shard."""

    def __init__(self, settings: ShardSettings, device: str | None = None) -> None:
        self.settings = s = settings
        self.device = pick_device(device)
        torch.set_num_threads(max(1, s.threads))
        self.generator, gen_card = (None, None) if s.generator is None else load_generator(s.generator, self.device)
        self.segmenter, seg_card = load_segmenter(s.segmenter, self.device)
        self.segmenter.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        for what, card, expected in (("generator", gen_card, s.generator_sha256),
                                     ("segmenter", seg_card, s.segmenter_sha256)):
            if card is None:
                continue
            if card.weights_sha256 != expected:
                raise CheckpointError(
                    f"{what} weights changed since the job was validated (sha256 {card.weights_sha256[:12]}, "
                    f"expected {expected[:12]}); rerun the job"
                )
        self.normalize_mode = seg_card.model_config.get("normalize", "imagenet")
        self.synthesis = s.synthesis
        self.dataset = open_dataset(s.data)
        self.sources: RowLookup | None = None
        self.out = OutputFolder(s.output)
        self.schema = arrow_schema("synthetic")
        self.pool_size = max(2, s.threads)
        self.pool = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="shard-io")
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.node = _ray_node_id()
        self.shards_made = 0
        self.timings: dict[str, float] | None = None

    def run(self, shard: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Make shard `shard` from its planned samples (PlannedSample dicts) unless it is already complete.

        Returns the shard's ShardStats as a dict, with "skipped": True when it was already complete (marker and a file
        matching it), or {"stale": True, "shard", "message"} when this worker's run no longer owns the output.
        """
        s = self.settings
        if not self.out.is_current(s.run_id):
            return self._stale(shard, "not started")
        done = marker_done(self.out, shard, s.fingerprint)
        if done is not None:
            return {**asdict(done), "skipped": True}
        start = time.perf_counter()
        planned = ([PlannedInsertion.from_dict(d) for d in samples] if self.synthesis.inserts
                   else [PlannedSample(**d) for d in samples])
        tally = _Tally(s.classes, self.synthesis.sheets, PartStats(len(s.classes)))
        tmp = self.out.full(temporary_shard_file(shard, s.run_id))
        final = self.out.full(shard_file(shard, s.run_id))
        self.out.fs.create_dir(self.out.full(DATA_DIR), recursive=True)
        try:
            with self.out.fs.open_output_stream(tmp) as sink, \
                    pq.ParquetWriter(sink, self.schema, **parquet_write_options(self.schema)) as writer:
                self._write_rows(planned, writer, tally)
            size, sha256 = afs.size_and_sha256(self.out.fs, tmp)
        except BaseException as exc:
            afs.delete_quietly(self.out.fs, tmp)
            if isinstance(exc, Exception) and not self.out.is_current(s.run_id):
                return self._stale(shard, "its temporary file was removed by the newer run")  # swept at its claim
            raise
        if not self.out.is_current(s.run_id):
            afs.delete_quietly(self.out.fs, tmp)
            return self._stale(shard, "its file was discarded, nothing renamed")
        try:
            self.out.fs.move(tmp, final)  # a name of this run only: it never replaces another run's file
        except OSError:
            if not self.out.is_current(s.run_id):  # a newer run swept our temporary file
                return self._stale(shard, "its temporary file was removed by the newer run, nothing renamed")
            raise
        if self.synthesis.sheets:
            t = time.perf_counter()
            self._write_examples(shard, tally.examples)
            self._clock("write", t)
        stats = ShardStats(
            shard=shard, fingerprint=s.fingerprint, file=shard_file(shard, s.run_id), rows=tally.stats.rows,
            generated=tally.generated, accepted=dict(tally.accepted), rejected=dict(tally.rejected),
            rejected_ids=tally.rejected_ids, quarantined=tally.quarantined, part=asdict(tally.stats),
            seconds=round(time.perf_counter() - start, 3), worker=self.worker, node=self.node,
            attempt_id=uuid.uuid4().hex[:12], examples=len(tally.examples), size=size, sha256=sha256,
            run_id=s.run_id, precision=self.synthesis.precision, below=dict(tally.below),
        )
        write_marker(self.out, stats)
        current = self.out.current_run()
        if current is None or current.run_id != s.run_id:
            if current is None or current.fingerprint != s.fingerprint:
                self._discard(shard)
                return self._stale(shard, "the newer run claimed the output as it committed; its files were removed")
            return self._stale(shard, "it committed as a newer run of the same job claimed the output, which may "
                                      "adopt the shard")
        self.shards_made += 1
        return {**asdict(stats), "skipped": False}

    def _discard(self, shard: int) -> None:
        """Remove this run's files of `shard` (its own names only), marker first."""
        run_id = self.settings.run_id
        for rel in (marker_file(shard, run_id), examples_file(shard, run_id), shard_file(shard, run_id)):
            afs.delete_quietly(self.out.fs, self.out.full(rel))

    def _stale(self, shard: int, what: str) -> dict[str, Any]:
        """The report of a worker whose run was superseded (also printed on the worker's stderr)."""
        current = self.out.current_run()
        message = (f"{shard_name(shard)}: run {self.settings.run_id} no longer owns {self.settings.output} (current "
                   f"run {current.run_id if current else 'none'}); {what}")
        print(f"augment worker {self.worker}: stale: {message}", file=sys.stderr, flush=True)
        return {"stale": True, "shard": shard, "message": message}

    def _write_rows(self, planned: list[PlannedSample], writer: pq.ParquetWriter, tally: "_Tally") -> None:
        """The batch pipeline: prepare batch i+1 and encode batch i-1 on the pool while batch i is on the device.

        A batch is encoded in as many slices as the pool has threads, so PNG encoding (the CPU stage that must keep
        up with a GPU) uses all of them; rows keep the plan's order.
        """
        sources = self._read_sources(planned)
        size = self.synthesis.batch_size
        batches = [planned[i:i + size] for i in range(0, len(planned), size)]
        pending: deque[list[Future[_Encoded]]] = deque()
        buffer: list[dict[str, Any]] = []

        def drain(keep: int) -> None:
            while len(pending) > keep:
                for part in pending.popleft():
                    encoded = self._result(part)
                    self._add("encode", encoded.seconds)
                    buffer.extend(tally.add(encoded))
                t = time.perf_counter()
                self._flush(writer, buffer, final=False)
                self._clock("write", t)

        next_prep = self.pool.submit(self._prepare, batches[0], sources) if batches else None
        for i in range(len(batches)):
            prepared = self._result(next_prep)
            self._add("decode", prepared.seconds)
            if i + 1 < len(batches):
                next_prep = self.pool.submit(self._prepare, batches[i + 1], sources)
            tally.quarantined += prepared.quarantined
            if not prepared.samples:
                continue
            result = self._infer(prepared)
            chosen = tally.judge(prepared.samples, result["accepted"], result["below"])
            pending.append(self._encode_parts(prepared.samples, result, chosen))
            drain(keep=1)
        drain(keep=0)
        t = time.perf_counter()
        self._flush(writer, buffer, final=True)
        self._clock("write", t)

    def batch_rows(self, samples: list[PlannedSample]) -> tuple[list[dict[str, Any]], int]:
        """One batch through the steps of `run`, one after the other, writing nothing: read, decode and edit its
        source label maps, generate, segment, score, and PNG-encode (in slices on the pool, as `run` does).

        Returns (the rows `run` would write for these samples, in their order: the accepted ones, or all with
        keep_rejected; the number of images generated). A sample whose source cannot be read is left out, as `run`
        quarantines it. For callers that write the rows themselves (the throughput benchmark's Ray Data peer).
        """
        prepared = self._prepare(samples, self._read_sources(samples))
        if not prepared.samples:
            return [], 0
        result = self._infer(prepared)
        parts = self._encode_parts(prepared.samples, result, [False] * len(prepared.samples))
        return [row for part in parts for row in part.result().rows], len(prepared.samples)

    def _encode_parts(self, samples: list[PlannedSample], result: dict[str, Any],
                      chosen: list[bool]) -> list[Future[_Encoded]]:
        """PNG encoding of an `_infer`red batch, submitted in as many slices as the pool has threads (so it uses all
        of them); `chosen`: the samples kept as contact-sheet examples."""
        n, parts = len(chosen), min(self.pool_size, len(chosen))
        cuts = [k * n // parts for k in range(parts + 1)]
        return [self.pool.submit(self._encode, samples[a:b], _rows(result, a, b), chosen[a:b])
                for a, b in zip(cuts, cuts[1:])]

    def _add(self, stage: str, seconds: float) -> None:
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def _clock(self, stage: str, since: float, device: bool = False) -> float:
        """Add the time since `since` to `stage` (a device stage: once its queued work is done); returns now."""
        if self.timings is None:
            return since
        if device and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self._add(stage, now - since)
        return now

    def _result(self, future: Future[Any]) -> Any:
        """The future's result, the time blocked on it counted as "wait"."""
        t = time.perf_counter()
        result = future.result()
        self._clock("wait", t)
        return result

    def _read_sources(self, planned: list[Any]) -> dict[str, Any]:
        """Mode scene: encoded masks of the source and paste maps the shard needs, by id (masks only, never images).
        Paste and insert: {id: {"image", "mask"}} of the hosts and the objects' sources."""
        t = time.perf_counter()
        if self.sources is None:
            self.sources = RowLookup(self.dataset)
        if self.synthesis.inserts:
            sources = self.sources.read({p.host_id for p in planned} | {p.source_id for p in planned},
                                        ("image", "mask"))
        else:
            sources = self.sources.masks({p.source_id for p in planned}
                                         | {e["from"] for p in planned for e in p.edits.get("paste", [])})
        self._clock("decode", t)
        return sources

    def _prepare_insertions(self, batch: list[PlannedInsertion], sources: dict[str, Any]) -> _Prepared:
        """Decode each insertion's host and source; a row missing or not decoding quarantines the sample."""
        start = time.perf_counter()
        s = self.settings
        where = self.dataset.uri
        cache: dict[tuple[str, str], np.ndarray] = {}

        def decoded(row_id: str, column: str) -> np.ndarray:
            if (row_id, column) not in cache:
                if row_id not in sources:
                    raise BadSample(f"row {row_id!r} is not in the dataset", where)
                decode = decode_image if column == "image" else decode_mask
                cache[row_id, column] = decode(sources[row_id][column], f"{where} row {row_id}")
            return cache[row_id, column]

        out = _Prepared([], [], [])
        for sample in batch:
            try:
                host, host_mask = decoded(sample.host_id, "image"), decoded(sample.host_id, "mask")
                source_mask = decoded(sample.source_id, "mask")
                source_image = decoded(sample.source_id, "image")
                for row_id, image, mask in ((sample.host_id, host, host_mask),
                                            (sample.source_id, source_image, source_mask)):
                    if image.shape[:2] != mask.shape:
                        raise BadSample(f"image {image.shape[1]}x{image.shape[0]} and mask "
                                        f"{mask.shape[1]}x{mask.shape[0]} differ in size", f"{where} row {row_id}")
                class_pixels(host_mask, len(s.classes), s.ignore_index, f"{where} row {sample.host_id}")
                source_object(source_mask, sample)
            except BadSample as exc:
                out.quarantined.append({"id": sample.sample_id, "source": sample.source_id, "reason": str(exc)})
                continue
            out.samples.append(sample)
            out.masks.append(host_mask)
            out.hosts.append(host)
            out.sources.append((source_image, source_mask))
        out.seconds = time.perf_counter() - start
        return out

    def _prepare(self, batch: list[Any], sources: dict[str, Any]) -> _Prepared:
        if self.synthesis.inserts:
            return self._prepare_insertions(batch, sources)
        start = time.perf_counter()
        s = self.settings
        where = self.dataset.uri
        cache: dict[str, np.ndarray] = {}

        def lookup(source_id: str) -> np.ndarray:
            if source_id not in cache:
                if source_id not in sources:
                    raise BadSample(f"source label map {source_id!r} is not in the dataset", where)
                cache[source_id] = decode_mask(sources[source_id], f"{where} row {source_id}")
            return cache[source_id]

        out = _Prepared([], [], [])
        for sample in batch:
            try:
                mask = apply_edits(lookup(sample.source_id), sample.edits, lookup, sample.target_class, s.ignore_index)
                class_pixels(mask, len(s.classes), s.ignore_index, f"{where} row {sample.source_id}")
            except BadSample as exc:
                out.quarantined.append({"id": sample.sample_id, "source": sample.source_id, "reason": str(exc)})
                continue
            out.samples.append(sample)
            out.masks.append(mask)
        out.seconds = time.perf_counter() - start
        return out

    @torch.inference_mode()
    def _infer_insertions(self, prepared: _Prepared) -> dict[str, Any]:
        """Fill (paste or paint), segment and score one batch of insertions by their region; on the CPU."""
        s, syn = self.settings, self.synthesis
        t = time.perf_counter()
        samples = prepared.samples
        filled = fill_batch(syn.mode, prepared.hosts, prepared.masks, [src[0] for src in prepared.sources],
                            [src[1] for src in prepared.sources], samples, self.generator, band=syn.band,
                            ignore_index=s.ignore_index, precision=syn.precision, dilation=syn.dilation)
        images = torch.from_numpy(np.stack([image for image, _ in filled])).to(self.device).permute(0, 3, 1, 2)
        masks = torch.from_numpy(np.stack([mask for _, mask in filled])).to(self.device)
        t = self._clock("generate", t, device=True)
        logits = segment(self.segmenter, normalize(images.contiguous(), self.normalize_mode))
        t = self._clock("segment", t, device=True)
        targets = [p.target_class for p in samples]
        scores = score_batch(logits, masks, targets, len(s.classes), s.ignore_index)
        boxes = torch.tensor([insertion_box(source_object(src[1], p).shape, p.placement)
                              for p, src in zip(samples, prepared.sources)], dtype=torch.long)
        pred = logits.argmax(1)
        region = syn.region
        scores["target_iou"] = region_iou(pred, masks, boxes, targets, region.margin, s.ignore_index)
        ok = accept_regions(scores["target_iou"], region.min_iou)
        written = (pixel_rule(logits, masks, syn.class_means, region.k, s.ignore_index) if region.pixel_rule
                   else masks)
        result = {
            "images": images.permute(0, 2, 3, 1).cpu().numpy(),
            "masks": written.to(torch.uint8).cpu().numpy(),
            "preds": pred.to(torch.uint8).cpu().numpy(),
            "accepted": ok.cpu().tolist(),
            "scores": {k: v.cpu().tolist() for k, v in scores.items()},
            "below": {"min_region_iou": (scores["target_iou"] < region.min_iou).cpu().tolist()},  # job-file key
            "hosts": prepared.hosts,
            "sources": prepared.sources,
        }
        self._clock("score", t, device=True)
        return result

    @torch.inference_mode()
    def _infer(self, prepared: _Prepared) -> dict[str, Any]:
        """Generate, segment and score one batch; everything returned is on the CPU."""
        if self.synthesis.inserts:
            return self._infer_insertions(prepared)
        s = self.settings
        t = time.perf_counter()
        samples = prepared.samples
        masks = torch.from_numpy(np.stack(prepared.masks)).to(self.device)
        targets = [p.target_class for p in samples]
        images = synthesise(
            self.generator, masks.long(), [p.seed for p in samples], targets, len(s.classes), s.ignore_index,
            noise_mode=self.synthesis.noise, base_seeds=[p.base_seed for p in samples],
            precision=self.synthesis.precision,
        )
        t = self._clock("generate", t, device=True)
        x = normalize(images, self.normalize_mode)
        logits = segment(self.segmenter, x)
        t = self._clock("segment", t, device=True)
        scores = score_batch(logits, masks, targets, len(s.classes), s.ignore_index)
        filt = self.synthesis.filter
        ok = accept(scores, filt)
        written = pixel_ignore_masks(logits, masks, filt, s.ignore_index) if filt.pixel_ignore else masks
        result = {
            "images": images.permute(0, 2, 3, 1).cpu().numpy(),
            "masks": written.to(torch.uint8).cpu().numpy(),
            "preds": logits.argmax(1).to(torch.uint8).cpu().numpy(),
            "accepted": ok.cpu().tolist(),
            "scores": {k: v.cpu().tolist() for k, v in scores.items()},
            "below": {k: v.cpu().tolist() for k, v in below_thresholds(scores, filt).items()},
        }
        self._clock("score", t, device=True)
        return result

    def _encode(self, samples: list[PlannedSample], result: dict[str, Any], chosen: list[bool]) -> _Encoded:
        start = time.perf_counter()
        s = self.settings
        rows, examples = [], []
        for i, sample in enumerate(samples):
            ok = bool(result["accepted"][i])
            if not (ok or self.synthesis.keep_rejected or chosen[i]):
                continue
            mask = result["masks"][i]
            image_png = encode_image(result["images"][i], compress_level=PNG_COMPRESS_LEVEL)
            mask_png = encode_mask(mask)
            miou, tiou, pacc = (float(result["scores"][k][i]) for k in ("miou", "target_iou", "pixel_accuracy"))
            if ok or self.synthesis.keep_rejected:
                h, w = mask.shape
                rows.append(_row(
                    sample, image_png, mask_png, h, w, class_pixels(mask, len(s.classes), s.ignore_index),
                    miou=miou, target_iou=tiou, pixel_accuracy=pacc, accepted=ok,
                    generator_sha256=s.generator_sha256, segmenter_sha256=s.segmenter_sha256,
                ))
            if chosen[i]:
                examples.append({
                    "id": sample.sample_id, "target_class": sample.target_class, "accepted": ok,
                    "caption": f"{sample.sample_id}  mIoU {miou:.2f}  IoU {tiou:.2f}  acc {pacc:.2f}",
                    "image": image_png, "mask": mask_png, "pred": encode_mask(result["preds"][i]),
                    **(self._insertion_example(sample, result["hosts"][i], *result["sources"][i])
                       if self.synthesis.inserts else {}),
                })
        return _Encoded(rows, examples, time.perf_counter() - start)

    def _insertion_example(self, sample: PlannedInsertion, host: np.ndarray, source_image: np.ndarray,
                           source_mask: np.ndarray) -> dict[str, Any]:
        """The contact-sheet columns of an insertion: the host before, the object's source crop (`band` pixels
        around it) and shape, and the placed object's box in the host (None when none of it lies inside)."""
        obj = source_object(source_mask, sample)
        pixels, shape = obj.crop(source_image, margin=self.synthesis.band)
        placed, _ = placed_region(obj.shape, sample.placement, host.shape[:2], 0)
        ys, xs = np.nonzero(placed)
        box = [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1] if len(ys) else None
        return {"host": encode_image(host, compress_level=PNG_COMPRESS_LEVEL),
                "object": encode_image(pixels, compress_level=PNG_COMPRESS_LEVEL),
                "object_shape": encode_mask(shape.astype(np.uint8)), "box": box}

    def _flush(self, writer: pq.ParquetWriter, buffer: list[dict[str, Any]], final: bool) -> None:
        """Write row groups of ROW_GROUP_ROWS rows (or ROW_GROUP_BYTES), so the layout depends only on the rows."""
        while buffer:
            size, nbytes = 0, 0
            for row in buffer:
                size += 1
                nbytes += len(row["image"]["bytes"]) + len(row["mask"]["bytes"])
                if size >= ROW_GROUP_ROWS or nbytes >= ROW_GROUP_BYTES:
                    break
            else:
                if not final:
                    return
            writer.write_table(pa.Table.from_pylist(buffer[:size], schema=self.schema))
            del buffer[:size]

    def _write_examples(self, shard: int, examples: list[dict[str, Any]]) -> None:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(examples, schema=EXAMPLE_SCHEMA), buf,
                       **parquet_write_options(EXAMPLE_SCHEMA))
        self.out.write_bytes(examples_file(shard, self.settings.run_id), buf.getvalue())


def _row(sample: PlannedSample, image_png: bytes, mask_png: bytes, h: int, w: int, pixels: np.ndarray,
         **scores: Any) -> dict[str, Any]:
    return make_row(
        sample.sample_id, image_png, mask_png, h, w, SYNTHETIC_SPLIT, pixels,
        target_class=sample.target_class, source_id=sample.source_id, seed=sample.seed, **scores,
    )


def _rows(result: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Samples start..stop of an `_infer` result."""
    return {k: ({name: v[start:stop] for name, v in value.items()} if isinstance(value, dict) else value[start:stop])
            for k, value in result.items()}


def _ray_node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def read_examples(out: OutputFolder, shard: int, run_id: str) -> list[dict[str, Any]]:
    """The contact-sheet examples run `run_id` stored with shard `shard`, decoded: mask, image, pred arrays plus
    id/class/accepted/caption."""
    path = out.full(examples_file(shard, run_id))
    try:
        with out.fs.open_input_file(path) as f:
            rows = open_parquet(f).read().to_pylist()
    except (FileNotFoundError, OSError):
        return []
    where = f"{out.uri} {examples_file(shard, run_id)}"
    optional = {"host": decode_image, "object": decode_image, "object_shape": decode_mask}
    return [
        {**r, "image": decode_image(r["image"], where), "mask": decode_mask(r["mask"], where),
         "pred": decode_mask(r["pred"], where),
         **{k: None if r.get(k) is None else decode(r[k], where) for k, decode in optional.items()}}
        for r in rows
    ]


__all__ = ["STAGES", "ShardProcessor", "ShardSettings", "SynthesisSettings", "read_examples"]
