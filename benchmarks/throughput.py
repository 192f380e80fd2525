#!/usr/bin/env python3
"""Throughput of the augmentation path: `augment run` on Ray against a plain single-process PyTorch loop and Ray Data.

What is measured and how: augment.pipelines.benchmark. This script parses the options into its BenchmarkSettings.

    python benchmarks/throughput.py                     # CPU defaults (run times: docs/results.md)
    python benchmarks/throughput.py --gpu-only          # device section only, no Ray
    python benchmarks/throughput.py --json out.json     # also write the results as JSON
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

try:
    import augment  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.core.device import PRECISIONS
from augment.core.errors import AugmentError
from augment.pipelines.benchmark import (MIN_CROP, MODEL_PRESETS, PREFERRED_CROP, BenchmarkSettings, parse_modes,
                                         run_benchmark)


def parse_args(argv: list[str] | None) -> BenchmarkSettings:
    d = BenchmarkSettings()  # the one home of every default
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default=d.size, help="image size HxW of the example data (default %(default)s)")
    p.add_argument("--n", type=int, default=d.n,
                   help="synthetic samples per run (default %(default)s, a small job; `augment run` pays a one-off cost to "
                        "start its workers (a fresh process importing torch), which a much shorter run would mostly "
                        "measure)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="the job's generator precision (default auto: bf16 where the device computes it natively)")
    p.add_argument("--compare-precision", action="store_true",
                   help="add a 'plain loop, fp32' row: the plain loop with the generator in fp32, to show what bf16 "
                        "buys (when the chosen precision is bf16)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size (default %(default)s, the job default)")
    p.add_argument("--samples-per-shard", type=int, default=d.samples_per_shard)
    p.add_argument("--source-maps", type=int, default=d.source_maps, help="example label maps to draw from (default %(default)s)")
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=d.workers,
                   help="Ray worker counts to try, comma-separated; those above the core count are skipped")
    p.add_argument("--modes", type=_modes, default=d.modes,
                   help=f"synthesis modes run as 'augment run' rows, comma-separated (default {','.join(d.modes)}): scene "
                        "(whole images; the reference), insert (a crop-mode generator paints objects into real "
                        "images), paste (copy-paste of real objects); each at every worker count, ratio to scene")
    p.add_argument("--crop", type=int, default=d.crop,
                   help=f"crop of mode insert's generator (default: {PREFERRED_CROP} where the images hold it, "
                        f"else {MIN_CROP})")
    p.add_argument("--no-raydata", dest="raydata", action="store_false",
                   help="skip the 'Ray Data map_batches, N workers' rows (the job's work as Ray Data map_batches -> "
                        "write_parquet, one per worker count, next to each 'augment run' row)")
    p.add_argument("--threads", type=int, default=d.threads, help="cores to use (default: all this process may use)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs per measurement; the median is quoted")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up runs")
    p.add_argument("--model", choices=sorted(MODEL_PRESETS), default=d.model,
                   help="generator widths: default = GANConfig's for the size, tiny = the tests'")
    p.add_argument("--segmenter", default=d.segmenter)
    p.add_argument("--filter", choices=("none", "default"), default=d.filter,
                   help="none: accept every image so all are encoded and written (default); default: the job "
                        "defaults, which reject nearly everything an untrained segmenter sees")
    p.add_argument("--ray-niceness", type=int, default=d.ray_niceness,
                   help="nice value of Ray's worker processes (default: Ray's own, 15)")
    p.add_argument("--gpu-only", action="store_true", help="only the device section (no Ray, no example data)")
    p.add_argument("--device-section", choices=("auto", "cuda", "cpu", "off"), default=d.device_section,
                   help="auto: on CUDA when present, else skipped; cpu: run it on the CPU (slow; to try it out)")
    p.add_argument("--gpu-sizes", default=d.gpu_sizes)
    p.add_argument("--gpu-batch", type=int, default=d.gpu_batch)
    p.add_argument("--gpu-iters", type=int, default=d.gpu_iters, help="batches per timing in the device section")
    p.add_argument("--gpu-model", choices=sorted(MODEL_PRESETS), default=d.gpu_model)
    p.add_argument("--compile", choices=("auto", "on", "off"), default=d.compile,
                   help="torch.compile variants in the device section (auto: on CUDA only)")
    p.add_argument("--peak-tflops", default=d.peak_tflops,
                   help="the GPU's dense peak: '989' (bf16) or 'bf16=989,tf32=494,fp32=67' (default: by GPU name)")
    p.add_argument("--workdir", default=d.workdir, help="folder for data and outputs (default: a temporary one, removed)")
    p.add_argument("--json", default=d.json, metavar="FILE", help="also write the results as JSON")
    a = p.parse_args(argv)
    return BenchmarkSettings(**{f.name: getattr(a, f.name) for f in fields(BenchmarkSettings)})


def _modes(text: str) -> list[str]:
    try:
        return parse_modes(text)
    except AugmentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    main()
