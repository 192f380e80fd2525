"""Throughput of the augmentation path: `augment run` on Ray against a plain single-process PyTorch loop and against
the same work written with Ray Data.

Measured side by side in one run, on the built-in example data, with freshly initialised (untrained) models of the
real architectures: the same FLOPs per image as trained ones, not the same pictures or accept rates.

  plain loop    one process, nothing overlapped: read the source label maps, then per batch decode + edit ->
                synthesise -> segment -> score -> PNG encode -> Parquet, with the library's own functions
  pipeline      augment.runner.shard.ShardProcessor in this process, no Ray: the same work with decoding and
                encoding overlapped on its thread pool; its stage timings give the breakdown
  augment run   augment.runner.job.run_job on a local Ray instance with 1, 2, 4 workers (as many as the cores
                allow), each worker given cores / workers CPUs, a fresh output folder every time
  modes         the same `augment run` in synthesis modes insert (a crop-mode generator of the same widths paints
                each object into a real host) and paste (copy-paste of the real object), beside the scene rows: the
                same sample count, image size, workers and batch, in the same rounds; the report gives insert / scene
                and paste / scene per worker count (`--modes` picks them)
  Ray Data      the peer a Ray user would write, at each of those worker counts: the job's planned samples through
                `ray.data.from_items` -> `map_batches` (a callable class holding a ShardProcessor, so the same models
                loaded once per actor and the same steps: ShardProcessor.batch_rows) with the job's batch size and
                each worker's CPUs/GPUs -> `write_parquet`; it must write as many rows as the job accepts (checked
                every round), and the report gives augment run / Ray Data per worker count
  device        on CUDA: generator images/s at 256x256 and 256x512 in fp32 and bf16 (channels_last, eager and
                torch.compile), its FLOPs per image (torch.utils.flop_counter), the fraction of the GPU's peak it
                reaches, the library's whole device step (synthesise + segment + score), its host syncs, and how
                many threads PNG encoding needs to keep up; skipped with a note without CUDA

Every measurement is warmed up first, then repeated (--repeats, interleaved so load changes hit all alike) and
the median is quoted. Peak memory is sampled over this process and its descendants (the Ray processes too).

The entry point is benchmarks/throughput.py (its options fill `BenchmarkSettings`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from augment.data import example
from augment.data.codec import class_pixels, decode_mask, encode_image, encode_mask, parse_size
from augment.data.dataset import DatasetInfo, make_row, open_dataset
from augment.data.schema import arrow_schema
from augment.core.device import pick_device, use_bf16
from augment.core.errors import AugmentError
from augment.filtering.quality import accept, pixel_ignore_masks, score_batch
from augment.models.gan import GAN_KIND, GANConfig, build_generator
from augment.models.losses import one_hot_labels
from augment.models.segmenter import build_segmenter, segment, segmenter_config
from augment.runner import shard as shard_mod
from augment.runner.jobfile import JobConfig, filter_config, job_from_document
from augment.synthesis.edit import apply_edits
from augment.synthesis.generate import sample_noises, synthesise
from augment.synthesis.plan import PlannedSample, make_plan
from augment.training.crops import MAX_CROP, MIN_CROP
from augment.models.store import ModelCard, load_generator, load_segmenter, save_checkpoint
from augment.training.transforms import normalize

# The shard processor's stages (augment.runner.shard.STAGES) but "wait": the plain loop has no pool to wait on.
STAGES = tuple(s for s in shard_mod.STAGES if s != "wait")
ACCEPT_ALL = {"min_miou": 0.0, "min_target_iou": 0.0, "min_pixel_accuracy": 0.0}
ACCEPT_ALL_REGIONS = {"min_region_iou": 0.0}  # modes paste and insert: the region filter accepting every object
MODES = ("scene", "insert", "paste")  # job-v2's synthesis modes; scene is the reference the others are compared with
PREFERRED_CROP = 64  # the crop-mode generator's default crop, where the images' short side holds it (else MIN_CROP)
AUGMENT_ROW = "augment run"
RAYDATA_ROW = "Ray Data map_batches"
NAME_WIDTH = 32  # the row names' column in the report
EDITS = {"flip": 0.5, "scale": [1.0, 1.5], "paste": {"prob": 0.3}}
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "default": {},  # GANConfig's widths for the size (OASIS's above 128 px)
    "tiny": {"z_dim": 8, "g_width": 8, "spade_hidden": 16},  # the tests' generator
}
# Dense peak TFLOP/s (no sparsity) by GPU name: bf16 and tf32 tensor cores, fp32 without them. Checked in order.
PEAK_TFLOPS: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("H100", "NVL"), "H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (("H100", "PCIE"), "H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (("H100",), "H100 SXM", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    (("H200", "NVL"), "H200 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (("H200",), "H200 SXM", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    (("A100",), "A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("L40S",), "L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (("L4",), "L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
]


@dataclass
class BenchmarkSettings:
    """What one benchmark run measures (benchmarks/throughput.py's options, same names and defaults)."""

    size: str = "64x64"
    n: int = 2560
    precision: str = "auto"
    compare_precision: bool = False
    batch: int = 16
    samples_per_shard: int = 64
    source_maps: int = 24
    workers: list[int] = field(default_factory=lambda: [1, 2, 4])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    crop: int | None = None
    raydata: bool = True
    threads: int | None = None
    repeats: int = 3
    warmup: bool = True
    model: str = "default"
    segmenter: str = "lraspp_mobilenet_v3_large"
    filter: str = "none"
    ray_niceness: int | None = None
    gpu_only: bool = False
    device_section: str = "auto"
    gpu_sizes: str = "256x256,256x512"
    gpu_batch: int = 16
    gpu_iters: int = 10
    gpu_model: str = "default"
    compile: str = "auto"
    peak_tflops: str | None = None
    workdir: str | None = None
    json: str | None = None


# ---------------------------------------------------------------------------------------------------------- setup

def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(t) for t in text.split(",") if t.strip()]


