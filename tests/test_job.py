"""Augmentation jobs end to end on CPU: tiny untrained models on the built-in example data (32x32)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from augment.data.codec import decode_mask
from augment.data.dataset import open_dataset
from augment.core.errors import AugmentError
from augment.runner.job import claim_output, load_job, prepare_job, run_job, shard_settings
from augment.runner.jobfile import job_from_document, schema_default, section_defaults
from augment.runner.markers import (
    INFO_FILE, JOB_FILE, PLAN_FILE, QUARANTINE_FILE, SHEETS_DIR, SUMMARY_FILE, OutputFolder, read_marker,
)
from augment.synthesis.plan import Plan
from augment.models.store import load_card
from job_helpers import make_example_dataset, make_job_env, make_tiny_runs, write_job

QUOTAS = {"pedestrian": 6, "car": 5, "bicyclist": 3}
RESOURCES = {"workers": 2, "batch_size": 4, "samples_per_shard": 4}
NO_FILTER = {"min_miou": 0.0, "min_target_iou": 0.0}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_job_env(tmp_path_factory.mktemp("jobenv"), n=12)


def job_file(env, path: Path, output, **fields):
    fields = {"classes": QUOTAS, "filter": NO_FILTER, "sheets": 2, "resources": RESOURCES, **fields}
    return write_job(path, data=env["data"], generator=env["gan"], segmenter=env["seg"], output=str(output), **fields)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.parquet")} | {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in (folder / "_markers").glob("*.json")
    }


def sorted_table(output: Path):
    return pq.read_table(output / "data").sort_by("id")


@pytest.fixture(scope="module")
def first_run(env, tmp_path_factory):
    from conftest import ensure_local_ray

    ensure_local_ray()
    root = tmp_path_factory.mktemp("first")
    cfg = load_job(str(job_file(env, root / "job.yaml", root / "out")))
    summary = run_job(cfg)
    return {"cfg": cfg, "out": root / "out", "summary": summary}


def test_full_run_writes_a_complete_synthetic_dataset(env, first_run):
    out, summary = first_run["out"], first_run["summary"]
    assert summary["shards"] == 4 and summary["shards_run"] == 4 and summary["rows"] == 14
    assert summary["counts"] == {name: {"accepted": n, "rejected": 0} for name, n in
                                 {"car": 5, "pedestrian": 6, "bicyclist": 3}.items()}
    assert summary["images_per_second"] > 0 and summary["wall_seconds"] > 0
    ds = open_dataset(str(out))
    assert ds.info.kind == "synthetic" and len(ds) == 14
    run_id = summary["run_id"]  # per-run names (augment.runner.markers)
    assert ds.info.files == [f"data/shard-{k:05d}.{run_id}.parquet" for k in range(4)]
    assert ds.info.extra["counts"] == summary["counts"]
    assert ds.info.extra["plan"]["quotas"] == {"car": 5, "pedestrian": 6, "bicyclist": 3}
    assert ds.info.extra["job"]["classes"] == QUOTAS
    plan = Plan.from_json((out / PLAN_FILE).read_text())
    table = ds.arrow.to_table()
    assert sorted(table.column("id").to_pylist()) == sorted(p.sample_id for p in plan.samples)
    assert set(table.column("generator_sha256").to_pylist()) == {load_card(env["gan"]).weights_sha256}
    assert all(table.column("accepted").to_pylist())
    by_id = {p.sample_id: p for p in plan.samples}
    for row in ds.iter_samples(columns=("id", "image", "mask", "target_class", "source_id", "class_pixels")):
        assert row["image"].shape == (32, 32, 3) and row["mask"].shape == (32, 32)
        assert row["target_class"] == by_id[row["id"]].target_class and row["source_id"] == by_id[row["id"]].source_id
        assert np.bincount(row["mask"].ravel(), minlength=256)[:11].tolist() == row["class_pixels"]
    assert sorted(p.name for p in (out / SHEETS_DIR).iterdir()) == ["bicyclist.png", "car.png", "pedestrian.png"]
    assert not list((out / "data").glob(".shard-*"))
    assert (out / SUMMARY_FILE).is_file() and (out / JOB_FILE).is_file()
    recorded = json.loads((out / JOB_FILE).read_text())["content"]["precision"]  # resolved by a worker-sized task
    assert recorded in ("fp32", "bf16") and summary["precision"] == recorded
    assert {read_marker(OutputFolder(str(out)), k).precision for k in range(4)} == {recorded}
    assert set(ds.info.extra["versions"]) >= {"augment", "torch", "ray", "pyarrow"}


def test_output_reads_with_ray_data_and_augment_info(first_run, ray_session, capsys):
    import ray.data

    from augment.cli import main

    ds = open_dataset(str(first_run["out"]))
    assert ray.data.read_parquet(ds.uris).count() == 14
    assert main(["info", str(first_run["out"])]) == 0
    assert "pedestrian" in capsys.readouterr().out


def test_rerun_skips_every_shard(first_run):
    out = first_run["out"]
    before = mtimes(out)
    summary = run_job(first_run["cfg"])
    assert summary["shards_run"] == 0 and summary["shards_skipped"] == 4 and summary["generated_this_run"] == 0
    assert summary["counts"] == first_run["summary"]["counts"]
    assert mtimes(out) == before


def test_same_job_gives_the_same_rows_with_other_resources(env, first_run, tmp_path, ray_session):
    cfg = load_job(str(job_file(env, tmp_path / "job.yaml", tmp_path / "out",
                                resources={"workers": 1, "batch_size": 3, "samples_per_shard": 4})))
    summary = run_job(cfg)
    assert summary["fingerprint"] == first_run["summary"]["fingerprint"]
    a, b = sorted_table(first_run["out"]), sorted_table(tmp_path / "out")
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("mask").to_pylist() == b.column("mask").to_pylist()
    assert a.column("image").to_pylist() == b.column("image").to_pylist()
    assert a.equals(b)


def test_precision_is_resolved_once_and_is_part_of_the_job(env, tmp_path):
    asked = []

    def native(answer):
        return lambda: asked.append(answer) or answer

    path = str(job_file(env, tmp_path / "a.yaml", tmp_path / "out"))
    on_bf16, on_fp32 = prepare_job(load_job(path), native(True)), prepare_job(load_job(path), native(False))
    bf16 = prepare_job(load_job(str(job_file(env, tmp_path / "b.yaml", tmp_path / "out", precision="bf16"))),
                       native(False))
    assert asked == [True, False]  # an explicit precision asks nothing
    assert on_bf16.cfg.precision == "auto" and on_bf16.synthesis.precision == on_bf16.content["precision"] == "bf16"
    assert on_fp32.synthesis.precision == on_fp32.content["precision"] == "fp32"
    assert on_bf16.fingerprint != on_fp32.fingerprint  # bf16 images differ slightly: resuming across would mix them
    assert bf16.fingerprint == on_bf16.fingerprint  # what it resolved to, not how it was asked, is the job
    assert shard_settings(on_bf16, "r1").synthesis is on_bf16.synthesis  # one typed config travels to workers


def test_resume_resolving_auto_otherwise_is_refused_unless_asked_explicitly(env, tmp_path):
    out = OutputFolder(str(tmp_path / "out"))
    auto = load_job(str(job_file(env, tmp_path / "a.yaml", out.uri)))
    first = prepare_job(auto, lambda: True)
    assert claim_output(out, first, overwrite=False).mode == "new"
    assert out.read_json(JOB_FILE)["content"]["precision"] == "bf16"
    elsewhere = prepare_job(auto, lambda: False)
    with pytest.raises(AugmentError) as info:
        claim_output(out, elsewhere, overwrite=False)
    assert str(info.value) == (f"{out.uri}/{JOB_FILE} records precision bf16, this cluster resolves auto to fp32; "
                               f"rerun with precision: bf16 to continue as recorded, or a new output")
    explicit = prepare_job(load_job(str(job_file(env, tmp_path / "b.yaml", out.uri, precision="bf16"))), lambda: False)
    assert claim_output(out, explicit, overwrite=False).mode == "resume"
    other = prepare_job(load_job(str(job_file(env, tmp_path / "c.yaml", out.uri, precision="fp32"))))
    with pytest.raises(AugmentError,
                       match="records precision bf16, this job asks for fp32; rerun with precision: bf16"):
        claim_output(out, other, overwrite=False)


def test_output_recording_unresolved_auto_is_refused_as_another_job(env, tmp_path):
    """An output from before precision was resolved: its shards' arithmetic is unknown, so it cannot be resumed."""
    from augment.runner.job import job_fingerprint

    out = OutputFolder(str(tmp_path / "out"))
    job = prepare_job(load_job(str(job_file(env, tmp_path / "a.yaml", out.uri))), lambda: False)
    old = {**job.content, "precision": "auto"}
    out.write_json(JOB_FILE, {"fingerprint": job_fingerprint(old), "content": old, "augment_version": "0.1.0"})
    with pytest.raises(AugmentError, match=rf"{JOB_FILE} records precision auto unresolved \(written by an earlier "
                                           r"augment\), so its shards may be bf16 or fp32; this job resolves auto to "
                                           r"fp32; pass --overwrite"):
        claim_output(out, job, overwrite=False)
    assert claim_output(out, job, overwrite=True).mode == "overwrite"
    assert out.read_json(JOB_FILE)["content"]["precision"] == "fp32"


