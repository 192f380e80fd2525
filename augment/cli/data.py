"""Adapters of the data commands: `ingest`, `example-data`, `info`. Each builds the typed call from the parsed
options, runs it and prints the summary; heavy imports stay inside the functions (`augment --help` needs none)."""

from __future__ import annotations

import argparse
import shlex
from typing import Sequence

from augment.core import console


def command_line(args: argparse.Namespace, positional: Sequence[str], options: Sequence[str]) -> str:
    """The command as the user could have typed it (recorded in the dataset's lineage): `augment COMMAND`, the
    positional values, then each option that is set (flags without a value, sizes as HxW)."""
    words = ["augment", args.command, *(str(getattr(args, p)) for p in positional)]
    for name in options:
        value = getattr(args, name, None)
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, tuple):
            words += [flag, f"{value[0]}x{value[1]}"]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _print_result(result, verb: str) -> None:
    from augment.data.dataset import QUARANTINE_FILE

    console.summary(result.summary(verb))
    if result.quarantined:
        console.summary(f"quarantined samples and reasons: {result.out}/{QUARANTINE_FILE}")


def ingest_command(args: argparse.Namespace) -> int:
    from augment.data.ingest import ingest

    command = command_line(args, ["src"], ["format", "out", "split", "size", "classes", "match", "max_pixels",
                                           "overwrite", "workers"])
    result = ingest(args.src, args.format, args.out, split=args.split, size=args.size, classes=args.classes,
                    overwrite=args.overwrite, workers=args.workers, command=command, max_pixels=args.max_pixels,
                    match=args.match)
    _print_result(result, "ingested")
    return 0


def example_data_command(args: argparse.Namespace) -> int:
    from augment.data.ingest import write_example_data

    command = command_line(args, ["out"], ["n", "size", "seed", "split", "overwrite", "workers"])
    result = write_example_data(args.out, args.n, args.size, args.seed, args.split, overwrite=args.overwrite,
                                workers=args.workers, command=command)
    _print_result(result, "wrote")
    return 0


def info_command(args: argparse.Namespace) -> int:
    from augment.data.dataset import open_dataset
    from augment.data.info import format_info

    ds = open_dataset(args.dataset)
    if args.json:
        console.summary(ds.info_bytes().decode())
    else:
        console.summary(format_info(ds))
    return 0
