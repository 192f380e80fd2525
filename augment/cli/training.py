"""Adapters of the training commands: `train-gan`, `train-seg`, `evaluate` (typed configs built here from the
parsed options; torch and Ray are imported only when a command runs)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from augment.core import console


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options train-gan and train-seg share: workers, GPUs, resume, Ray address, seed, determinism."""
    return {"workers": args.workers, "gpus_per_worker": args.gpus_per_worker, "resume": args.resume,
            "address": args.address, "seed": args.seed, "deterministic": args.deterministic}


def train_gan_command(args: argparse.Namespace) -> int:
    from augment.training.gan import GANTrainConfig, train_gan

    config = GANTrainConfig(
        data=args.data,
        out=args.out,
        size=args.size,
        steps=args.steps,
        batch=args.batch,
        l1=args.l1,
        feature_matching=args.feature_matching,
        crop=args.crop,
        guide=args.guide,
        sample_every=args.sample_every,
        model={"ema_decay": args.ema_decay} if args.ema_decay is not None else {},
        **_run_options(args),
    )
    card = train_gan(config)
    losses = ", ".join(f"{k} {card.metrics[k]:.4f}" for k in ("d_total", "g_total") if k in card.metrics)
    console.summary(f"train-gan: {config.out}: step {card.step}/{config.steps}"
                    + (f" ({losses})" if losses else ""))
    return 0


def train_seg_command(args: argparse.Namespace) -> int:
    from augment.training.segmenter import SegTrainConfig, train_segmenter

    config = SegTrainConfig(
        data=list(args.data),
        out=args.out,
        val=args.val,
        model=args.model,
        size=args.size,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        class_weights=args.class_weights,
        weights_backbone=args.weights_backbone,
        init=args.init,
        **_run_options(args),
    )
    card = train_segmenter(config)
    miou = card.metrics.get("val_miou")
    tail = f", val mIoU {miou * 100:.2f}" if isinstance(miou, float) else ""
    console.summary(f"train-seg: {config.out}: {card.metrics.get('epoch', 0)} epochs, step {card.step}{tail}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from augment.training.evaluate import evaluate_segmenter, format_table

    metrics = evaluate_segmenter(args.model, args.data, batch=args.batch)
    console.summary(f"{metrics['model_name']} from {args.model} on {args.data} ({metrics['rows']} rows, model "
                    f"input {metrics['size'][0]}x{metrics['size'][1]}, scored at the masks' resolution, ignore "
                    "pixels excluded)")
    console.summary(format_table(metrics))
    console.summary("IoU '-': class in neither the masks nor the predictions (left out of mIoU)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=2)
        console.summary(f"wrote {args.json}")
    return 0
