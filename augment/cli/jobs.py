"""Adapters of the job commands: `run` (an augmentation job file) and `verify` (a job output or dataset)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from augment.core import console

NOTHING_ACCEPTED = 3
"""`augment run`'s exit code when the finished job accepted no sample (its output is complete, with no rows)."""


def run_command(args: argparse.Namespace) -> int:
    """`augment run JOB [--overwrite] [--address]`: exit 0, or NOTHING_ACCEPTED with one line on stderr saying
    which filter thresholds rejected how many samples."""
    from augment.runner.job import format_summary, load_job, run_job
    from augment.runner.jobfile import section_defaults

    cfg = load_job(args.job)
    summary = run_job(cfg, overwrite=args.overwrite, address=args.address)
    console.summary(format_summary(summary))
    if summary["accepted"] == 0:
        thresholds = {**section_defaults("filter"), **(cfg.document.get("filter") or {})}
        print(f"augment run: error: {nothing_accepted(summary, thresholds, args.job)}", file=sys.stderr)
        return NOTHING_ACCEPTED
    return 0


def nothing_accepted(summary: dict[str, Any], thresholds: dict[str, Any], job: str) -> str:
    """Why a finished job accepted no sample, on one line: how many samples scored below each filter threshold
    (`thresholds`: the job file's filter values by key, defaults filled in), or that none was generated."""
    if not summary["generated"]:
        return (f"no sample was generated ({summary['quarantined']} source maps quarantined, see quarantine.jsonl "
                f"in {summary['output']})")
    below = summary.get("below_threshold")
    if below is None:
        why = "the shards of an earlier version did not count which thresholds rejected them"
    else:
        why = ", ".join(f"{n} below filter.{key} {thresholds[key]:g}" for key, n in below.items())
    return (f"the filter accepted none of {summary['generated']} samples ({why}; a sample can fall below several); "
            f"lower the filter thresholds in {job}")


def verify_command(args: argparse.Namespace) -> int:
    """`augment verify OUTPUT`: exit 0 when sound, else AugmentError (one line, exit 2)."""
    from augment.core.errors import AugmentError
    from augment.runner.verify import verify_output

    found = verify_output(args.output)
    if found.problems:
        more = f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else ""
        raise AugmentError(f"{args.output}: {len(found.problems)} problems: {found.problems[0]}{more}")
    console.summary(f"augment verify: {args.output} is sound ({len(found.checked)} checks)")
    return 0
