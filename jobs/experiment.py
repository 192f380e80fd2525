"""The augmentation experiment on CamVid: does filtered synthetic data help the rare classes when labels are scarce?

    python jobs/experiment.py --camvid ../shared/data/camvid --out runs/experiment [options]
    ray job submit --working-dir . -- python jobs/experiment.py --camvid ... --out s3://...   (on a cluster)

The settings, stages and layout are described in augment.pipelines.experiment; this script parses the options into
its `Experiment` and runs the chosen stages.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

try:
    import augment  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.core.errors import AugmentError
from augment.data.codec import parse_size
from augment.models.gan import parse_widths
from augment.pipelines.experiment import SETTINGS, STAGES, TARGETS, Experiment, run
from augment.training import CLASS_WEIGHTS


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> tuple[Experiment, list[str]]:
    d = Experiment(camvid="", out="")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camvid", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"),
                   help="CamVid root (SegNet layout; default ../shared/data/camvid next to the repository)")
    p.add_argument("--out", required=True, help="experiment folder (local or URI)")
    p.add_argument("--size", default=f"{d.size[0]}x{d.size[1]}", help="HxW all data is resized to at ingest")
    p.add_argument("--fractions", default="0.25,1.0", help="training fractions, comma-separated")
    p.add_argument("--seeds", default="0,1", help="segmenter and job seeds, comma-separated")
    p.add_argument("--subset-seed", type=int, default=d.subset_seed, help="seed of the fixed training subsets")
    p.add_argument("--model", default=d.model)
    p.add_argument("--seg-steps", type=int, default=d.seg_steps, help="optimizer steps of every segmenter run")
    p.add_argument("--batch", type=int, default=d.batch, help="segmenter batch per worker")
    p.add_argument("--lr", type=float, default=None, help="segmenter peak lr (default: train-seg's)")
    p.add_argument("--gan-steps", type=int, default=d.gan_steps)
    p.add_argument("--gan-batch", type=int, default=d.gan_batch)
    p.add_argument("--gan-widths", default=None, metavar="G,D,HIDDEN",
                   help="GAN generator, discriminator and SPADE hidden widths (default: OASIS's; e.g. 8,16,32 on CPU)")
    p.add_argument("--gan-l1", action="store_true", help="GAN: add the L1 reconstruction term (helps short runs)")
    p.add_argument("--class-weights", default=d.class_weights, choices=CLASS_WEIGHTS,
                   help="segmenter loss class weights, from the real training data's pixel counts")
    p.add_argument("--per-class", type=int, default=d.per_class, help="synthetic samples per targeted class")
    p.add_argument("--targets", default=",".join(TARGETS), help="targeted (rare) classes, comma-separated")
    p.add_argument("--ratio", type=float, default=d.ratio, help="synthetic fraction of every batch")
    p.add_argument("--min-miou", type=float, default=d.min_miou, help="filter: per-image mIoU threshold")
    p.add_argument("--min-target-iou", type=float, default=d.min_target_iou, help="filter: target-class IoU threshold")
    p.add_argument("--ignore-confidence", type=float, default=d.ignore_confidence, help="(d): pixel-ignore confidence")
    p.add_argument("--job-batch", type=int, default=d.job_batch, help="augmentation job batch size")
    p.add_argument("--deterministic", action="store_true",
                   help="train with torch's deterministic algorithms too (every run is seeded either way)")
    p.add_argument("--workers", type=int, default=d.workers, help="Ray Train workers per training run")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local instance)")
    p.add_argument("--arms", default=",".join(SETTINGS), help="arms to train, comma-separated ((a) always): "
                   + "; ".join(f"{k} {v[0]}" for k, v in SETTINGS.items()))
    p.add_argument("--no-control", action="store_true", help="skip the control arm ((a) trained twice)")
    p.add_argument("--train-match", default=None, metavar="REGEX",
                   help="draw training subsets from train frames whose id matches (e.g. '^(0006R0|0016E5)_')")
    p.add_argument("--heldout-match", default=None, metavar="REGEX",
                   help="train frames whose id matches form a held-out evaluation set (e.g. '^0001TP_')")
    p.add_argument("--crop", type=int, default=d.crop, help="insert arms: the crop GAN's crop size")
    p.add_argument("--crop-gan-steps", type=int, default=d.crop_gan_steps, help="insert arms: crop GAN steps")
    p.add_argument("--crop-gan-batch", type=int, default=d.crop_gan_batch, help="insert arms: crop GAN batch")
    p.add_argument("--crop-guide", action="store_true",
                   help="insert arms: the crop GAN repaints the source object's pixels (train-gan --guide)")
    p.add_argument("--band", type=int, default=d.band, help="paste/insert arms: feathered band (px), ignore in masks")
    p.add_argument("--min-region-iou", type=float, default=d.min_region_iou, help="insert arms: region IoU threshold")
    p.add_argument("--pixel-rule-k", type=float, default=d.pixel_rule_k, help="(g): FreeMask pixel rule's k")
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {', '.join(STAGES)} (default: all)")
    a = p.parse_args(argv)
    stages = list(STAGES) if a.stages == "all" else [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    fractions = _floats(a.fractions)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        p.error(f"--fractions must lie in (0, 1], got {a.fractions}")
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    arms = sorted({"a", *[k.strip() for k in a.arms.split(",") if k.strip()]})
    if any(k not in SETTINGS for k in arms):
        p.error(f"--arms: unknown arm(s) {[k for k in arms if k not in SETTINGS]}; choose from {', '.join(SETTINGS)}")
    try:
        size = parse_size(a.size)
    except ValueError as exc:
        p.error(str(exc))
    gan_widths = None
    if a.gan_widths:
        try:
            gan_widths = list(parse_widths(a.gan_widths).values())
        except ValueError as exc:
            p.error(f"--gan-widths: {exc}")
    x = Experiment(
        camvid=a.camvid, out=a.out, size=size, fractions=fractions, seeds=[int(s) for s in a.seeds.split(",")],
        subset_seed=a.subset_seed, model=a.model, seg_steps=a.seg_steps, batch=a.batch, lr=a.lr,
        gan_steps=a.gan_steps, gan_batch=a.gan_batch, gan_l1=a.gan_l1, class_weights=a.class_weights,
        gan_widths=gan_widths, per_class=a.per_class, targets=targets, ratio=a.ratio,
        min_miou=a.min_miou, min_target_iou=a.min_target_iou, ignore_confidence=a.ignore_confidence,
        job_batch=a.job_batch, deterministic=a.deterministic, workers=a.workers, gpus_per_worker=a.gpus_per_worker,
        address=a.address, arms=arms, control=not a.no_control, train_match=a.train_match,
        heldout_match=a.heldout_match, crop=a.crop, crop_gan_steps=a.crop_gan_steps, crop_gan_batch=a.crop_gan_batch,
        crop_guide=a.crop_guide,
        band=a.band, min_region_iou=a.min_region_iou, pixel_rule_k=a.pixel_rule_k,
    )
    return x, stages


def main(argv: list[str] | None = None) -> int:
    x, stages = parse_args(argv)
    if importlib.util.find_spec("ray") is None and stages != ["report"]:
        print("experiment: error: Ray is not installed: ingest, training and augmentation jobs run on Ray "
              "(pip install 'ray[data,train]'); only --stages report works without it", file=sys.stderr)
        return 2
    if "data" in stages and not os.path.isdir(x.camvid) and "://" not in x.camvid:
        print(f"experiment: error: CamVid not found at {x.camvid} (pass --camvid)", file=sys.stderr)
        return 2
    try:
        run(x, stages)
    except AugmentError as exc:
        print(f"experiment: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