def parse_peaks(text: str | None) -> dict[str, float]:
    """'989' (bf16) or 'bf16=989,tf32=494,fp32=67'."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.rpartition("=")
        key = key.strip().lower() or "bf16"
        if key not in ("bf16", "tf32", "fp32"):
            raise SystemExit(f"--peak-tflops: unknown precision {key!r} (bf16, tf32, fp32)")
        out[key] = float(value)
    return out


def gpu_peaks(name: str, override: dict[str, float]) -> tuple[str, dict[str, float]]:
    """(what the figures are, {precision: peak TFLOP/s}) for a CUDA device name, overridden by --peak-tflops."""
    upper = name.upper()
    for needles, label, peaks in PEAK_TFLOPS:
        if all(n in upper for n in needles):
            return (f"{label} datasheet" + (", overridden by --peak-tflops" if override else ""),
                    {**peaks, **override})
    return ("--peak-tflops" if override else "unknown GPU: pass --peak-tflops", dict(override))


def init_weights(generator: torch.nn.Module) -> None:
    """Gain-1 Xavier convs: OASIS's gain 0.02 draws flat grey images at init, which PNG compresses unrealistically."""
    for module in generator.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.xavier_normal_(module.weight, gain=1.0)


def parse_modes(text: str) -> list[str]:
    """'scene,insert,paste' -> the modes in that order; AugmentError for an unknown mode or one without scene."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    check_modes(modes)
    return modes


def check_modes(modes: list[str]) -> None:
    """Refuse modes that are not job-v2's, repeated, or that leave out scene (the rows the others are compared
    with)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or len(set(modes)) != len(modes) or "scene" not in modes:
        raise AugmentError(f"--modes {','.join(modes)}: give distinct modes of {', '.join(MODES)}, scene among them "
                           f"(the reference the other modes are compared with)")


def mode_row(mode: str) -> str:
    """The name (before ", N workers") of the `augment run` rows of synthesis `mode`: "augment run" for scene, e.g.
    "insert: augment run" for the others."""
    return AUGMENT_ROW if mode == "scene" else f"{mode}: {AUGMENT_ROW}"


def crop_size(args: BenchmarkSettings) -> int:
    """The crop-mode generator's crop: `args.crop`, else PREFERRED_CROP where the images' short side holds it, else
    MIN_CROP; AugmentError when it is outside MIN_CROP..MAX_CROP or larger than the images' short side."""
    short = min(parse_size(args.size))
    crop = args.crop if args.crop is not None else (PREFERRED_CROP if short >= PREFERRED_CROP else MIN_CROP)
    if not MIN_CROP <= crop <= min(short, MAX_CROP):
        raise AugmentError(f"--crop {crop}: mode insert's crop must be in {MIN_CROP}..{min(short, MAX_CROP)} at "
                           f"--size {args.size} (at most the images' short side)")
    return crop


def save_generator(run: str, data: str, model: str, crop: int | None = None, seed: int = 0) -> str:
    """An untrained generator run fitting the dataset `data` at `model`'s widths (MODEL_PRESETS): a whole-scene one
    of the images' size, or with `crop` a crop-mode one painting crop x crop windows. Returns `run`."""
    info = open_dataset(data).info
    size = (crop, crop) if crop is not None else info.image_size
    torch.manual_seed(seed)
    gan_cfg = GANConfig(num_classes=info.num_classes, size=size, context=crop is not None, **MODEL_PRESETS[model])
    generator = build_generator(gan_cfg).eval()
    init_weights(generator)
    save_checkpoint(run, {f"generator.{k}": v for k, v in generator.state_dict().items()},
                    ModelCard(kind=GAN_KIND, model_config=gan_cfg.to_dict(), **_card_fields(info, size)))
    return run


def _card_fields(info: DatasetInfo, size: tuple[int, int]) -> dict[str, Any]:
    """The model card fields that make a checkpoint fit a dataset of `info` (classes, palette, ignore index, size)."""
    return {"classes": list(info.classes), "palette": info.palette, "ignore_index": info.ignore_index,
            "size": list(size)}


def make_models(root: Path, data: str, segmenter: str, model: str, seed: int = 0) -> tuple[str, str]:
    """Untrained whole-scene GAN and segmenter runs (checkpoints in augment's run layout) that fit the dataset
    `data`."""
    info = open_dataset(data).info
    gan_run, seg_run = save_generator(str(root / "gan-run"), data, model, seed=seed), str(root / "seg-run")
    seg = build_segmenter(segmenter, info.num_classes).eval()  # seeded by save_generator, as the generator
    save_checkpoint(seg_run, seg.state_dict(), ModelCard(kind="segmenter",
                    model_config=segmenter_config(segmenter, info.num_classes), **_card_fields(info, info.image_size)))
    return gan_run, seg_run


def job_config(args: BenchmarkSettings, inputs: dict[str, str], output: str, n: int, workers: int,
               cores: int, gpus: int, mode: str = "scene") -> JobConfig:
    """The benchmark's job of `n` samples in synthesis `mode`: scene (a version 1 file: edits, the whole-scene
    generator `inputs["gan"]`), insert (the crop-mode generator `inputs["crop_gan"]`) or paste (no generator); the
    same data, segmenter, resources and sheets in every mode, the filter accepting all with `args.filter` none."""
    doc: dict[str, Any] = {
        "data": inputs["data"], "segmenter": inputs["seg"], "output": output,
        "balance": {"total": n}, "sheets": 2, "precision": args.precision,
        "resources": {
            "workers": workers, "cpus_per_worker": cores / workers, "gpus_per_worker": gpus / workers,
            "batch_size": args.batch, "samples_per_shard": args.samples_per_shard,
        },
    }
    if mode == "scene":
        doc |= {"generator": inputs["gan"], "edits": EDITS, "filter": ACCEPT_ALL if args.filter == "none" else {}}
    else:
        doc |= {"version": 2, "synthesis": {"mode": mode},
                "filter": ACCEPT_ALL_REGIONS if args.filter == "none" else {}}
        if mode == "insert":
            doc["generator"] = inputs["crop_gan"]
    return job_from_document(doc, source="benchmark")


# ------------------------------------------------------------------------------------------------ measuring tools

