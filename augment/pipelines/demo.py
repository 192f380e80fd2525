"""`augment demo`: the whole chain on the built-in example data, on a local Ray instance (or $RAY_ADDRESS).

Stages, each printed with its wall time, all under OUT:
 1. data/train (N scenes, seed 0) and data/val (a separate set, seed 1): `write_example_data`
 2. baseline/: the segmenter on data/train alone (`train_segmenter`)
 3. gan/: the GAN on data/train (`train_gan`, with the L1 term and a short-memory EMA, see GAN_MODEL); with
    --mode insert, cropgan/: a guided crop-mode GAN (CROP x CROP crops, `train-gan --crop --guide`) that repaints
    real objects to fit the real images they are put into; with --mode
    paste, nothing (copy-paste uses the objects' own pixels)
 4. synthetic/: an augmentation job (OUT/job.yaml) with explicit quotas for the rarest classes by pixel share in
    data/train's statistics. Mode scene: its filter is calibrated to the baseline (min mIoU = half its val mIoU;
    min target IoU = half its mean val IoU over those classes, so a scene whose target class the baseline does not
    find at all is rejected, unless the baseline finds none of them on val either); modes paste and insert: the
    region filter at the job defaults (the target class's IoU in the object's box)
 5. retrain/: `retrain` with baseline/ as the baseline (same recipe, step budget and seed), which writes the report
    retrain/report.md (+ .html, .json, figures/)

The defaults are sized to finish in minutes on a 2-core CPU; --size, --steps and --n scale everything (segmenter
epochs and synthetic quotas follow --steps and --n). On a machine with a GPU every stage uses it.

An existing OUT is refused unless --overwrite (delete it and start over; only a folder holding demo.json, i.e. a
demo output, is deleted) or --resume (keep every complete stage and finish the rest; the settings must match
OUT/demo.json).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import yaml

from augment.data.dataset import is_dataset, read_info
from augment.data.objects import DEFAULT_MIN_PIXELS
from augment.core.errors import AugmentError
from augment.pipelines.retrain import RetrainConfig, retrain
from augment.synthesis import SYNTHESIS_MODES

DEMO_FILE = "demo.json"
CROP = 32
"""Crop side of mode insert's generator (at most the images' shorter side)."""
DEFAULT_SIZE = (48, 64)
DEFAULT_STEPS = 150
DEFAULT_N = 96
RARE_CLASSES = 4
GAN_MODEL = {"g_width": 8, "d_width": 16, "spade_hidden": 32, "ema_decay": 0.95}
"""Narrower than train-gan's defaults for <= 64 px (about half the CPU time per step), and an EMA that forgets the
initial weights within a short run (0.999 averages over ~1000 steps: after 200 its images are still grey)."""


@dataclass
class DemoSettings:
    size: tuple[int, int] = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    n: int = DEFAULT_N
    seed: int = 0
    mode: str = "scene"
    """Synthesis mode of the job (augment.synthesis.SYNTHESIS_MODES; jobs' `synthesis.mode`)."""

    @property
    def val_n(self) -> int:
        return max(8, self.n // 3)

    @property
    def seg_epochs(self) -> int:
        return max(2, self.steps // 18)

    @property
    def quota(self) -> int:
        return max(4, self.n // 6)

    @property
    def batch(self) -> int:
        return 8 if self.n >= 32 else 4

    @property
    def crop(self) -> int:
        return min(CROP, *self.size)

    def to_json(self) -> dict[str, Any]:
        """demo.json; mode scene is left out, so demos written before --mode existed still --resume."""
        out = {**asdict(self), "size": list(self.size)}
        if self.mode == "scene":
            out.pop("mode")
        return out


def rarest_classes(data: str, k: int = RARE_CLASSES, min_object: int | None = None) -> list[str]:
    """The `k` classes with the smallest pixel share in a dataset's statistics, among the classes present (with
    `min_object`: among those with an object, a connected component, of at least that many pixels in some label
    map, which modes paste and insert need)."""
    info = read_info(data)
    present = [(p, i) for i, p in enumerate(info.class_pixels) if p > 0]
    if min_object is not None:
        have = object_classes(data, min_object)
        present = [(p, i) for p, i in present if i in have]
    return [info.classes[i] for _, i in sorted(present)[:k]]


def object_classes(data: str, min_pixels: int) -> set[int]:
    """The class indices with an object of `min_pixels`+ pixels in some label map of the dataset `data`."""
    from augment.data.dataset import open_dataset
    from augment.data.lookup import LabelMaps, RowLookup
    from augment.data.objects import all_components

    dataset = open_dataset(data)
    found: set[int] = set()
    for mask in LabelMaps(RowLookup(dataset)).values():
        found |= {obj.class_index for obj in all_components(mask, mask != dataset.info.ignore_index)
                  if int(obj.shape.sum()) >= min_pixels}
    return found


def _prepare_out(out: str, settings: DemoSettings, overwrite: bool, resume: bool) -> None:
    marker = os.path.join(out, DEMO_FILE)
    if os.path.isdir(out) and os.listdir(out):
        if overwrite:
            if not os.path.isfile(marker):
                raise AugmentError(f"{out} is not a demo output (no {DEMO_FILE}); --overwrite deletes only demo "
                                   f"outputs, remove it yourself or choose another --out")
            shutil.rmtree(out)
        elif resume:
            if not os.path.isfile(marker):
                raise AugmentError(f"{out} is not a demo output (no {DEMO_FILE}); choose another --out")
            with open(marker) as f:
                previous = json.load(f)
            if previous != settings.to_json():
                raise AugmentError(f"{out} holds a demo with other settings ({previous}); rerun with those, or "
                                   f"--overwrite")
        else:
            raise AugmentError(f"{out} exists and is not empty; pass --resume to finish that demo (complete stages "
                               f"are kept), --overwrite to start over, or choose another --out")
    os.makedirs(out, exist_ok=True)
    with open(marker, "w") as f:
        json.dump(settings.to_json(), f, indent=2)


class _Stages:
    def __init__(self, total: int) -> None:
        self.total, self.k, self.start = total, 0, time.monotonic()
        self.timings: dict[str, float] = {}

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        self.k += 1
        print(f"\n== demo [{self.k}/{self.total}] {name}: {what}", flush=True)
        t = time.monotonic()
        result = fn()
        self.timings[name] = round(time.monotonic() - t, 1)
        print(f"== demo [{self.k}/{self.total}] {name} done in {self.timings[name]:.1f} s "
              f"(total {time.monotonic() - self.start:.1f} s)", flush=True)
        return result


def run_demo(out: str, settings: DemoSettings, overwrite: bool = False, resume: bool = False,
             address: str | None = None) -> dict[str, Any]:
    """Run every stage (see the module docstring); returns the retrain report plus the stage timings."""
    from augment.data.ingest import write_example_data
    from augment.core.cluster import init_ray
    from augment.runner.job import format_summary as job_summary
    from augment.runner.job import load_job, run_job
    from augment.training.gan import GANTrainConfig, train_gan
    from augment.training.segmenter import SegTrainConfig, train_segmenter

    if settings.mode not in SYNTHESIS_MODES:
        raise AugmentError(f"unknown synthesis mode {settings.mode!r}; choose one of {', '.join(SYNTHESIS_MODES)}")
    out = os.path.abspath(out)
    _prepare_out(out, settings, overwrite, resume)
    s = settings
    train, val = os.path.join(out, "data", "train"), os.path.join(out, "data", "val")
    baseline = os.path.join(out, "baseline")
    gan = os.path.join(out, "cropgan" if s.mode == "insert" else "gan")
    synthetic, retrain_out = os.path.join(out, "synthetic"), os.path.join(out, "retrain")
    stages = _Stages(5)
    init_ray(address)

    def data() -> None:
        for path, n, seed, split in ((train, s.n, s.seed, "train"), (val, s.val_n, s.seed + 1, "val")):
            if is_dataset(path):
                print(f"{path}: complete, kept", flush=True)
                continue
            result = write_example_data(path, n, s.size, seed=seed, split=split)
            print(result.summary("wrote"), flush=True)

    stages.run("data", f"{s.n} example scenes at {s.size[0]}x{s.size[1]} for training, {s.val_n} more "
               f"(another seed) for validation", data)

    seg_cfg = SegTrainConfig(data=[train], val=val, out=baseline, size=s.size, epochs=s.seg_epochs, batch=s.batch,
                             seed=s.seed, resume=resume, address=address, log_every=10,
                             class_weights="median-frequency")
    card = stages.run("baseline", f"segmenter ({seg_cfg.model}) on real data only, {s.seg_epochs} epochs, "
                                  f"median-frequency class weights",
                      lambda: train_segmenter(seg_cfg))
    val_miou = float(card.metrics.get("val_miou") or 0.0)

    gan_cfg = GANTrainConfig(data=train, out=gan, size=None if s.mode == "insert" else s.size,
                             crop=s.crop if s.mode == "insert" else None, guide=s.mode == "insert",
                             steps=s.steps, batch=s.batch,
                             model=dict(GAN_MODEL), l1=True, seed=s.seed, resume=resume, address=address,
                             log_every=max(1, s.steps // 10))
    if s.mode == "paste":
        stages.run("gan", "none to train: mode paste copies the real objects' own pixels", lambda: None)
    elif s.mode == "insert":
        stages.run("gan", f"crop-mode OASIS GAN repainting real objects to fit {s.crop}x{s.crop} crops of real "
                          f"images (appearance guide), L1 term, {s.steps} steps", lambda: train_gan(gan_cfg))
    else:
        stages.run("gan", f"OASIS GAN with the L1 term (learns the label layout sooner), {s.steps} steps",
                   lambda: train_gan(gan_cfg))

    rare = rarest_classes(train, min_object=None if s.mode == "scene" else DEFAULT_MIN_PIXELS)
    val_iou = card.metrics.get("val_iou") or {}
    rare_iou = sum(float(val_iou.get(c) or 0.0) for c in rare) / len(rare)
    job_path = os.path.join(out, "job.yaml")
    job: dict[str, Any] = {
        "data": train, "generator": gan, "segmenter": baseline, "output": synthetic, "seed": s.seed,
        "classes": {c: s.quota for c in rare},
        "filter": {"min_miou": round(val_miou / 2, 4), "min_target_iou": round(rare_iou / 2, 4)},
        "resources": {"batch_size": 16, "samples_per_shard": 32},
    }
    if s.mode != "scene":
        job = {"version": 2, **job, "synthesis": {"mode": s.mode}}
        job.pop("filter")  # the region filter's defaults (schemas/job-v2.schema.json)
        if s.mode == "paste":
            job.pop("generator")
    with open(job_path, "w") as f:
        yaml.safe_dump(job, f, sort_keys=False)

    def augment_job() -> dict[str, Any]:
        summary = run_job(load_job(job_path))
        print(job_summary(summary), flush=True)
        if not summary["accepted"]:
            raise AugmentError(f"no synthetic sample passed the filter ({rule}); train longer with a larger --steps")
        return summary

    rule = (f"min mIoU {job['filter']['min_miou']} and min target IoU {job['filter']['min_target_iou']} (half the "
            f"baseline's val mIoU {val_miou:.3f} and its mean val IoU {rare_iou:.3f} on those classes)"
            if s.mode == "scene" else "region filter: the target's IoU in the object's box, at the job defaults")
    stages.run("augment", f"{s.quota} samples for each of the {len(rare)} rarest classes ({', '.join(rare)}), "
               f"mode {s.mode}, filter {rule}; job file {job_path}", augment_job)

    cfg = RetrainConfig(real=train, synthetic=[synthetic], val=val, out=retrain_out, ratio=0.3, baseline=baseline,
                        resume=resume, address=address, log_every=10)
    report = stages.run("retrain", "same recipe, step budget and seed as the baseline, 30% of every batch "
                        "synthetic; evaluate both and write the report", lambda: retrain(cfg))
    report["demo_timings"] = {**stages.timings, "total_s": round(time.monotonic() - stages.start, 1)}
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump(report["demo_timings"], f, indent=2)
    return report
