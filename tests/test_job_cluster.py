"""A job on a simulated multi-node Ray cluster (fake GPUs) that loses a worker node mid-job."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest

from augment.runner.job import load_job, run_job
from augment.runner.markers import INFO_FILE, PLAN_FILE, OutputFolder, read_marker
from augment.synthesis.plan import Plan
from job_helpers import make_example_dataset, make_tiny_runs, write_job

SHARDS = 24


@pytest.fixture
def cluster(monkeypatch):
    """Head (no CPUs: shards never run there) + 2 worker nodes with 2 CPUs and one fake GPU each."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    # Cluster records its address for later `ray.init()` calls on this machine; keep that from leaking out.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, configure_logging=False, log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_lost_worker_node_mid_job_still_completes_exactly_once(tmp_path, cluster):
    c, workers = cluster
    data = make_example_dataset(tmp_path / "data", n=12, size=(32, 32))
    gan, seg = make_tiny_runs(tmp_path, data)
    out = tmp_path / "out"
    path = write_job(
        tmp_path / "job.yaml", data=data, generator=gan, segmenter=seg, output=str(out),
        classes={"car": SHARDS // 2, "pedestrian": SHARDS // 2}, sheets=1,
        filter={"min_miou": 0.0, "min_target_iou": 0.0, "min_pixel_accuracy": 0.3},
        resources={"workers": 2, "gpus_per_worker": 0.5, "cpus_per_worker": 1, "batch_size": 1,
                   "samples_per_shard": 1, "max_shard_attempts": 4},
    )
    result: dict = {}

    def drive() -> None:
        try:
            result["summary"] = run_job(load_job(str(path)))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test thread)
            result["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    markers = out / "_markers"
    deadline = time.monotonic() + 300
    while not list(markers.glob("shard-*.json")) and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    first = read_marker(OutputFolder(str(out)), int(sorted(markers.glob("shard-*.json"))[0].name[6:11]))
    victim = next(n for n in workers if n.node_id == first.node)
    c.remove_node(victim)
    done_at_removal = len(list(markers.glob("shard-*.json")))
    complete_at_removal = (out / INFO_FILE).exists()
    driver.join(timeout=400)
    assert not driver.is_alive(), "the job did not finish after losing a node"
    if "error" in result:
        raise result["error"]
    assert not complete_at_removal and done_at_removal < SHARDS

    summary = result["summary"]
    assert summary["shards"] == SHARDS and summary["accepted"] + summary["rejected"] == SHARDS
    stats = [read_marker(OutputFolder(str(out)), k) for k in range(SHARDS)]
    assert all(s is not None for s in stats)
    survivor = next(n for n in workers if n is not victim).node_id
    assert {s.node for s in stats} <= {victim.node_id, survivor}
    assert any(s.node == survivor for s in stats)
    ids = pq.read_table(out / "data").column("id").to_pylist()
    rejected = {i for s in stats for i in s.rejected_ids}
    plan = Plan.from_json((out / PLAN_FILE).read_text())
    assert len(ids) == len(set(ids)) == summary["rows"]
    assert set(ids) == {p.sample_id for p in plan.samples} - rejected
    assert not list((out / "data").glob(".shard-*"))
