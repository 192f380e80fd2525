"""Adapters of the job commands: `run` (an augmentation job file) and `verify` (a job output or dataset)."""

from __future__ import annotations

import argparse


def run_command(args: argparse.Namespace) -> int:
    """`augment run JOB [--overwrite] [--address]`."""
    from augment.runner.job import format_summary, load_job, run_job

    cfg = load_job(args.job)
    summary = run_job(cfg, overwrite=args.overwrite, address=args.address)
    print(format_summary(summary), flush=True)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """`augment verify OUTPUT`: exit 0 when sound, else AugmentError (one line, exit 2)."""
    from augment.core.errors import AugmentError
    from augment.runner.verify import verify_output

    found = verify_output(args.output)
    if found.problems:
        more = f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else ""
        raise AugmentError(f"{args.output}: {len(found.problems)} problems: {found.problems[0]}{more}")
    print(f"augment verify: {args.output} is sound ({len(found.checked)} checks)", flush=True)
    return 0