class PeakMemory:
    """Peak resident memory of this process and all its descendants (Ray's processes included), sampled on a thread.

    With psutil: RSS summed over the process tree; else from /proc (Linux); else resource.getrusage, which only
    knows the largest single process so far (self + waited-for children) and cannot be reset per measurement.
    Summed RSS counts shared pages once per process, so it overstates the true footprint.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self.baseline = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil  # noqa: F401

            self.method = "psutil: RSS summed over the process tree"
        except ImportError:
            self.method = ("/proc: RSS summed over the process tree" if os.path.isdir("/proc/self")
                           else "resource.getrusage: max RSS of self + children (lifetime, not per measurement)")

    def sample(self) -> int:
        if self.method.startswith("psutil"):
            import psutil

            me = psutil.Process()
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            return total
        if self.method.startswith("/proc"):
            return _proc_tree_rss(os.getpid())
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * scale

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> "PeakMemory":
        self.baseline = self.peak = self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def _proc_tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            pass
    return total


@dataclass
class Run:
    """One timed run: wall seconds, images generated/accepted, peak memory and busy seconds per stage."""

    seconds: float
    generated: int
    accepted: int
    peak_bytes: int = 0
    baseline_bytes: int = 0
    setup_seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def steady_images_per_s(self) -> float:
        """Images per second of the work proper, without the one-off setup (model load, actor start, ...)."""
        return self.generated / max(self.seconds - self.setup_seconds, 1e-9)


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------- the three contenders

def plain_loop(cfg: JobConfig, out_file: str, device: torch.device) -> Run:
    """The reference: the same library functions one after another in this process, nothing overlapped."""
    stages = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    dataset = open_dataset(cfg.data)
    info = dataset.info
    generator, _ = load_generator(cfg.generator, device)
    segmenter, seg_card = load_segmenter(cfg.segmenter, device)
    segmenter.to(memory_format=torch.channels_last)
    mode = seg_card.model_config.get("normalize", "imagenet")
    plan = make_plan(dataset, cfg.classes, cfg.balance_total, cfg.seed, cfg.edits, balance_power=cfg.balance_power)
    filt = cfg.filter
    schema = arrow_schema("synthetic")
    setup = time.perf_counter() - start

    t = time.perf_counter()
    table = dataset.arrow.to_table(columns=["id", "mask"])
    mask_bytes = table.column("mask").combine_chunks().field("bytes").to_pylist()
    encoded = dict(zip(table.column("id").to_pylist(), mask_bytes))
    decoded: dict[str, np.ndarray] = {}

    def lookup(sample_id: str) -> np.ndarray:
        if sample_id not in decoded:
            decoded[sample_id] = decode_mask(encoded[sample_id], f"{cfg.data} row {sample_id}")
        return decoded[sample_id]

    stages["decode"] += time.perf_counter() - t
    generated = accepted = 0
    num_classes, ignore = info.num_classes, info.ignore_index
    level = shard_mod.PNG_COMPRESS_LEVEL
    buffer: list[dict[str, Any]] = []
    with pq.ParquetWriter(out_file, schema, compression="zstd") as writer, torch.inference_mode():
        for b in range(0, len(plan.samples), cfg.resources.batch_size):
            batch = plan.samples[b:b + cfg.resources.batch_size]
            t = time.perf_counter()
            masks_np = [apply_edits(lookup(p.source_id), p.edits, lookup, p.target_class, ignore) for p in batch]
            pixels = [class_pixels(m, num_classes, ignore, p.sample_id) for m, p in zip(masks_np, batch)]
            t = _lap(stages, "decode", t, device)
            masks = torch.from_numpy(np.stack(masks_np)).to(device)
            targets = [p.target_class for p in batch]
            images = synthesise(generator, masks.long(), [p.seed for p in batch], targets, num_classes, ignore,
                                noise_mode=cfg.noise, base_seeds=[p.base_seed for p in batch], precision=cfg.precision)
            t = _lap(stages, "generate", t, device)
            x = normalize(images, mode)
            logits = segment(segmenter, x)
            t = _lap(stages, "segment", t, device)
            scores = score_batch(logits, masks, targets, num_classes, ignore)
            ok = accept(scores, filt).cpu().tolist()
            written = pixel_ignore_masks(logits, masks, filt, ignore) if filt.pixel_ignore else masks
            images_np = images.permute(0, 2, 3, 1).cpu().numpy()
            written_np = written.to(torch.uint8).cpu().numpy()
            score_lists = {k: v.cpu().tolist() for k, v in scores.items()}
            t = _lap(stages, "score", t, device)
            for i, p in enumerate(batch):
                if not (ok[i] or cfg.keep_rejected):
                    continue
                mask = written_np[i]
                h, w = mask.shape
                px = class_pixels(mask, num_classes, ignore) if filt.pixel_ignore else pixels[i]
                buffer.append(make_row(
                    p.sample_id, encode_image(images_np[i], compress_level=level),
                    encode_mask(mask), h, w, shard_mod.SYNTHETIC_SPLIT, px,
                    target_class=p.target_class, source_id=p.source_id, seed=p.seed,
                    miou=score_lists["miou"][i], target_iou=score_lists["target_iou"][i],
                    pixel_accuracy=score_lists["pixel_accuracy"][i], accepted=bool(ok[i]),
                ))
            generated += len(batch)
            accepted += sum(ok)
            t = _lap(stages, "encode", t, device)
            final = b + len(batch) >= len(plan.samples)
            while len(buffer) >= shard_mod.ROW_GROUP_ROWS or (final and buffer):
                writer.write_table(pa.Table.from_pylist(buffer[:shard_mod.ROW_GROUP_ROWS], schema=schema))
                del buffer[:shard_mod.ROW_GROUP_ROWS]
            _lap(stages, "write", t, device)
    return Run(time.perf_counter() - start, generated, accepted, setup_seconds=setup, stages=stages)


def _lap(stages: dict[str, float], stage: str, since: float, device: torch.device) -> float:
    sync(device)
    now = time.perf_counter()
    stages[stage] += now - since
    return now


def pipeline_in_process(job: Any, output: str, device: torch.device, threads: int) -> Run:
    """ShardProcessor over every shard of the job in this process (no Ray), with its stage timings."""
    from augment.runner.job import shard_settings
    from augment.runner.markers import OutputFolder, claim_run

    start = time.perf_counter()
    run = claim_run(OutputFolder(output), job.fingerprint, None)
    settings = replace(shard_settings(job, run.run_id), output=output, threads=threads)
    processor = shard_mod.ShardProcessor(settings, str(device))
    setup = time.perf_counter() - start
    processor.timings = {}
    generated = accepted = 0
    for k, samples in enumerate(job.shards):
        stats = processor.run(k, [asdict(p) for p in samples])
        generated += stats["generated"]
        accepted += sum(stats["accepted"].values())
    processor.pool.shutdown()
    return Run(time.perf_counter() - start, generated, accepted, setup_seconds=setup, stages=dict(processor.timings))


class RayDataSynthesis:
    """The Ray Data peer's callable class (one per actor): a ShardProcessor built once (models loaded once per actor,
    as a job's worker does), each batch of planned samples through `ShardProcessor.batch_rows`.

    After each batch it writes its busy seconds and images generated so far to a JSON file of its own in
    `stats_dir` (outside the output folder), from which `raydata_job` counts the images and the one-off setup.
    """

    def __init__(self, settings: shard_mod.ShardSettings, stats_dir: str) -> None:
        self.processor = shard_mod.ShardProcessor(settings)
        self.schema = arrow_schema("synthetic")
        self.stats_file = Path(stats_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.busy_seconds = 0.0
        self.generated = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        samples = [PlannedSample(**json.loads(text)) for text in batch.column("planned").to_pylist()]
        rows, generated = self.processor.batch_rows(samples)
        self.generated += generated
        self.busy_seconds += time.perf_counter() - start
        self.stats_file.write_text(json.dumps({"busy_seconds": self.busy_seconds, "generated": self.generated}))
        return pa.Table.from_pylist(rows, schema=self.schema)


@contextlib.contextmanager
def quiet_ray_data() -> Iterator[None]:
    """Ray Data without its progress bars and log lines below ERROR in this process (the settings restored after)."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    logger = logging.getLogger("ray.data")
    old = ctx.enable_progress_bars, ctx.print_on_execution_start, logger.level
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = old[:2]
        logger.setLevel(old[2])


