"""The `augment` command line. Each subcommand parses its options here; its adapter (`augment.cli.data`,
`.training`, `.jobs`, `.pipelines`) builds the typed config and calls the domain code.

Every local path option is made absolute here, against the driver's current folder (`_path`), so the commands and
their Ray workers (whose working folder is Ray's session folder) never see a relative path; URIs pass unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from augment.data.codec import MAX_PIXELS, parse_size
from augment.core.errors import AugmentError
from augment.training import CLASS_WEIGHTS


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path(text: str) -> str:
    """A local path or URI argument, resolved here on the driver (see `augment.data.fs.absolute`): the domain code
    and its Ray workers, whose working folder is not the driver's, never see a relative path."""
    from augment.data.fs import absolute  # lazy: pyarrow is not needed to print --help

    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return absolute(text)


def _paths(text: str) -> list[str]:
    """Comma-separated local paths or URIs, each resolved like `_path`."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("no path given")
    return [_path(p) for p in parts]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_training_resources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_positive, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local instance)")


def _add_deterministic(p: argparse.ArgumentParser, default: bool | None = False) -> None:
    tail = "; default: the baseline's, else off" if default is None else ""
    p.add_argument("--deterministic", action="store_true", default=default,
                   help="also use torch's deterministic algorithms (reproducible GPU kernels; an operation without "
                        f"one stops the run); --seed alone fixes data order, augmentations and initialisation{tail}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="augment", description="GAN data augmentation for semantic segmentation, distributed with Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="turn a labelled dataset on disk into an augment Parquet dataset")
    p.add_argument("src", type=_path, help="dataset root folder")
    p.add_argument("--format", required=True, choices=["camvid", "cityscapes", "voc", "folder"])
    p.add_argument("--out", type=_path, required=True, help="output dataset folder or URI")
    p.add_argument("--split", default=None, help="split to ingest (default: train; 'all' for every split found)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="resize (bilinear images, nearest masks)")
    p.add_argument("--classes", default=None, help="folder format: classes.json path or comma-separated names")
    p.add_argument("--match", default=None, metavar="REGEX", help="keep only samples whose source image file name "
                   "matches REGEX (re.search), e.g. CamVid sequences: '^(0006R0|0016E5)_'")
    p.add_argument("--max-pixels", type=_positive, default=MAX_PIXELS, metavar="N",
                   help=f"quarantine images and masks over N pixels, undecoded (default: {MAX_PIXELS})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the augment dataset already in --out (only its own files are deleted)")
    p.add_argument("--workers", type=_positive, default=None, help="parallel Ray tasks (default: all CPUs)")
    p.set_defaults(handler="augment.cli.data:ingest_command")

    p = sub.add_parser("example-data", help="write the built-in procedural street-scene dataset")
    p.add_argument("out", type=_path, help="output dataset folder or URI")
    p.add_argument("--n", type=_positive, default=200, help="number of samples")
    p.add_argument("--size", type=_size, default=(128, 128), metavar="HxW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the augment dataset already in OUT (only its own files are deleted)")
    p.add_argument("--workers", type=_positive, default=None, help="parallel Ray tasks (default: all CPUs)")
    p.set_defaults(handler="augment.cli.data:example_data_command")

    p = sub.add_parser("info", help="print a dataset's rows, sizes, classes and class shares")
    p.add_argument("dataset", type=_path)
    p.add_argument("--json", action="store_true", help="print the dataset's _dataset.json instead of the table")
    p.set_defaults(handler="augment.cli.data:info_command")

    p = sub.add_parser("train-gan", help="train the label-map-conditioned GAN (OASIS) on Ray Train")
    p.add_argument("--data", type=_path, required=True, help="training dataset")
    p.add_argument("--out", type=_path, required=True, help="run folder")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="training resolution (default: data's)")
    p.add_argument("--steps", type=_positive, default=2000)
    p.add_argument("--batch", type=_positive, default=8, help="batch size per worker")
    p.add_argument("--l1", action="store_true", help="add the L1 reconstruction term (L = L_GAN + L_L1)")
    p.add_argument("--feature-matching", action="store_true", help="add discriminator feature matching")
    p.add_argument("--crop", type=_positive, default=None, metavar="SIZE",
                   help="crop mode: paint objects into SIZE x SIZE crops of real images at the data's resolution "
                        "(e.g. 64..128; for `insert` synthesis)")
    p.add_argument("--sample-every", type=_positive, default=None, help="sample sheet every N steps")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="EMA decay of the inference generator (default: 0.999, lower for runs under 10,000 steps)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of data order, crops, initialisation and noise: same seed, same weights")
    _add_deterministic(p)
    _add_training_resources(p)
    p.set_defaults(handler="augment.cli.training:train_gan_command")

    p = sub.add_parser("train-seg", help="train a torchvision segmenter on Ray Train")
    p.add_argument("--data", type=_paths, required=True, help="training dataset(s), comma-separated")
    p.add_argument("--val", type=_path, default=None, help="validation dataset (evaluated after each epoch)")
    p.add_argument("--out", type=_path, required=True, help="run folder")
    p.add_argument("--model", default="lraspp_mobilenet_v3_large")
    p.add_argument("--size", type=_size, default=None, metavar="HxW")
    p.add_argument("--epochs", type=_positive, default=30)
    p.add_argument("--batch", type=_positive, default=8, help="batch size per worker")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.02, SGD)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of data order, augmentations and initialisation: same seed, same weights")
    _add_deterministic(p)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="none",
                   help="cross-entropy class weights; median-frequency (from the first dataset's pixel counts) "
                        "lets rare, thin classes be learned (default: none)")
    _add_training_resources(p)
    p.set_defaults(handler="augment.cli.training:train_seg_command")

    p = sub.add_parser("evaluate", help="per-class IoU, mIoU and pixel accuracy of a segmenter on a dataset")
    p.add_argument("--model", type=_path, required=True, help="train-seg run folder")
    p.add_argument("--data", type=_path, required=True)
    p.add_argument("--json", type=_path, default=None, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--batch", type=_positive, default=8)
    p.set_defaults(handler="augment.cli.training:evaluate_command")

    p = sub.add_parser("run", help="run an augmentation job file on a local or existing Ray cluster")
    p.add_argument("job", type=_path, help="job file (YAML or JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace another job's output at the output location")
    p.add_argument("--address", default=None)
    p.set_defaults(handler="augment.cli.jobs:run_command")

    p = sub.add_parser("verify", help="check a finished job output or a dataset (files, sizes, checksums, rows) "
                                      "without running anything")
    p.add_argument("output", type=_path, help="job output or dataset folder or URI")
    p.set_defaults(handler="augment.cli.jobs:verify_command")

    p = sub.add_parser("retrain", help="retrain the segmenter on real + synthetic data and report per-class gains")
    p.add_argument("--real", type=_path, required=True, help="real training dataset")
    p.add_argument("--synthetic", type=_paths, required=True,
                   help="synthetic dataset(s) from `augment run`, comma-separated")
    p.add_argument("--val", type=_path, required=True, help="real validation dataset both runs are evaluated on")
    p.add_argument("--out", type=_path, required=True,
                   help="output folder: baseline/, augmented/, report.md, report.json")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of each batch that is synthetic (0 < R < 1)")
    p.add_argument("--baseline", type=_path, default=None,
                   help="finished train-seg run on --real alone; its recipe and step budget are reused "
                        "(default: train one into OUT/baseline)")
    p.add_argument("--model", default=None, help="segmenter (default: the baseline's, else lraspp_mobilenet_v3_large)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="training size (default: the data's)")
    p.add_argument("--epochs", type=_positive, default=None, help="baseline epochs (default: the baseline's, else 30)")
    p.add_argument("--batch", type=_positive, default=None, help="batch per worker (default: the baseline's, else 8)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: the baseline's, else train-seg's)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of both runs' data order, augmentations, initialisation and batch mix (default: the "
                        "baseline's, else 0)")
    _add_deterministic(p, default=None)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=None,
                   help="loss class weights (default: the baseline's, else none); from --real's pixel counts")
    _add_training_resources(p)
    p.set_defaults(workers=None)
    p.set_defaults(handler="augment.cli.pipelines:retrain_command")

    p = sub.add_parser("demo", help="the whole chain on built-in example data, end to end")
    p.add_argument("--out", type=_path, default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--size", type=_size, default=(48, 64), metavar="HxW", help="image size (default: 48x64)")
    p.add_argument("--steps", type=_positive, default=None,
                   help="GAN steps (default: 150); segmenter epochs are steps/18 (at least 2)")
    p.add_argument("--n", type=_positive, default=None,
                   help="example training scenes (default: 96); validation gets n/3, each rare class n/6 samples")
    p.add_argument("--overwrite", action="store_true", help="delete a previous demo in --out and start over")
    p.add_argument("--resume", action="store_true", help="finish a previous demo in --out, keeping complete stages")
    p.set_defaults(handler="augment.cli.pipelines:demo_command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except AugmentError as exc:
        text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # always one line
        print(f"augment {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"augment {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