def test_defaults_live_in_the_schema():
    from augment.core.device import PRECISIONS
    from augment.runner.jobfile import job_schema, schema_default, section_defaults
    from augment.synthesis.generate import NOISE_MODES

    cfg = job_from_document({"data": "d", "generator": "g", "segmenter": "s", "output": "o", "classes": {"car": 1}})
    props = job_schema()["properties"]
    from augment.runner.jobfile import REGION_FILTER_KEYS

    filter_defaults = {k: v["default"] for k, v in props["filter"]["properties"].items()}
    assert section_defaults("filter") == filter_defaults
    assert {**asdict(cfg.filter), **{k: getattr(cfg.region_filter, f) for k, f in REGION_FILTER_KEYS.items()}} == (
        filter_defaults)
    assert asdict(cfg.resources) == {"workers": None, "gpus_per_worker": None, "cpus_per_worker": None,
                                     **section_defaults("resources")}
    for key in ("seed", "keep_rejected", "noise", "precision", "edits", "sheets"):
        assert getattr(cfg, key) == props[key]["default"] == schema_default(key), key
    assert cfg.balance_power == schema_default("balance", "power")
    assert tuple(props["noise"]["enum"]) == NOISE_MODES and tuple(props["precision"]["enum"]) == PRECISIONS
    cfg = job_from_document({"data": "d", "generator": "g", "segmenter": "s", "output": "o", "balance": {"total": 9},
                             "filter": {"min_miou": 0.25}, "resources": {"batch_size": 2}})
    assert (cfg.balance_total, cfg.balance_power) == (9, schema_default("balance", "power"))
    assert cfg.filter.min_miou == 0.25 and cfg.filter.min_target_iou == schema_default("filter", "min_target_iou")
    assert cfg.resources.batch_size == 2 and cfg.resources.samples_per_shard == schema_default(
        "resources", "samples_per_shard")