def raydata_job(job: Any, output: str, workers: int, cores: int, gpus: int) -> Run:
    """The job's work as a Ray user would write it with Ray Data, on the Ray instance this process is connected to.

    `ray.data.from_items` of the job's planned samples (one JSON row each, in blocks of about a shard), then
    `map_batches(RayDataSynthesis, compute=ActorPoolStrategy(size=workers))` with the job's batch size and each
    actor given cores / workers CPUs and gpus / workers GPUs (a job worker's share), then `write_parquet(output)`
    with the options of every Parquet file augment writes. Ray Data runs the write as tasks of their own (it fuses no
    actor stage with a following task stage); they get 0 logical CPUs, so they share the actors' cores as a job
    worker's own writes do (with Ray Data's default of 1 CPU they would wait for the actors, which hold every core).
    Ray Data's write returns no count, so the rows written are counted from the files' footers; `Run.accepted` is
    that count, `Run.generated` the actors' own count.
    Setup: wall - the busiest actor's busy seconds (actor start, model load, the write after the last batch).
    """
    import pyarrow.dataset as pads
    import ray.data

    from augment.data.dataset import parquet_write_options
    from augment.runner.job import shard_settings

    start = time.perf_counter()
    cpus = cores / workers
    settings = replace(shard_settings(job, "raydata"), output=output, threads=max(1, int(cpus)))
    stats_dir = Path(f"{output}.stats")
    stats_dir.mkdir(parents=True)
    items = [{"planned": json.dumps(asdict(p))} for p in job.plan.samples]
    with quiet_ray_data():
        ds = ray.data.from_items(items, override_num_blocks=len(job.shards))
        ds = ds.map_batches(RayDataSynthesis, fn_constructor_args=(settings, str(stats_dir)),
                            batch_size=job.cfg.resources.batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus / workers)
        ds.write_parquet(output, ray_remote_args={"num_cpus": 0}, **parquet_write_options(arrow_schema("synthetic")))
    seconds = time.perf_counter() - start
    written = pads.dataset(output, format="parquet").count_rows()
    actors = [json.loads(f.read_text()) for f in sorted(stats_dir.glob("*.json"))]
    longest = max((a["busy_seconds"] for a in actors), default=0.0)
    return Run(seconds, sum(a["generated"] for a in actors), written, setup_seconds=max(seconds - longest, 0.0),
               extra={"busy_seconds_per_actor": sorted(round(a["busy_seconds"], 3) for a in actors),
                      "rows_written": written})


def check_same_rows(runs: dict[str, list[Run]]) -> None:
    """Raise RuntimeError unless every "Ray Data map_batches, N workers" run wrote as many rows as the job accepted
    in "augment run, N workers" of the same round (and generated as many images)."""
    for name, peer in runs.items():
        if not name.startswith(RAYDATA_ROW):
            continue
        job_name = AUGMENT_ROW + name[len(RAYDATA_ROW):]
        for i, (ours, theirs) in enumerate(zip(runs[job_name], peer)):
            if (theirs.accepted, theirs.generated) != (ours.accepted, ours.generated):
                raise RuntimeError(
                    f"round {i + 1}: {name} wrote {theirs.accepted} rows from {theirs.generated} images, but "
                    f"{job_name} accepted {ours.accepted} of {ours.generated}: not the same work")


def ray_job(cfg: JobConfig) -> Run:
    """run_job (what `augment run` does) on the Ray instance this process is connected to."""
    from augment.runner.job import run_job
    from augment.runner.markers import OutputFolder

    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            summary = run_job(cfg)
    except BaseException:
        sys.stderr.write(log.getvalue())
        raise
    seconds = time.perf_counter() - start
    done = OutputFolder(cfg.output).completed(summary["fingerprint"])
    busy: dict[str, float] = {}
    for stats in done.values():
        busy[stats.worker] = busy.get(stats.worker, 0.0) + stats.seconds
    longest = max(busy.values(), default=0.0)
    return Run(seconds, summary["generated"], summary["accepted"], setup_seconds=max(seconds - longest, 0.0),
               extra={"shard_seconds_per_worker": sorted(busy.values()), "shards": len(done)})


# ------------------------------------------------------------------------------------------ the device section

def count_flops(model: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward (convolutions and matmuls, 2 per multiply-add; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return int(counter.get_total_flops())


def time_per_call(fn: Callable[[], Any], device: torch.device, iters: int, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call of `fn` over `repeats` timings of `iters` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - t) / iters)
    return statistics.median(times)


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> list[str]:
    """The synchronising CUDA calls `fn` makes (torch.cuda.set_sync_debug_mode): the Python line of each."""
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]


