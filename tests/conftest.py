"""Shared fixtures: one local Ray instance for the whole session, the real CamVid folder, tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("AUGMENT_CAMVID", PROJECT_ROOT.parent / "shared" / "data" / "camvid"))


def ensure_local_ray() -> None:
    """Start the shared local Ray instance unless one is running (a cluster test may have shut it down)."""
    import ray

    if not ray.is_initialized():
        # More logical CPUs than cores: Ray Train workers and Ray Data tasks must fit side by side on 2 cores.
        ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)


@pytest.fixture
def ray_session():
    ensure_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_and_shutdown_ray_at_end():
    # Tiny models run faster on one thread than on two contended ones (Ray workers share the 2 cores).
    import torch

    torch.set_num_threads(1)
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"real CamVid not found at {CAMVID} (set AUGMENT_CAMVID to its folder to run this test)")
    return CAMVID
