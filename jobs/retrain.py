"""Retrain the segmenter on real + synthetic data on a Ray cluster and write the report.

    ray job submit --working-dir . -- python jobs/retrain.py --real s3://b/camvid-train --synthetic s3://b/synth \
        --val s3://b/camvid-val --out s3://b/runs/retrain [--ratio R] [--baseline RUN] [--workers W] \
        [--gpus-per-worker G]

The driver joins the cluster (Ray sets RAY_ADDRESS for submitted jobs) and both trainings run on its workers. Same
options and behaviour as `augment retrain`; with --resume a rerun keeps finished runs. Use URIs every node reaches
(s3://...) for the data and --out: rank 0 of each training writes its checkpoints there.
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
    raise SystemExit(main(["retrain", *sys.argv[1:]]))
