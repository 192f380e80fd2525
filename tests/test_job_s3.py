"""An augmentation job writing to S3 (moto's S3 server on loopback), read back from S3."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import pytest

from augment.data import fs as afs
from augment.data.dataset import open_dataset
from augment.data.layout import CARD_FILES
from augment.runner.job import load_job, run_job
from augment.runner.markers import INFO_FILE, JOB_FILE, PLAN_FILE, SHEETS_DIR, SUMMARY_FILE
from job_helpers import make_example_dataset, make_tiny_runs, write_job

BUCKET = "augment-test"


@pytest.fixture
def moto_s3(monkeypatch):
    """URI maker for a fresh bucket on a moto S3 server on 127.0.0.1 (credentials in this process's environment)."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    import moto

    if moto.__version__ in ("5.2.0", "5.2.1"):
        pytest.skip(f"moto {moto.__version__} answers S3 CompleteMultipartUpload with a root tag pyarrow rejects "
                    f"(getmoto/moto#10055); install moto>=5.2.2")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield lambda key: f"s3://{BUCKET}/{key}?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


@pytest.fixture
def s3_base(moto_s3):
    """`moto_s3`, with Ray restarted so its workers get the credentials."""
    import ray

    from conftest import ensure_local_ray

    ray.shutdown()
    ensure_local_ray()
    try:
        yield moto_s3
    finally:
        ray.shutdown()


def test_s3_claims_are_conditional_puts(moto_s3, monkeypatch):
    """Two runs that both saw no claim numbered 1 (the race a read-back cannot close): If-None-Match lets one win."""
    from augment.core.errors import AugmentError
    from augment.runner.markers import OutputFolder, claim_run

    folder = OutputFolder(moto_s3("jobs/claims"))
    monkeypatch.setattr(OutputFolder, "exists", lambda self, relative="": False)  # no check-then-write can help
    first = claim_run(folder, "a" * 64, None)
    with pytest.raises(AugmentError, match="another run claimed this output at the same moment"):
        claim_run(folder, "b" * 64, None)
    assert folder.current_run() == first and folder.runs() == [1]


def test_job_writes_to_s3_and_reads_back(tmp_path, s3_base):
    data = make_example_dataset(tmp_path / "data", n=12, size=(32, 32))
    gan, seg = make_tiny_runs(tmp_path, data)
    out_uri = s3_base("jobs/out")
    path = write_job(
        tmp_path / "job.yaml", data=data, generator=gan, segmenter=seg, output=out_uri,
        classes={"car": 4, "pedestrian": 4}, keep_rejected=True, sheets=2,
        filter={"min_miou": 0.0, "min_target_iou": 0.0, "min_pixel_accuracy": 0.3, "pixel_ignore": True,
                "ignore_confidence": 0.05},
        resources={"workers": 1, "batch_size": 4, "samples_per_shard": 3},
    )
    summary = run_job(load_job(str(path)))
    assert summary["shards"] == 3 and summary["rows"] == 8

    from augment.models.store import METRICS_FILE, append_metrics

    run = s3_base("runs/seg")
    append_metrics(run, {"epoch": 1})
    append_metrics(run, {"epoch": 2})
    filesystem, folder = afs.resolve(run)
    assert afs.read_bytes(filesystem, afs.join(folder, METRICS_FILE)) == b'{"epoch": 1}\n{"epoch": 2}\n'

    filesystem, root = afs.resolve(out_uri)
    names = {p[len(root) + 1:] for p in afs.list_files(filesystem, root, recursive=True)}
    assert {INFO_FILE, PLAN_FILE, JOB_FILE, SUMMARY_FILE, *CARD_FILES, f"{SHEETS_DIR}/car.png",
            f"{SHEETS_DIR}/pedestrian.png"} <= names
    assert {f"data/shard-{k:05d}.{summary['run_id']}.parquet" for k in range(3)} <= names
    assert not any(n.startswith("data/.shard-") for n in names)
    assert isinstance(filesystem, pafs.S3FileSystem)
    from augment.core.errors import AugmentError
    from augment.runner.markers import OutputFolder, claim_run

    folder = OutputFolder(out_uri)
    assert folder.runs() == [1] and folder.current_run().run_id == summary["run_id"]
    with pytest.raises(AugmentError, match="another run claimed this output at the same moment"):
        claim_run(folder, summary["fingerprint"], None)  # run 1 exists: no second claim of that number
    assert folder.current_run().run_id == summary["run_id"]

    ds = open_dataset(out_uri)
    table = ds.arrow.to_table(columns=["id", "accepted"])
    expected = [f"syn/{c}/{k:06d}" for c in ("car", "pedestrian") for k in range(4)]
    assert sorted(table.column("id").to_pylist()) == expected
    assert sum(not a for a in table.column("accepted").to_pylist()) == summary["rejected"]
    assert ds.info.extra["counts"] == summary["counts"]
    masks = [row["mask"] for row in ds.iter_samples(columns=("id", "mask"))]
    assert all(m.shape == (32, 32) for m in masks)
    assert any((m == 255).any() for m in masks), "pixel_ignore at confidence 0.05 should mark disagreeing pixels"

    again = run_job(load_job(str(path)))
    assert again["shards_run"] == 0 and again["counts"] == summary["counts"]
    assert np.isclose(summary["accepted"] + summary["rejected"], 8)