def device_section(args: BenchmarkSettings, device: torch.device) -> dict[str, Any]:
    """Generator and device-step throughput per size and precision, FLOPs, fraction of peak, host syncs, PNG cost."""
    num_classes, ignore = len(example.CLASSES), example.IGNORE_INDEX
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    source, peaks = gpu_peaks(name, parse_peaks(args.peak_tflops)) if device.type == "cuda" else (
        "no peak for CPUs", parse_peaks(args.peak_tflops))
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    compile_modes = {"auto": [False, True] if device.type == "cuda" else [False], "on": [False, True],
                     "off": [False]}[args.compile]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the shard processor does
    result: dict[str, Any] = {"device": name, "peak_tflops": peaks, "peak_source": source, "batch": args.gpu_batch,
                              "fp32_convs_use_tf32": tf32, "rows": [], "sizes": []}
    for size in parse_sizes(args.gpu_sizes):
        torch.manual_seed(0)
        cfg = GANConfig(num_classes=num_classes, size=size, **MODEL_PRESETS[args.gpu_model])
        gen = build_generator(cfg)
        init_weights(gen)
        gen.requires_grad_(False).eval().to(device, memory_format=torch.channels_last)
        masks_np = np.stack([m for _, _, m in example.generate(args.gpu_batch, size, 0)])
        masks = torch.from_numpy(masks_np).to(device).long()
        seeds, targets = list(range(args.gpu_batch)), [int(np.bincount(m.ravel(), minlength=256)[:num_classes].argmin())
                                                       for m in masks_np]
        label = one_hot_labels(masks, num_classes, ignore).contiguous(memory_format=torch.channels_last)
        z = sample_noises(masks, seeds, targets, cfg.z_dim, "target", seeds)
        z = z.contiguous(memory_format=torch.channels_last)
        flops = count_flops(gen, label[:1], z[:1])
        info = {"size": list(size), "generator": {"g_width": cfg.g_width, "spade_hidden": cfg.spade_hidden,
                "z_dim": cfg.z_dim}, "generator_gflops_per_image": round(flops / 1e9, 3)}
        variants = [(p, c, False) for p in ("fp32", "bf16") for c in compile_modes] + [("bf16", False, True)]
        for precision, compiled, cached in variants:
            row: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "precision": precision, "compiled": compiled,
                                   "variant": "spectral-norm weights cached" if cached else ""}
            try:
                row.update(_time_generator(args, device, gen, label, z, precision, compiled, cached))
            except Exception as exc:  # a compile failure must not lose the other figures
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                result["rows"].append(row)
                continue
            achieved = flops * row["images_per_s"] / 1e12
            key = "tf32" if precision == "fp32" and tf32 else precision
            row.update({"achieved_tflops": round(achieved, 3), "peak_tflops": peaks.get(key), "peak_kind": key,
                        "fraction_of_peak": round(achieved / peaks[key], 4) if peaks.get(key) else None})
            log(f"device: {row['size']} {precision}{' compiled' if compiled else ''} {row['variant']}: "
                f"{row['images_per_s']:.1f} images/s")
            result["rows"].append(row)
        info.update(_device_step(args, device, gen, masks, seeds, targets, num_classes, ignore))
        info["png_ms_per_image"] = _png_cost(masks_np)
        level_ms = info["png_ms_per_image"][f"level_{shard_mod.PNG_COMPRESS_LEVEL}"]
        info["png_threads_to_keep_up"] = round(info["device_step_images_per_s"] * level_ms / 1e3, 1)
        result["sizes"].append(info)
        del gen, label, z
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _time_generator(args: BenchmarkSettings, device: torch.device, gen: torch.nn.Module, label: torch.Tensor,
                    z: torch.Tensor, precision: str, compiled: bool, cached: bool) -> dict[str, Any]:
    """Images/s of the generator's forward alone (inputs ready on the device), eager or torch.compile'd.

    `cached`: spectral-norm weights computed once (torch.nn.utils.parametrize.cached) instead of every forward.
    """
    model: Any = torch.compile(gen) if compiled else gen
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else (
        contextlib.nullcontext)

    def forward() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return model(label, z)

    out: dict[str, Any] = {}
    if compiled:
        t = time.perf_counter()
        forward()
        sync(device)
        out["compile_seconds"] = round(time.perf_counter() - t, 1)
    with torch.nn.utils.parametrize.cached() if cached else contextlib.nullcontext():
        per_batch = time_per_call(forward, device, args.gpu_iters, args.repeats)
    return {"images_per_s": round(label.shape[0] / per_batch, 2), "ms_per_batch": round(per_batch * 1e3, 3), **out}


def _device_step(args: BenchmarkSettings, device: torch.device, gen: torch.nn.Module, masks: torch.Tensor,
                 seeds: list[int], targets: list[int], num_classes: int, ignore: int) -> dict[str, Any]:
    """The library's device step as the shard processor runs it: synthesise, segment, score (results stay put)."""
    seg = build_segmenter(args.segmenter, num_classes).eval().to(device, memory_format=torch.channels_last)
    flops = count_flops(seg, torch.zeros(1, 3, *masks.shape[-2:], device=device))

    @torch.inference_mode()
    def step() -> torch.Tensor:
        images = synthesise(gen, masks, seeds, targets, num_classes, ignore, base_seeds=seeds)
        x = normalize(images, "imagenet")
        logits = segment(seg, x)
        return accept(score_batch(logits, masks, targets, num_classes, ignore), filter_config())

    per_batch = time_per_call(step, device, args.gpu_iters, args.repeats)
    out: dict[str, Any] = {"segmenter_gflops_per_image": round(flops / 1e9, 3),
                           "device_step_images_per_s": round(masks.shape[0] / per_batch, 2),
                           "device_step_precision": ("generator " + ("bf16" if use_bf16(device) else "fp32") +
                                                     ", segmenter " + ("bf16" if device.type == "cuda" else "fp32"))}
    if device.type == "cuda":
        syncs = count_host_syncs(step, device)
        out["device_step_host_syncs"] = len(syncs)
        out["device_step_sync_lines"] = {line: syncs.count(line) for line in sorted(set(syncs))}
    return out


def _png_cost(masks: np.ndarray) -> dict[str, float]:
    """CPU milliseconds per sample to PNG-encode its example image (at the pipeline's level, and at 6) and mask."""
    images = [im for _, im, _ in example.generate(min(len(masks), 4), masks.shape[-2:], 1)]
    encode_image(images[0], compress_level=shard_mod.PNG_COMPRESS_LEVEL)  # warm-up
    out = {}
    for level in sorted({shard_mod.PNG_COMPRESS_LEVEL, 6}):
        t = time.thread_time()
        for im, m in zip(images, masks):
            encode_image(im, compress_level=level)
            encode_mask(m)
        out[f"level_{level}"] = round((time.thread_time() - t) / len(images) * 1e3, 2)
    return out


# ---------------------------------------------------------------------------------------------------- the run

