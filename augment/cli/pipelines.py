"""Adapters of the multi-step commands: `retrain` and `demo`."""

from __future__ import annotations

import argparse
import os

from augment.core import console


def retrain_command(args: argparse.Namespace) -> int:
    from augment.data import fs as afs
    from augment.pipelines.retrain import RetrainConfig, retrain
    from augment.report.retrain import FIGURES_DIR, REPORT_HTML, REPORT_JSON, REPORT_MD, format_summary, verdict

    cfg = RetrainConfig(
        real=args.real,
        synthetic=list(args.synthetic),
        out=args.out, val=args.val, ratio=args.ratio, model=args.model, size=args.size, epochs=args.epochs,
        batch=args.batch, lr=args.lr, seed=args.seed, deterministic=args.deterministic,
        class_weights=args.class_weights, weights_backbone=args.weights_backbone, init=args.init,
        baseline=args.baseline,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, resume=args.resume, address=args.address,
    )
    report = retrain(cfg)
    console.summary(format_summary(report))
    console.summary(verdict(report))
    console.summary(f"retrain: report in {afs.join(cfg.out, REPORT_MD)} (also {REPORT_HTML}, {REPORT_JSON}, "
                    f"{FIGURES_DIR}/)")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from augment.pipelines.demo import DEFAULT_N, DEFAULT_STEPS, DemoSettings, run_demo
    from augment.report.retrain import REPORT_MD, format_summary, verdict

    settings = DemoSettings(size=tuple(args.size), steps=args.steps or DEFAULT_STEPS, n=args.n or DEFAULT_N,
                            mode=args.mode)
    report = run_demo(args.out, settings, overwrite=args.overwrite, resume=args.resume)
    console.summary("")
    console.summary(format_summary(report))
    console.summary(verdict(report))
    timings = report["demo_timings"]
    console.summary("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if k != "total_s")
                    + f"; total {timings['total_s']:.0f} s")
    console.summary(f"demo: report in {os.path.join(os.path.abspath(args.out), 'retrain', REPORT_MD)}")
    return 0
