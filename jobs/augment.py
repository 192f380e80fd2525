"""Run an augmentation job on a Ray cluster.

    ray job submit --working-dir . -- python jobs/augment.py JOB.yaml [--overwrite]

The job's driver runs on the head node and joins the cluster (Ray sets RAY_ADDRESS for submitted jobs); the
shards run on the cluster's workers. Same arguments and behaviour as `augment run`; rerunning the same command
resumes an interrupted job. Relative paths in the job file are relative to the job file (inside --working-dir).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import augment  # noqa: F401  (installed on the cluster by cluster.yaml's setup_commands)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