def median_run(runs: list[Run]) -> dict[str, Any]:
    """Medians over the repeats (each figure on its own) plus the raw per-run figures."""
    med = statistics.median
    stages = {s: med([r.stages.get(s, 0.0) for r in runs]) for s in runs[0].stages} if runs[0].stages else {}
    return {
        "seconds": med([r.seconds for r in runs]),
        "images_per_s": med([r.images_per_s for r in runs]),
        "accepted_per_s": med([r.accepted_per_s for r in runs]),
        "steady_images_per_s": med([r.steady_images_per_s for r in runs]),
        "setup_seconds": med([r.setup_seconds for r in runs]),
        "generated": runs[0].generated,
        "accepted": runs[0].accepted,
        "peak_rss_mib": round(max(r.peak_bytes for r in runs) / 2**20, 1),
        "baseline_rss_mib": round(min(r.baseline_bytes for r in runs) / 2**20, 1),
        "stages_seconds": stages,
        "runs": [{"seconds": round(r.seconds, 3), "images_per_s": round(r.images_per_s, 3),
                  "setup_seconds": round(r.setup_seconds, 3), **r.extra} for r in runs],
    }


def round_ratio(runs: list[Run], others: list[Run], steady: bool = False) -> float:
    """The median over the rounds of (images/s of `runs` / images/s of `others` in the same round); `steady`: of the
    rates without the one-off setup."""
    rate = (lambda r: r.steady_images_per_s) if steady else (lambda r: r.images_per_s)
    return statistics.median(rate(a) / rate(b) for a, b in zip(runs, others))


def measure(fn: Callable[[], Run], memory: PeakMemory) -> Run:
    with PeakMemory(memory.interval) as mem:
        run = fn()
    run.peak_bytes, run.baseline_bytes = mem.peak, mem.baseline
    return run


def cpu_section(args: BenchmarkSettings, work: Path, device: torch.device) -> dict[str, Any]:
    import ray

    from augment.data.ingest import write_example_data
    from augment.runner.job import prepare_job

    check_modes(args.modes)
    crop = crop_size(args) if "insert" in args.modes else None
    cores = args.threads or cpu_cores()
    gpus = 1 if device.type == "cuda" else 0
    worker_counts = [w for w in args.workers if w <= cores]
    skipped = [w for w in args.workers if w > cores]
    t = time.perf_counter()
    own_ray = not ray.is_initialized()
    if own_ray:
        system = {} if args.ray_niceness is None else {"worker_niceness": args.ray_niceness}
        ray.init(num_cpus=cores, num_gpus=gpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, _system_config=system)
    ray_start = time.perf_counter() - t
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        write_example_data(str(work / "data"), args.source_maps, parse_size(args.size), seed=0, workers=1)
    gan, seg = make_models(work, str(work / "data"), args.segmenter, args.model)
    inputs = {"data": str(work / "data"), "gan": gan, "seg": seg}
    if "insert" in args.modes:
        inputs["crop_gan"] = save_generator(str(work / "crop-gan-run"), inputs["data"], args.model, crop)
    others = [m for m in args.modes if m != "scene"]
    counter = iter(range(10**6))

    def fresh(kind: str) -> str:
        return str(work / "out" / f"{kind}-{next(counter)}")

    def contenders(n: int) -> dict[str, Callable[[], Run]]:
        base = job_config(args, inputs, fresh("x"), n, 1, cores, gpus)
        job = prepare_job(base)
        out: dict[str, Callable[[], Run]] = {
            "plain loop": lambda: plain_loop(base, fresh("plain") + ".parquet", device),
        }
        if args.compare_precision and use_bf16(device, args.precision):  # what bf16 buys, side by side
            fp32 = replace(base, precision="fp32")
            out["plain loop, fp32"] = lambda: plain_loop(fp32, fresh("plain32") + ".parquet", device)
        out |= {
            "pipeline, no Ray": lambda: pipeline_in_process(job, fresh("inproc"), device, cores),
        }
        for w in worker_counts:
            workers = f", {w} worker{'s' * (w > 1)}"
            out[AUGMENT_ROW + workers] = (
                lambda w=w: ray_job(job_config(args, inputs, fresh(f"ray{w}"), n, w, cores, gpus)))
            if args.raydata:
                out[RAYDATA_ROW + workers] = lambda w=w: raydata_job(job, fresh(f"raydata{w}"), w, cores, gpus)
            for mode in others:  # the same job in the other synthesis modes, beside the scene row
                out[mode_row(mode) + workers] = (lambda w=w, mode=mode: ray_job(
                    job_config(args, inputs, fresh(f"{mode}{w}"), n, w, cores, gpus, mode)))
        return out

    (work / "out").mkdir()
    memory = PeakMemory()
    with torch_threads(cores):
        t = time.perf_counter()
        prepare_job(job_config(args, inputs, fresh("x"), args.n, 1, cores, gpus))
        validation = time.perf_counter() - t
        if args.warmup:  # torch's kernels in this process, the page cache, Ray's worker pool
            warm = contenders(min(args.n, 2 * args.batch))
            ray_rows = [k for k in warm if k.startswith((AUGMENT_ROW, RAYDATA_ROW, *map(mode_row, others)))]
            first_ray = [k for k in ray_rows if k.split(", ")[-1] == ray_rows[0].split(", ")[-1]]  # first count
            for name in ("plain loop", "pipeline, no Ray", *first_ray):
                fn = warm[name]
                log(f"warm-up: {name}: {fn().seconds:.1f} s")
        chosen = contenders(args.n)
        runs: dict[str, list[Run]] = {k: [] for k in chosen}
        for i in range(args.repeats):
            for name, fn in chosen.items():
                runs[name].append(measure(fn, memory))
                log(f"run {i + 1}/{args.repeats}: {name}: {runs[name][-1].seconds:.1f} s, "
                    f"{runs[name][-1].images_per_s:.2f} images/s")
                shutil.rmtree(work / "out", ignore_errors=True)
                (work / "out").mkdir()
    check_same_rows(runs)
    results = {name: median_run(r) for name, r in runs.items()}
    plain = runs["plain loop"]
    for name, r in runs.items():  # ratios within each round, then the median: robust to load drifting between rounds
        results[name]["ratio_vs_plain_loop"] = round_ratio(r, plain)
        results[name]["steady_ratio_vs_plain_loop"] = round_ratio(r, plain, steady=True)
        peer = RAYDATA_ROW + name[len(AUGMENT_ROW):]
        if name.startswith(AUGMENT_ROW) and peer in runs:
            results[name]["ratio_vs_raydata"] = round_ratio(r, runs[peer])
            results[name]["steady_ratio_vs_raydata"] = round_ratio(r, runs[peer], steady=True)
        for mode in others:  # insert / scene and paste / scene at each worker count, within each round
            if name.startswith(mode_row(mode) + ", "):
                scene = AUGMENT_ROW + name[len(mode_row(mode)):]
                results[name]["ratio_vs_scene"] = round_ratio(r, runs[scene])
                results[name]["steady_ratio_vs_scene"] = round_ratio(r, runs[scene], steady=True)
    if own_ray:
        ray.shutdown()
    return {"cores": cores, "workers": worker_counts, "workers_skipped": skipped, "ray_init_seconds": ray_start,
            "validation_seconds": validation, "memory_method": memory.method, "modes": list(args.modes),
            "crop": crop, "results": results}


