"""The `augment` command line. Each subcommand parses its options here; its adapter (`augment.cli.data`,
`.training`, `.jobs`, `.pipelines`) builds the typed config and calls the domain code.

Every local path option is made absolute here, against the driver's current folder (`_path`), so the commands and
their Ray workers (whose working folder is Ray's session folder) never see a relative path; URIs pass unchanged.
Every option has help text, and `--help` shows its default (`_HelpFormatter`). The output options (`--quiet`,
`--verbose`, `--log-file`) may come before or after the command and apply to its whole run (augment.core.console).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from typing import Any, Sequence

from augment import __version__
from augment.core import console
from augment.core.errors import AugmentError
from augment.data.codec import MAX_PIXELS, parse_size
from augment.models import SEGMENTERS
from augment.synthesis import SYNTHESIS_MODES
from augment.training import CLASS_WEIGHTS


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-in-help, leaving out what says nothing (no default, a flag's off state) or is already
    said (help text that names its default); sizes show as HxW."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or "default" in text):
            return text
        shown = f"{default[0]}x{default[1]}" if isinstance(default, tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


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


def _weights_backbone(text: str) -> str:
    """none, imagenet, or a state-dict file (resolved like `_path`)."""
    return text if text in ("none", "imagenet") else _path(text)


def _add_init(p: argparse.ArgumentParser, default: str | None, inherit: str = "") -> None:
    """--weights-backbone and --init (augment.models.pretrained)."""
    p.add_argument("--weights-backbone", type=_weights_backbone, default=default, metavar="{none,imagenet,PATH}",
                   help="where the backbone starts: none (random), imagenet (torchvision's IMAGENET1K_V1 weights, "
                        "from $TORCH_HOME/hub/checkpoints or downloaded there) or a state-dict file (a backbone's "
                        "or a torchvision classification model's)" + inherit)
    p.add_argument("--init", type=_path, default=None, metavar="RUN",
                   help="start the whole model from a finished train-seg run (same model and classes; a new "
                        "optimizer from step 0, not a resume)" + inherit)


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


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local instance)")


def _add_training_resources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_positive, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_address(p)


def _add_output_options(p: argparse.ArgumentParser, before_command: bool) -> None:
    """--quiet, --verbose, --log-file; given after the command (`before_command` False) they leave no default, so
    the same option given before the command is not overwritten."""
    unset: dict[str, Any] = {} if before_command else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", **unset,
                   help="print only warnings, errors and the final summary (progress still goes to --log-file)")
    g.add_argument("-v", "--verbose", action="store_true", **unset,
                   help="also show Ray's own logs (its workers' output, Ray Train's and Ray Data's lines), which "
                        "otherwise stay in Ray's session logs (/tmp/ray/session_latest/logs)")
    g.add_argument("--log-file", type=_path, metavar="PATH", **unset,
                   help="append every line this command prints, progress included, to PATH (a local file)")


def _add_deterministic(p: argparse.ArgumentParser, default: bool | None = False) -> None:
    tail = "; default: the baseline's, else off" if default is None else ""
    p.add_argument("--deterministic", action="store_true", default=default,
                   help="also use torch's deterministic algorithms (reproducible GPU kernels; an operation without "
                        f"one stops the run); --seed alone fixes data order, augmentations and initialisation{tail}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="augment", description="GAN data augmentation for semantic segmentation, distributed with Ray.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"augment {__version__}",
                        help="print augment's version and exit")
    _add_output_options(parser, before_command=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    output_options = argparse.ArgumentParser(add_help=False)
    _add_output_options(output_options, before_command=False)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter,
                                   parents=[output_options])


    p = command("ingest", "turn a labelled dataset on disk into an augment Parquet dataset")
    p.add_argument("src", type=_path, help="dataset root folder")
    p.add_argument("--format", required=True, choices=["camvid", "cityscapes", "voc", "folder"],
                   help="layout of SRC: CamVid (SegNet's folders), Cityscapes, Pascal VOC, or image/mask folders")
    p.add_argument("--out", type=_path, required=True, help="output dataset folder or URI")
    p.add_argument("--split", default=None, help="split to ingest (default: train; 'all' for every split found)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="resize (bilinear images, nearest masks)")
    p.add_argument("--classes", default=None, help="folder format: classes.json path or comma-separated names")
    p.add_argument("--match", default=None, metavar="REGEX", help="keep only samples whose source image file name "
                   "matches REGEX (re.search), e.g. CamVid sequences: '^(0006R0|0016E5)_'")
    p.add_argument("--max-pixels", type=_positive, default=MAX_PIXELS, metavar="N",
                   help="quarantine images and masks over N pixels, undecoded")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the augment dataset already in --out (only its own files are deleted)")
    p.add_argument("--workers", type=_positive, default=None, help="parallel Ray tasks (default: all CPUs)")
    p.set_defaults(handler="augment.cli.data:ingest_command")

    p = command("example-data", "write the built-in procedural street-scene dataset")
    p.add_argument("out", type=_path, help="output dataset folder or URI")
    p.add_argument("--n", type=_positive, default=200, help="number of samples")
    p.add_argument("--size", type=_size, default=(128, 128), metavar="HxW", help="image size")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes: same seed, same bytes")
    p.add_argument("--split", default="train", help="split name recorded in every row")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the augment dataset already in OUT (only its own files are deleted)")
    p.add_argument("--workers", type=_positive, default=None, help="parallel Ray tasks (default: all CPUs)")
    p.set_defaults(handler="augment.cli.data:example_data_command")

    p = command("info", "print a dataset's rows, sizes, classes and class shares")
    p.add_argument("dataset", type=_path, help="dataset folder or URI (ingested or synthetic)")
    p.add_argument("--json", action="store_true", help="print the dataset's _dataset.json instead of the table")
    p.set_defaults(handler="augment.cli.data:info_command")

    p = command("train-gan", "train the label-map-conditioned GAN (OASIS) on Ray Train")
    p.add_argument("--data", type=_path, required=True, help="training dataset")
    p.add_argument("--out", type=_path, required=True, help="run folder")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="training resolution (default: data's)")
    p.add_argument("--steps", type=_positive, default=2000, help="optimizer steps (each of G and D)")
    p.add_argument("--batch", type=_positive, default=8, help="batch size per worker")
    p.add_argument("--l1", action="store_true", help="add the L1 reconstruction term (L = L_GAN + L_L1)")
    p.add_argument("--feature-matching", action="store_true", help="add discriminator feature matching")
    p.add_argument("--crop", type=_positive, default=None, metavar="SIZE",
                   help="crop mode: paint objects into SIZE x SIZE crops of real images at the data's resolution "
                        "(e.g. 64..128; for `insert` synthesis)")
    p.add_argument("--guide", action="store_true",
                   help="with --crop: the generator also reads the object's own pixels (recoloured at random in "
                        "training, the source object's at synthesis) and learns to repaint them to fit the scene")
    p.add_argument("--sample-every", type=_positive, default=None, help="sample sheet every N steps")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="EMA decay of the inference generator (default: 0.999, lower for runs under 10,000 steps)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of data order, crops, initialisation and noise: same seed, same weights")
    _add_deterministic(p)
    _add_training_resources(p)
    p.set_defaults(handler="augment.cli.training:train_gan_command")

    p = command("train-seg", "train a torchvision segmenter on Ray Train")
    p.add_argument("--data", type=_paths, required=True, help="training dataset(s), comma-separated")
    p.add_argument("--val", type=_path, default=None, help="validation dataset (evaluated after each epoch)")
    p.add_argument("--out", type=_path, required=True, help="run folder")
    p.add_argument("--model", default="lraspp_mobilenet_v3_large", choices=SEGMENTERS, metavar="NAME",
                   help=f"torchvision segmenter: {', '.join(SEGMENTERS)}")
    p.add_argument("--size", type=_size, default=None, metavar="HxW", help="training size (default: the data's)")
    p.add_argument("--epochs", type=_positive, default=30, help="passes over the (first) training dataset")
    p.add_argument("--batch", type=_positive, default=8, help="batch size per worker")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.02, SGD)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of data order, augmentations and initialisation: same seed, same weights")
    _add_deterministic(p)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="none",
                   help="cross-entropy class weights; median-frequency (from the first dataset's pixel counts) "
                        "lets rare, thin classes be learned")
    _add_init(p, "none")
    _add_training_resources(p)
    p.set_defaults(handler="augment.cli.training:train_seg_command")

    p = command("evaluate", "per-class IoU, mIoU and pixel accuracy of a segmenter on a dataset")
    p.add_argument("--model", type=_path, required=True, help="train-seg run folder")
    p.add_argument("--data", type=_path, required=True, help="dataset to score it on (its classes must match)")
    p.add_argument("--json", type=_path, default=None, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--batch", type=_positive, default=8, help="images per forward pass")
    p.set_defaults(handler="augment.cli.training:evaluate_command")

    p = command("run", "run an augmentation job file on a local or existing Ray cluster (exit 3 when the filter "
                       "accepts no sample)")
    p.add_argument("job", type=_path, help="job file (YAML or JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace another job's output at the output location")
    _add_address(p)
    p.set_defaults(handler="augment.cli.jobs:run_command")

    p = command("verify", "check a finished job output or a dataset (files, sizes, checksums, rows) without "
                          "running anything")
    p.add_argument("output", type=_path, help="job output or dataset folder or URI")
    p.set_defaults(handler="augment.cli.jobs:verify_command")

    p = command("retrain", "retrain the segmenter on real + synthetic data and report per-class gains")
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
    p.add_argument("--model", default=None, choices=SEGMENTERS, metavar="NAME",
                   help="segmenter (default: the baseline's, else lraspp_mobilenet_v3_large)")
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
    _add_init(p, None, "; both runs start alike (default: the baseline's start, else none)")
    _add_training_resources(p)
    p.set_defaults(workers=None)
    p.set_defaults(handler="augment.cli.pipelines:retrain_command")

    p = command("demo", "the whole chain on built-in example data, end to end")
    p.add_argument("--out", type=_path, default="demo-out", help="output folder")
    p.add_argument("--size", type=_size, default=(48, 64), metavar="HxW", help="image size")
    p.add_argument("--steps", type=_positive, default=None,
                   help="GAN steps (default: 150); segmenter epochs are steps/18 (at least 2)")
    p.add_argument("--n", type=_positive, default=None,
                   help="example training scenes (default: 96); validation gets n/3, each rare class n/6 samples")
    p.add_argument("--mode", choices=SYNTHESIS_MODES, default="scene",
                   help="synthesis mode: scene (whole images from the GAN), paste (real objects copied into real "
                        "images), insert (a crop GAN paints objects into real images)")
    p.add_argument("--overwrite", action="store_true", help="delete a previous demo in --out and start over")
    p.add_argument("--resume", action="store_true", help="finish a previous demo in --out, keeping complete stages")
    p.set_defaults(handler="augment.cli.pipelines:demo_command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code: 0 done, 2 bad input or a failed check (one line on stderr), 3 an
    augmentation job that accepted no sample, 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose exclude each other")
    module_name, func_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        with console.session(shlex.join(["augment", *words]), args.quiet, args.verbose, args.log_file):
            try:
                return int(handler(args) or 0)
            except AugmentError as exc:
                print(f"augment {args.command}: error: {one_line(exc)}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"augment {args.command}: interrupted", file=sys.stderr)
                return 130
    except AugmentError as exc:  # the log file could not be opened
        print(f"augment {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


def one_line(exc: BaseException) -> str:
    """An error's text on one line (its lines joined with '; ')."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


if __name__ == "__main__":
    raise SystemExit(main())
