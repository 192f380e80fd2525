"""Train both models on CamVid within a stated budget and report their quality.

    python3 jobs/camvid_models.py --out camvid-models --size 72x96 --gan-steps 600 --l1 ...

1. ingests CamVid's train and val splits at --size (3:4 like CamVid's 360x480 keeps the aspect) into <out>/data;
2. trains the segmenter on the real train split (`train_segmenter`) and scores it on val (`evaluate_segmenter`,
   per-class IoU and mIoU);
3. trains the GAN on the train split (`train_gan`) and scores it as semantic image synthesis papers do
   (`evaluate_generator`): the mIoU of that segmenter, trained on real images only, on the images the GAN
   generates from the val label maps, next to the same segmenter on the real val images;
4. prints a table and writes <out>/results.json and <out>/gan_eval.png (label | real | generated | segmentation).

Rerunning the same command reuses the ingested data and resumes both runs (a finished run says so), so an
interrupted run continues and a larger --gan-steps / --seg-epochs trains on. Defaults depend on the device:
CPU 72x96, 500 GAN steps (small widths, EMA decay 0.99), 25 segmenter epochs; GPU 256x512 (OASIS widths, EMA
decay 0.999), 20000 GAN steps, 60 segmenter epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
try:
    import augment  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

import torch

from augment.data.codec import parse_size
from augment.data.dataset import is_dataset, read_info
from augment.data.ingest import ingest
from augment.core.errors import AugmentError
from augment.models.gan import WIDTH_KEYS, parse_widths
from augment.core.cluster import init_ray
from augment.training.evaluate import evaluate_segmenter, format_table
from augment.training.gan import GANTrainConfig, train_gan
from augment.synthesis.gan_eval import evaluate_generator
from augment.training.segmenter import SegTrainConfig, train_segmenter

DEFAULTS = {
    "cpu": {"size": (72, 96), "gan_steps": 500, "gan_batch": 4, "gan_widths": (8, 16, 32), "z_dim": 32,
            "ema_decay": 0.99, "seg_epochs": 25, "seg_batch": 8},
    "gpu": {"size": (256, 512), "gan_steps": 20000, "gan_batch": 8, "gan_widths": None, "z_dim": 64, "ema_decay": 0.999,
            "seg_epochs": 60, "seg_batch": 16},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"), help="CamVid (SegNet layout)")
    p.add_argument("--out", default="camvid-models", help="output folder (data, runs, results)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW", help="resolution of both models")
    p.add_argument("--gan-steps", type=int, default=None)
    p.add_argument("--gan-batch", type=int, default=None, help="GAN batch per worker")
    p.add_argument("--gan-widths", default=None, metavar="G,D,HIDDEN",
                   help="generator width, discriminator width, SPADE hidden channels ('auto': by size)")
    p.add_argument("--z-dim", type=int, default=None)
    p.add_argument("--ema-decay", type=float, default=None,
                   help="EMA generator decay; the EMA forgets its random start after ~3/(1-decay) steps")
    p.add_argument("--l1", action="store_true", help="GAN: add the L1 reconstruction term")
    p.add_argument("--feature-matching", action="store_true", help="GAN: add discriminator feature matching")
    p.add_argument("--seg-model", default="lraspp_mobilenet_v3_large")
    p.add_argument("--seg-epochs", type=int, default=None)
    p.add_argument("--seg-batch", type=int, default=None, help="segmenter batch per worker")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers for both trainings")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--address", default=None, help="Ray cluster address")
    p.add_argument("--eval-batch", type=int, default=16)
    args = p.parse_args(argv)
    defaults = DEFAULTS["gpu" if torch.cuda.is_available() else "cpu"]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.gan_widths == "auto":
        args.gan_widths = None
    elif isinstance(args.gan_widths, str):
        try:
            args.gan_widths = tuple(parse_widths(args.gan_widths).values())
        except ValueError as exc:
            p.error(f"--gan-widths: {exc}")
    return args


def ingest_split(args: argparse.Namespace, split: str) -> str:
    """`<out>/data/<split>` at --size, ingested once; refuses one at another size."""
    uri = str(Path(args.out) / "data" / split)
    if is_dataset(uri):
        info = read_info(uri)
        if info.image_size != tuple(args.size):
            raise AugmentError(f"{uri} holds {info.image_size} images, not {tuple(args.size)}; use another --out")
        return uri
    result = ingest(args.camvid, "camvid", uri, split=split, size=tuple(args.size))
    print(result.summary("ingested"))
    return uri


def gan_model(args: argparse.Namespace) -> dict[str, Any]:
    model: dict[str, Any] = {"z_dim": args.z_dim, "ema_decay": args.ema_decay}
    if args.gan_widths:
        model.update(zip(WIDTH_KEYS, args.gan_widths))
    return model


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(args.address)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times: dict[str, float] = {}

    t = time.time()
    train, val = ingest_split(args, "train"), ingest_split(args, "val")
    times["ingest_s"] = time.time() - t

    t = time.time()
    seg_run = str(out / "seg")
    train_segmenter(SegTrainConfig(
        data=[train], out=seg_run, val=val, model=args.seg_model, epochs=args.seg_epochs, batch=args.seg_batch,
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, resume=True, address=args.address,
    ))
    times["segmenter_train_s"] = time.time() - t
    seg_metrics = evaluate_segmenter(seg_run, val, batch=args.eval_batch, device=device)

    t = time.time()
    gan_run = str(out / "gan")
    gan_card = train_gan(GANTrainConfig(
        data=train, out=gan_run, steps=args.gan_steps, batch=args.gan_batch, l1=args.l1,
        feature_matching=args.feature_matching, sample_every=max(args.gan_steps // 4, 1), model=gan_model(args),
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, resume=True, address=args.address,
    ))
    times["gan_train_s"] = time.time() - t
    t = time.time()
    gan_metrics = evaluate_generator(gan_run, seg_run, val, batch=args.eval_batch, device=device,
                                     sheet=str(out / "gan_eval.png"))
    times["gan_eval_s"] = time.time() - t

    gan_cfg = gan_card.model_config
    budget = {
        "device": device,
        "size": list(args.size),
        "workers": args.workers,
        "segmenter": {"model": args.seg_model, "epochs": args.seg_epochs, "batch_per_worker": args.seg_batch},
        "gan": {"steps": gan_card.step, "batch_per_worker": args.gan_batch, "l1": args.l1,
                "feature_matching": args.feature_matching,
                "widths": {k: gan_cfg[k] for k in ("g_width", "d_width", "spade_hidden", "z_dim")},
                "ema_decay": gan_cfg["ema_decay"]},
    }
    results = {
        "budget": budget,
        "segmenter_val": seg_metrics,
        "gan_generated_val": gan_metrics,
        "times": {k: round(v, 1) for k, v in times.items()},
        "command": " ".join([sys.executable, *sys.argv]) if argv is None else argv,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\nCamVid at {args.size[0]}x{args.size[1]} on {device}, {args.workers} worker(s)")
    print(f"segmenter ({args.seg_model}, {args.seg_epochs} epochs, batch {args.seg_batch}) on val:")
    print(format_table(seg_metrics))
    g = budget["gan"]
    print(f"\nGAN ({g['steps']} steps, batch {g['batch_per_worker']}, widths {g['widths']}"
          f"{', L1' if args.l1 else ''}{', feature matching' if args.feature_matching else ''}):")
    width = max([len("pixel accuracy")] + [len(c) for c in gan_metrics["iou"]])
    print(f"{'class':<{width}}  {'real':>6}  {'generated':>9}")
    for name in gan_metrics["iou"]:
        print(f"{name:<{width}}  {pct(gan_metrics['real']['iou'][name]):>6}  {pct(gan_metrics['iou'][name]):>9}")
    print(f"{'mIoU':<{width}}  {pct(gan_metrics['real']['miou']):>6}  {pct(gan_metrics['miou']):>9}")
    print(f"{'pixel accuracy':<{width}}  {pct(gan_metrics['real']['pixel_accuracy']):>6}  "
          f"{pct(gan_metrics['pixel_accuracy']):>9}")
    print("\nsummary")
    print(f"  segmenter val mIoU                          {pct(seg_metrics['miou'])}")
    print(f"  segmenter mIoU on GAN images of val maps    {pct(gan_metrics['miou'])}"
          f"   (same segmenter on the real val images at the GAN's size: {pct(gan_metrics['real']['miou'])})")
    print("  times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    print(f"wrote {out / 'results.json'}, {out / 'gan_eval.png'}, sample sheets in {gan_run}/samples")
    return results


if __name__ == "__main__":
    try:
        main()
    except AugmentError as exc:
        print(f"camvid_models: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