def summarise(args: BenchmarkSettings, cpu: dict[str, Any] | None, dev: dict[str, Any] | None,
              device: torch.device, load: tuple[list[float], list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "note": "untrained models (random weights of the real architectures): the FLOPs of trained ones, not their "
                "images or accept rates",
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                    "cpu_cores": cpu_cores(), "load_average_before": load[0], "load_average_after": load[1],
                    "png_compress_level": shard_mod.PNG_COMPRESS_LEVEL,
                    "generator_precision": "bf16" if use_bf16(device, args.precision) else "fp32"},
    }
    if cpu is not None:
        res = cpu["results"]
        plain = res["plain loop"]
        ray_rows = {k: v for k, v in res.items() if k.startswith(AUGMENT_ROW)}
        best_name = max(ray_rows, key=lambda k: ray_rows[k]["ratio_vs_plain_loop"])
        best = ray_rows[best_name]
        out.update({
            "pipeline_images_per_s": round(best["images_per_s"], 3),
            "pipeline_accepted_per_s": round(best["accepted_per_s"], 3),
            "pipeline_workers": int(best_name.split(", ")[1].split()[0]),
            "plain_loop_images_per_s": round(plain["images_per_s"], 3),
            "plain_loop_accepted_per_s": round(plain["accepted_per_s"], 3),
            "ratio_vs_plain_loop": round(best["ratio_vs_plain_loop"], 3),
            "steady_ratio_vs_plain_loop": round(best["steady_ratio_vs_plain_loop"], 3),
            "in_process_images_per_s": round(res["pipeline, no Ray"]["images_per_s"], 3),
            "scaling": [{"workers": int(k.split(", ")[1].split()[0]), "images_per_s": round(v["images_per_s"], 3),
                         "ratio_vs_plain_loop": round(v["ratio_vs_plain_loop"], 3)}
                        for k, v in ray_rows.items()],
            "cpu": cpu,
        })
        modes = [mode_summary(m, k, res) for m in cpu["modes"] if m != "scene" for k in ray_rows]
        if modes:
            at_best = {m["mode"]: m for m in modes if m["workers"] == out["pipeline_workers"]}
            out["modes"] = modes
            out |= {f"ratio_{m}_vs_scene": at_best[m]["ratio_vs_scene"] for m in at_best}
            out |= {f"steady_ratio_{m}_vs_scene": at_best[m]["steady_ratio_vs_scene"] for m in at_best}
        if "ratio_vs_raydata" in best:
            out.update({"ratio_vs_raydata": round(best["ratio_vs_raydata"], 3),
                        "steady_ratio_vs_raydata": round(best["steady_ratio_vs_raydata"], 3),
                        "raydata": [raydata_summary(k, v, res[RAYDATA_ROW + k[len(AUGMENT_ROW):]])
                                    for k, v in ray_rows.items()]})
    out["device_section"] = dev if dev is not None else {"skipped": "no CUDA device (pass --device-section cpu to "
                                                                     "run it on the CPU anyway)"}
    return out


def mode_summary(mode: str, scene_name: str, results: dict[str, Any]) -> dict[str, Any]:
    """One worker count's comparison of `augment run` in synthesis `mode` with the scene row `scene_name`."""
    ours = results[mode_row(mode) + scene_name[len(AUGMENT_ROW):]]
    scene = results[scene_name]
    return {"mode": mode, "workers": int(scene_name.split(", ")[1].split()[0]),
            "images_per_s": round(ours["images_per_s"], 3), "scene_images_per_s": round(scene["images_per_s"], 3),
            "generated": ours["generated"], "accepted": ours["accepted"], "scene_generated": scene["generated"],
            "ratio_vs_scene": round(ours["ratio_vs_scene"], 3),
            "steady_ratio_vs_scene": round(ours["steady_ratio_vs_scene"], 3)}