def test_filter_rejects_and_only_accepted_rows_are_written(env, first_run, tmp_path, ray_session):
    scores = sorted_table(first_run["out"]).select(["id", "pixel_accuracy"]).to_pylist()
    values = sorted({r["pixel_accuracy"] for r in scores})
    threshold = float(values[len(values) // 2])
    passing = {r["id"] for r in scores if r["pixel_accuracy"] >= threshold}
    assert 0 < len(passing) < len(scores)
    cfg = load_job(str(job_file(env, tmp_path / "job.yaml", tmp_path / "out",
                                filter={**NO_FILTER, "min_pixel_accuracy": threshold})))
    summary = run_job(cfg)
    ds = open_dataset(str(tmp_path / "out"))
    ids = ds.arrow.to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(passing) and summary["rows"] == len(passing)
    assert summary["accepted"] == len(passing) and summary["rejected"] == len(scores) - len(passing)
    out = OutputFolder(str(tmp_path / "out"))
    rejected = {i for k in range(summary["shards"]) for i in read_marker(out, k).rejected_ids}
    assert rejected == {r["id"] for r in scores} - passing
    for name, c in summary["counts"].items():
        assert c["accepted"] == sum(1 for i in passing if i.startswith(f"syn/{name}/"))
    assert ds.info.extra["counts"] == summary["counts"]
    assert summary["below_threshold"] == {"min_miou": 0, "min_target_iou": 0,
                                          "min_pixel_accuracy": len(scores) - len(passing)}


def test_job_accepting_nothing_exits_3_saying_which_threshold_rejected_how_many(env, first_run, tmp_path,
                                                                                ray_session, capsys):
    from augment.cli import main

    scores = sorted_table(first_run["out"]).column("pixel_accuracy").to_pylist()
    assert max(scores) < 1.0  # untrained models: no sample is perfect
    path = job_file(env, tmp_path / "job.yaml", tmp_path / "out", filter={**NO_FILTER, "min_pixel_accuracy": 1.0})
    assert main(["run", str(path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    n = sum(QUOTAS.values())
    assert err[-1] == (f"augment run: error: the filter accepted none of {n} samples (0 below filter.min_miou 0, 0 "
                       f"below filter.min_target_iou 0, {n} below filter.min_pixel_accuracy 1; a sample can fall "
                       f"below several); lower the filter thresholds in {path}")
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["accepted"] == 0 and summary["rows"] == 0 and summary["rejected"] == n


BAD_JOBS = {
    "missing key": ({"segmenter": None}, "missing required key 'segmenter'"),
    "unknown key": ({"filtr": {}}, "unknown key 'filtr'"),
    "wrong type": ({"resources": {"workers": "two"}}, "resources.workers"),
    "wrong noise": ({"noise": "everywhere"}, "noise"),
    "wrong precision": ({"precision": "fp16"}, "precision"),
    "filter out of range": ({"filter": {"min_target_iou": 1.5}}, "filter.min_target_iou: 1.5 is greater than"),
    "unknown filter key": ({"filter": {"min_iou": 0.5}}, "unknown key 'filter.min_iou' (did you mean 'min_miou'?)"),
    "keep_rejected not a boolean": ({"keep_rejected": "yes"}, "keep_rejected: 'yes' is not of type 'boolean'"),
    "classes and balance": ({"balance": {"total": 5}}, "give exactly one of 'classes'"),
    "unknown class": ({"classes": {"unicorn": 3}}, "unknown class 'unicorn'"),
    "class index out of range": ({"classes": {"42": 3}}, "out of range"),
    "no dataset": ({"data": "nowhere"}, "no such dataset folder"),
    "segmenter as generator": ({"generator": "SEG"}, "not a GAN"),
    "other classes": ({"generator": "OTHER_CLASSES"}, "trained on classes"),
    "other resolution": ({"generator": "OTHER_SIZE"}, "trained at 16x16, but the dataset's images are 32x32"),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_bad_job_is_refused_before_any_output(env, tmp_path, case):
    fields, message = BAD_JOBS[case]
    misfits = env["root"] / "misfits"
    if not misfits.exists():
        (misfits / "classes").mkdir(parents=True)
        (misfits / "size").mkdir()
        make_tiny_runs(misfits / "classes", env["data"], classes=[f"c{i}" for i in range(11)])
        make_tiny_runs(misfits / "size", env["data"], size=(16, 16))
    subst = {"SEG": env["seg"], "OTHER_CLASSES": str(misfits / "classes" / "gan-run"),
             "OTHER_SIZE": str(misfits / "size" / "gan-run")}
    fields = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    base = {"data": env["data"], "generator": env["gan"], "segmenter": env["seg"], "output": str(tmp_path / "out"),
            "classes": QUOTAS, "resources": RESOURCES}
    path = write_job(tmp_path / "job.yaml", **{**base, **fields})
    with pytest.raises(AugmentError, match="job.yaml|gan-run|seg-run|nowhere|class") as info:
        run_job(load_job(str(path)))
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unparsable_job_file_names_the_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data: a\ngenerator: b\n  segmenter: c\n")
    with pytest.raises(AugmentError, match=r"job.yaml: not valid YAML/JSON at line 3"):
        load_job(str(path))


def test_cli_prints_one_line_error(tmp_path):
    from augment.cli import main

    path = write_job(tmp_path / "job.yaml", data="d", generator="g", segmenter="s", output="o")
    assert main(["run", str(path)]) == 2


def test_other_jobs_output_is_refused_unless_overwrite(env, first_run, tmp_path, ray_session, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run["out"], out)
    before = mtimes(out)
    other = load_job(str(job_file(env, tmp_path / "job.yaml", out, seed=7, classes={"car": 2})))
    with pytest.raises(AugmentError, match="another job .*differs in: .*quotas.*seed.*--overwrite"):
        run_job(other)
    assert mtimes(out) == before
    summary = run_job(other, overwrite=True)
    assert summary["mode"] == "overwrite" and summary["rows"] == 2
    assert "data/shard-00003." in capsys.readouterr().out
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"shard-00000.{summary['run_id']}.parquet"]
    assert sorted(p.name for p in (out / SHEETS_DIR).iterdir()) == ["car.png"]
    assert open_dataset(str(out)).arrow.to_table(columns=["id"]).column("id").to_pylist() == [
        "syn/car/000000", "syn/car/000001"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AugmentError, match="not an augmentation job's output .*notes.txt"):
        run_job(load_job(str(job_file(env, tmp_path / "job2.yaml", out, seed=8))), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / INFO_FILE).is_file()


def test_killed_driver_is_resumed_exactly_once(env, tmp_path, ray_session):
    out = tmp_path / "out"
    path = job_file(env, tmp_path / "job.yaml", out, classes={"car": 12, "pedestrian": 12},
                    filter={**NO_FILTER, "min_pixel_accuracy": 0.3},
                    resources={"workers": 1, "batch_size": 2, "samples_per_shard": 2})
    proc = subprocess.Popen([sys.executable, "-m", "augment", "run", str(path), "--address", "local"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    markers = out / "_markers"
    try:
        deadline = time.monotonic() + 240
        while not list(markers.glob("shard-*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log = proc.communicate()[0].decode(errors="replace")
    done_before = sorted(p.name for p in markers.glob("shard-*.json"))
    assert 1 <= len(done_before) < 12, log
    assert not (out / INFO_FILE).exists()
    cfg = load_job(str(path))
    summary = run_job(cfg)
    assert summary["shards"] == 12 and summary["shards_run"] <= 12 - len(done_before)
    out_folder = OutputFolder(str(out))
    stats = [read_marker(out_folder, k) for k in range(12)]
    assert all(s is not None for s in stats)
    ids = pq.read_table(out / "data").column("id").to_pylist()
    rejected = {i for s in stats for i in s.rejected_ids}
    plan = Plan.from_json((out / PLAN_FILE).read_text())
    assert len(ids) == len(set(ids)) == sum(s.rows for s in stats) == summary["rows"]
    assert set(ids) == {p.sample_id for p in plan.samples} - rejected
    assert not list((out / "data").glob(".shard-*"))
    assert summary["accepted"] + summary["rejected"] == 24
    for row in pq.read_table(out / "data", columns=["mask"]).column("mask").to_pylist()[:3]:
        assert decode_mask(row["bytes"]).shape == (32, 32)


def test_two_drivers_at_once_do_not_corrupt_the_output(env, tmp_path, ray_session):
    import threading

    path = job_file(env, tmp_path / "job.yaml", tmp_path / "out",
                    resources={"workers": 1, "batch_size": 2, "samples_per_shard": 2})
    results: list = []

    def drive() -> None:
        try:
            results.append(run_job(load_job(str(path))))
        except BaseException as exc:  # noqa: BLE001  (checked below)
            results.append(exc)

    drivers = [threading.Thread(target=drive) for _ in range(2)]
    for d in drivers:
        d.start()
    for d in drivers:
        d.join(timeout=300)
    # The later claim takes the output over (fencing): the earlier driver either finished first or stops, named.
    finished = [r for r in results if isinstance(r, dict)]
    assert len(results) == 2 and finished, results
    assert all(isinstance(r, AugmentError) and "was taken over by" in str(r) for r in results if r not in finished)
    assert all(r["rows"] == 14 and r["shards"] == 7 for r in finished)
    ds = open_dataset(str(tmp_path / "out"))  # its info lists one file per shard, of either run (per-run names)
    ids = ds.arrow.to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 14 and len(ds.info.files) == 7
    assert [f.split(".")[0] for f in ds.info.files] == [f"data/shard-{k:05d}" for k in range(7)]
    # Anything else left in data/ can only be a shard the superseded driver's worker committed as the winner
    # finished (same job, so kept for adoption; the next run sweeps it).
    winners = {r["run_id"] for r in finished}
    extra = {f"data/{p.name}" for p in (tmp_path / "out" / "data").iterdir()} - set(ds.info.files)
    assert not [name for name in extra if any(run_id in name for run_id in winners)]
    assert open_dataset(str(tmp_path / "out")).info.num_rows == 14


def test_unreadable_source_map_is_quarantined_and_counted(tmp_path, ray_session):
    from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, read_info

    good = make_example_dataset(tmp_path / "good", n=3, size=(32, 32))
    info = read_info(good)
    rows = open_dataset(good).arrow.to_table().to_pylist()
    car = info.classes.index("car")
    rows.sort(key=lambda r: -r["class_pixels"][car])  # the map with most car pixels is the likeliest source
    rows[0]["mask"] = {"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": rows[0]["mask"]["path"]}
    with StagedOutput(str(tmp_path / "bad")) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", info.num_classes)
        for row in rows:
            writer.write(row)
        stats = writer.close()
        new_info = DatasetInfo(classes=info.classes, palette=info.palette, lineage={})
        new_info.apply_stats(stats)
        staged.commit(new_info, [])
    gan, seg = make_tiny_runs(tmp_path, good)
    path = write_job(tmp_path / "job.yaml", data=str(tmp_path / "bad"), generator=gan, segmenter=seg,
                     output=str(tmp_path / "out"), classes={"car": 8}, filter=NO_FILTER,
                     resources={"workers": 1, "batch_size": 4, "samples_per_shard": 4})
    summary = run_job(load_job(str(path)))
    bad_id = rows[0]["id"]
    plan = Plan.from_json((tmp_path / "out" / PLAN_FILE).read_text())
    from_bad = {p.sample_id for p in plan.samples if p.source_id == bad_id}
    assert from_bad and summary["quarantined"] == len(from_bad)
    assert summary["rows"] == 8 - len(from_bad) and summary["accepted"] == 8 - len(from_bad)
    lines = (tmp_path / "out" / QUARANTINE_FILE).read_text().splitlines()
    assert len(lines) == len(from_bad) and bad_id in lines[0] and "corrupt" in lines[0]
    ds = open_dataset(str(tmp_path / "out"))
    assert ds.info.quarantined == len(from_bad)
    assert set(ds.arrow.to_table(columns=["id"]).column("id").to_pylist()) == {
        p.sample_id for p in plan.samples} - from_bad


def test_shard_that_keeps_failing_stops_the_job_with_its_cause(env, tmp_path, ray_session):
    from augment.runner.job import prepare_job, shard_settings
    from augment.runner.pool import Progress, run_shards

    path = job_file(env, tmp_path / "job.yaml", tmp_path / "out",
                    resources={"workers": 1, "samples_per_shard": 14, "max_shard_attempts": 2})
    job = prepare_job(load_job(str(path)))
    settings = replace(shard_settings(job, "r000001-00000000"), generator_sha256="0" * 64)
    with pytest.raises(AugmentError, match="shard 0 failed 2 times; last error: .*weights changed"):
        run_shards(job.shards, settings, [0], job.cfg.resources, Progress(1, 0, len(job.plan), 0), local=True)
    assert not (tmp_path / "out").exists()


def test_shard_whose_worker_always_dies_is_attempted_exactly_max_shard_attempts_times(
        env, tmp_path, ray_session, monkeypatch):
    from augment.runner import pool

    log = tmp_path / "attempts.log"

    class DyingProcessor:  # defined here, so Ray pickles it by value; each attempt logs a line, then its process dies
        def __init__(self, settings, device=None):
            self.settings = settings

        def run(self, shard, samples):
            with open(log, "a") as f:
                f.write(f"{shard}\n")
            os._exit(1)

    monkeypatch.setattr(pool, "ShardProcessor", DyingProcessor)
    path = job_file(env, tmp_path / "job.yaml", tmp_path / "out",
                    resources={"workers": 1, "samples_per_shard": 14, "max_shard_attempts": 2})
    job = prepare_job(load_job(str(path)))
    with pytest.raises(AugmentError, match=r"^shard 0 failed 2 times; last error: ") as info:
        pool.run_shards(job.shards, shard_settings(job, "r000001-00000000"), [0], job.cfg.resources,
                        pool.Progress(1, 0, 14, 0), True)
    assert "\n" not in str(info.value)
    assert log.read_text().splitlines() == ["0"] * 2  # not 2 x (1 + 2): Ray restarts and retries nothing itself


def test_example_job_file_is_valid():
    from conftest import PROJECT_ROOT

    cfg = load_job(str(PROJECT_ROOT / "jobs" / "example.yaml"))
    assert cfg.classes == {"pedestrian": 200, "bicyclist": 200, "sign_symbol": 100}
    # it documents the defaults: every key it sets to a default's value (filter, noise, ...) shows the schema's
    assert asdict(cfg.filter) == {k: v for k, v in section_defaults("filter").items() if k in asdict(cfg.filter)}
    assert (cfg.keep_rejected, cfg.noise, cfg.precision, cfg.sheets, cfg.resources.max_shard_attempts) == (
        schema_default("keep_rejected"), schema_default("noise"), schema_default("precision"),
        schema_default("sheets"), schema_default("resources", "max_shard_attempts"))
    assert cfg.resources.gpus_per_worker == 1 and cfg.edits["paste"] == {"prob": 0.3, "max": 2}
    assert cfg.data == str(PROJECT_ROOT / "demo-out" / "data" / "train")  # what `augment demo` writes
    assert cfg.segmenter == str(PROJECT_ROOT / "demo-out" / "baseline")


def test_gpu_workers_get_their_node_share_of_cpus(monkeypatch):
    import ray

    from augment.runner.pool import gpu_worker_cpus, worker_resources
    from augment.runner.jobfile import Resources

    def node(cpus, gpus=0.0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}

    nodes = [node(4), node(16, 1), node(48, 4), node(64, 1, alive=False)]
    assert gpu_worker_cpus(nodes, 1.0) == 12.0  # the 4-GPU node has the fewest CPUs per GPU
    assert gpu_worker_cpus(nodes, 0.5) == 6.0
    assert gpu_worker_cpus([node(4)], 1.0) == 1.0  # no GPU node up yet
    assert gpu_worker_cpus([node(2, 8)], 1.0) == 1.0

    monkeypatch.setattr(ray, "nodes", lambda: [node(16, 1)])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert worker_resources(Resources(), pending=10, local=True) == (1, 1.0, 16.0)
    assert worker_resources(Resources(gpus_per_worker=0.5), pending=10, local=True) == (2, 0.5, 8.0)
    assert worker_resources(Resources(cpus_per_worker=2), pending=10, local=True) == (1, 1.0, 2.0)
    monkeypatch.setattr(ray, "nodes", lambda: [node(4)])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    assert worker_resources(Resources(), pending=10, local=True) == (4, 0.0, 1.0)
    assert worker_resources(Resources(), pending=3, local=True) == (3, 0.0, 1.0)