def raydata_summary(name: str, ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """One worker count's comparison of `augment run` (`ours`, row `name`) with its Ray Data peer (`peer`)."""
    return {"workers": int(name.split(", ")[1].split()[0]), "images_per_s": round(peer["images_per_s"], 3),
            "augment_run_images_per_s": round(ours["images_per_s"], 3), "rows_written": peer["accepted"],
            "augment_run_accepted": ours["accepted"],
            "ratio_augment_run_vs_raydata": round(ours["ratio_vs_raydata"], 3),
            "steady_ratio_augment_run_vs_raydata": round(ours["steady_ratio_vs_raydata"], 3)}


# ------------------------------------------------------------------------------------------------------- output

def format_report(report: dict[str, Any]) -> str:
    lines = [f"augment throughput benchmark ({report['note']})",
             f"machine: {report['machine']['cpu_cores']} cores, {report['machine']['device']}, torch "
             f"{report['machine']['torch']}, load average {report['machine']['load_average_before']} before, "
             f"{report['machine']['load_average_after']} after; PNG level {report['machine']['png_compress_level']}; "
             f"generator in {report['machine']['generator_precision']} (--precision {report['config']['precision']})"]
    cfg = report["config"]
    cpu = report.get("cpu")
    if cpu:
        lines += [
            "",
            f"end to end: {cfg['n']} samples at {cfg['size']}, batch {cfg['batch']}, {cfg['samples_per_shard']} per "
            f"shard, model {cfg['model']} + {cfg['segmenter']}, filter {cfg['filter']}; median of {cfg['repeats']} "
            f"(Ray start {cpu['ray_init_seconds']:.1f} s and validation {cpu['validation_seconds']:.1f} s are "
            f"outside the runs / inside run_job)",
            f"{'':<{NAME_WIDTH}}{'images/s':>10}{'accepted/s':>11}{'vs plain':>9}{'wall s':>8}{'setup s':>8}"
            f"{'steady/s':>9}{'peak MiB':>10}",
        ]
        for name, r in cpu["results"].items():
            lines.append(f"{name:<{NAME_WIDTH}}{r['images_per_s']:>10.2f}{r['accepted_per_s']:>11.2f}"
                         f"{r['ratio_vs_plain_loop']:>8.2f}x{r['seconds']:>8.1f}{r['setup_seconds']:>8.1f}"
                         f"{r['steady_images_per_s']:>9.2f}{r['peak_rss_mib']:>10.0f}")
        lines.append("  vs plain: the median over the rounds of (this / the plain loop in the same round)")
        lines.append("  setup = model load etc. before the first batch (plain, no Ray); for run_job: wall - the "
                     "busiest worker's shard seconds (validation, actor start, model load, verify, sheets); for "
                     "Ray Data: wall - the busiest actor's batch seconds (actor start, model load, the last write)")
        lines.append(f"  memory: {cpu['memory_method']}; peak over the runs, baseline before them "
                     f"{min(r['baseline_rss_mib'] for r in cpu['results'].values()):.0f} MiB")
        if cpu["workers_skipped"]:
            lines.append(f"  skipped {cpu['workers_skipped']} workers: more than the {cpu['cores']} cores")
        lines += ["", "busy seconds per stage (median run; pipeline stages overlap, so they sum past the wall time)",
                  f"{'':<{NAME_WIDTH}}" + "".join(f"{s:>9}" for s in shard_mod.STAGES)]
        for name in ("plain loop", "pipeline, no Ray"):
            st = cpu["results"][name]["stages_seconds"]
            lines.append(f"{name:<{NAME_WIDTH}}" + "".join(f"{st.get(s, 0.0):>9.2f}" if s in st else f"{'-':>9}"
                                                 for s in shard_mod.STAGES))
        lines += ["", f"pipeline (augment run) {report['pipeline_images_per_s']:.2f} images/s with "
                      f"{report['pipeline_workers']} worker(s) = {report['ratio_vs_plain_loop']:.2f}x the plain loop "
                      f"end to end, {report['steady_ratio_vs_plain_loop']:.2f}x without one-off setup"]
        for r in report.get("modes", []):
            lines.append(f"{r['mode']} / scene (augment run), {r['workers']} worker(s): {r['images_per_s']:.2f} / "
                         f"{r['scene_images_per_s']:.2f} images/s = {r['ratio_vs_scene']:.2f}x end to end (median "
                         f"over the rounds), {r['steady_ratio_vs_scene']:.2f}x without one-off setup; "
                         f"{r['generated']} samples made of the {r['scene_generated']} scene ones at {cfg['size']}"
                         + (f", crop {cpu['crop']}" if r["mode"] == "insert" else ""))
        for r in report.get("raydata", []):
            lines.append(f"augment run / Ray Data map_batches, {r['workers']} worker(s): "
                         f"{r['augment_run_images_per_s']:.2f} / {r['images_per_s']:.2f} images/s = "
                         f"{r['ratio_augment_run_vs_raydata']:.2f}x end to end "
                         f"(median over the rounds), {r['steady_ratio_augment_run_vs_raydata']:.2f}x without "
                         f"one-off setup; Ray Data wrote {r['rows_written']} rows = the job's "
                         f"{r['augment_run_accepted']} accepted (checked every round)")
    dev = report["device_section"]
    lines.append("")
    if "skipped" in dev:
        lines.append(f"device section skipped: {dev['skipped']}")
        return "\n".join(lines)
    lines += [f"device: {dev['device']}, batch {dev['batch']}, peak TFLOP/s {dev['peak_tflops'] or '?'} "
              f"({dev['peak_source']})" + ("; fp32 convs run on TF32 tensor cores (PyTorch default)"
                                           if dev["fp32_convs_use_tf32"] else ""),
              f"{'size':<10}{'precision':<10}{'compiled':<9}{'images/s':>10}{'ms/batch':>10}{'TFLOP/s':>9}"
              f"{'of peak':>9}"]
    for r in dev["rows"]:
        if "error" in r:
            lines.append(f"{r['size']:<10}{r['precision']:<10}{str(r['compiled']):<9}  failed: {r['error']}")
            continue
        frac = f"{100 * r['fraction_of_peak']:.1f}%" if r["fraction_of_peak"] is not None else "?"
        lines.append(f"{r['size']:<10}{r['precision']:<10}{str(r['compiled']):<9}{r['images_per_s']:>10.1f}"
                     f"{r['ms_per_batch']:>10.2f}{r['achieved_tflops']:>9.2f}{frac:>9}  {r['variant']}")
    for s in dev["sizes"]:
        size = f"{s['size'][0]}x{s['size'][1]}"
        png = ", ".join(f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in s["png_ms_per_image"].items())
        where = ", ".join(f"{k} x{v}" for k, v in s.get("device_step_sync_lines", {}).items())
        syncs = (f"; {s['device_step_host_syncs']} host syncs per batch ({where})"
                 if "device_step_host_syncs" in s else "")
        lines.append(f"{size}: generator {s['generator_gflops_per_image']:.3g} GFLOP/image, segmenter "
                     f"{s['segmenter_gflops_per_image']:.3g}; device step (synthesise + segment + score, "
                     f"{s['device_step_precision']}) {s['device_step_images_per_s']:.1f} images/s{syncs}; PNG image + "
                     f"mask per sample on one thread: {png}, so {s['png_threads_to_keep_up']:.1f} threads keep "
                     f"up at level {report['machine']['png_compress_level']}")
    return "\n".join(lines)


def run_benchmark(args: BenchmarkSettings) -> dict[str, Any]:
    """Run the sections `args` asks for, print the report and return it (also written to `args.json` if set)."""
    device = pick_device()
    load_before = [round(x, 2) for x in os.getloadavg()]
    cpu = None
    if not args.gpu_only:
        with tempfile.TemporaryDirectory(prefix="augment-bench-", dir=args.workdir) as tmp:
            cpu = cpu_section(args, Path(tmp), device)
    dev = None
    section = args.device_section
    if section == "auto":
        section = "cuda" if torch.cuda.is_available() else "off"
    if section != "off":
        with torch_threads(args.threads or cpu_cores()):
            dev = device_section(args, torch.device(section))
    report = summarise(args, cpu, dev, device, (load_before, [round(x, 2) for x in os.getloadavg()]))
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return report
