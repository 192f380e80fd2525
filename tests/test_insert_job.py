"""Augmentation jobs of synthesis modes paste and insert (job-v2's `synthesis:` block), end to end on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from augment.core.errors import AugmentError
from augment.data.codec import decode_image, decode_mask
from augment.data.dataset import open_dataset
from augment.data.lookup import RowLookup
from augment.runner.job import load_job, prepare_job, run_job
from augment.runner.jobfile import job_from_document, section_defaults_at
from augment.runner.markers import PLAN_FILE, SHEETS_DIR
from augment.synthesis.composite import DEFAULT_BAND, placed_region
from augment.synthesis.fill import source_object
from augment.synthesis.insert_plan import DEFAULT_MAX_HOSTS, InsertionPlan
from augment.data.objects import DEFAULT_MIN_PIXELS
from augment.filtering.region import DEFAULT_K
from job_helpers import make_example_dataset, make_tiny_runs, write_job

QUOTAS = {"pedestrian": 4, "car": 3}
RESOURCES = {"workers": 1, "batch_size": 4, "samples_per_shard": 4}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("insertenv")
    data = make_example_dataset(root / "data", n=12, size=(48, 64))
    scene_gan, seg = make_tiny_runs(root, data)
    crop_root = root / "crop"
    crop_root.mkdir()
    crop_gan, _ = make_tiny_runs(crop_root, data, size=(32, 32), context=True)
    guided_root = root / "guided"
    guided_root.mkdir()
    guided_gan, _ = make_tiny_runs(guided_root, data, size=(32, 32), context=True, guide=True)
    return {"root": root, "data": data, "seg": seg, "crop_gan": crop_gan, "scene_gan": scene_gan,
            "guided_gan": guided_gan}


def v2(env, output, mode: str, **fields):
    doc = {"version": 2, "data": env["data"], "segmenter": env["seg"], "output": str(output), "classes": QUOTAS,
           "synthesis": {"mode": mode, **fields.pop("synthesis", {})}, "filter": {"min_region_iou": 0.0},
           "sheets": 2, "resources": RESOURCES, **fields}
    if mode == "insert":
        doc["generator"] = env["crop_gan"]
    elif mode == "scene":
        doc["generator"] = env["scene_gan"]
    return doc


def _host_rows(env) -> dict[str, dict[str, np.ndarray]]:
    ds = open_dataset(env["data"])
    lookup = RowLookup(ds)
    return {k: {"image": decode_image(v["image"]), "mask": decode_mask(v["mask"])}
            for k, v in lookup.read(lookup.ids(), ("image", "mask")).items()}


@pytest.mark.parametrize("mode, generator", [("paste", None), ("insert", "crop_gan"), ("insert", "guided_gan")])
def test_insertion_job_keeps_the_hosts_bytes_outside_object_and_band(env, tmp_path, ray_session, mode, generator):
    out = tmp_path / "out"
    doc = v2(env, out, mode)
    if generator:
        doc["generator"] = env[generator]
    summary = run_job(job_from_document(doc))
    assert summary["synthesis"]["mode"] == mode
    plan = InsertionPlan.from_json((out / PLAN_FILE).read_text())
    planned = {p.sample_id: p for p in plan.insertions}
    rows = pq.read_table(out / "data").to_pylist()
    assert rows and summary["accepted"] == len(rows) == len(planned)  # min_region_iou 0: every sample kept
    real = _host_rows(env)
    for row in rows:
        p = planned[row["id"]]
        host = real[p.host_id]
        image, mask = decode_image(row["image"]["bytes"]), decode_mask(row["mask"]["bytes"])
        obj = source_object(real[p.source_id]["mask"], p)
        placed, alpha = placed_region(obj.shape, p.placement, host["mask"].shape, DEFAULT_BAND)
        outside = ~(placed | (alpha > 0))
        assert np.array_equal(image[outside], host["image"][outside])  # the host's bytes, exactly
        assert np.array_equal(mask[outside], host["mask"][outside])
        band = (alpha > 0) & ~placed
        assert (mask[band] == 255).all()  # band pixels: ignore
        assert (mask[placed] == p.target_class).all()
        assert row["source_id"] == p.source_id and row["target_class"] == p.target_class
    assert sorted(summary["sheets"]) == [f"{SHEETS_DIR}/car.png", f"{SHEETS_DIR}/pedestrian.png"]
    assert open_dataset(str(out)).info.num_rows == len(rows)


def test_insertion_plan_is_deterministic_and_resume_skips_done_shards(env, tmp_path, ray_session):
    out = tmp_path / "out"
    first = run_job(job_from_document(v2(env, out, "paste")))
    again = run_job(job_from_document(v2(env, out, "paste")))
    assert again["mode"] == "resume" and again["shards_run"] == 0 and again["fingerprint"] == first["fingerprint"]
    other = prepare_job(job_from_document(v2(env, tmp_path / "x", "paste")))
    assert other.plan.to_json() == (out / PLAN_FILE).read_text()
    moved = prepare_job(job_from_document(v2(env, tmp_path / "x", "paste", seed=1)))
    assert moved.fingerprint != first["fingerprint"] and moved.plan.to_json() != other.plan.to_json()


def test_region_filter_and_pixel_rule(env, tmp_path, ray_session):
    strict = v2(env, tmp_path / "strict", "paste", filter={"min_region_iou": 1.0}, keep_rejected=True)
    summary = run_job(job_from_document(strict))
    rows = pq.read_table(tmp_path / "strict" / "data").to_pylist()
    # an untrained segmenter recovers no object exactly: everything is rejected, each row says so
    assert summary["accepted"] == 0 and not any(r["accepted"] for r in rows)
    assert all(r["target_iou"] < 1.0 for r in rows)
    ruled = v2(env, tmp_path / "rule", "paste", filter={"min_region_iou": 0.0, "pixel_rule": True, "pixel_rule_k": 1.0})
    job = prepare_job(job_from_document(ruled))
    means = job.synthesis.class_means
    assert len(means) == 11 and job.content["class_means"] == list(means)
    summary = run_job(job_from_document(ruled))
    assert summary["synthesis"]["class_mean_losses"]["road"] == pytest.approx(means[3])
    plain = pq.read_table(tmp_path / "strict" / "data").sort_by("id").to_pylist()
    edited = pq.read_table(tmp_path / "rule" / "data").sort_by("id").to_pylist()
    ignored = [int((decode_mask(b["mask"]["bytes"]) == 255).sum()) - int((decode_mask(a["mask"]["bytes"]) == 255).sum())
               for a, b in zip(plain, edited)]
    assert all(n >= 0 for n in ignored) and sum(ignored) > 0  # k = 1: the pixels above their class mean go


def test_job_v1_file_still_runs_as_scene(env, tmp_path, ray_session):
    path = write_job(tmp_path / "v1.yaml", data=env["data"], generator=env["scene_gan"], segmenter=env["seg"],
                     output=str(tmp_path / "out"), classes={"pedestrian": 2},
                     filter={"min_miou": 0.0, "min_target_iou": 0.0}, resources=RESOURCES)
    cfg = load_job(str(path))
    assert cfg.synthesis.mode == "scene" and not cfg.synthesis.inserts
    job = prepare_job(cfg)
    assert "edits" in job.content and "placement" not in job.content and "mode" not in job.content
    summary = run_job(cfg)
    assert summary["accepted"] == 2 and "synthesis" not in summary


@pytest.mark.parametrize("change, message", [
    ({"synthesis": {"mode": "insert", "bnd": 2}}, "unknown key 'synthesis.bnd' (did you mean 'band'?)"),
    ({"synthesis": {"mode": "blend"}}, "synthesis.mode: 'blend' is not one of"),
    ({"version": 1}, "a synthesis block needs 'version: 2'"),
    ({"filter": {"min_miou": 0.3}}, "'filter.min_miou' applies to synthesis mode scene"),
    ({"edits": {"flip": 0.5}}, "'edits' applies to synthesis mode scene"),
    ({"synthesis": {"mode": "paste", "dilation": 2}}, "'synthesis.dilation' applies to synthesis mode insert"),
    ({"generator": "g"}, "synthesis mode paste copies real pixels and uses no generator"),
    ({"synthesis": {"mode": "paste", "placement": {"scale_range": [2, 1]}}}, "scale_range: [min, max] with min"),
    ({"synthesis": {"mode": "paste", "placement": {"weighting": "area"}}}, "placement.weighting"),
])
def test_bad_synthesis_keys_get_one_line(env, tmp_path, change, message):
    doc = {**v2(env, tmp_path / "out", "paste"), **change}
    with pytest.raises(AugmentError) as err:
        job_from_document(doc, source="job.yaml")
    assert message in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("job.yaml: ")


def test_mode_needs_the_right_generator(env, tmp_path):
    doc = v2(env, tmp_path / "out", "insert")
    doc["generator"] = env["scene_gan"]
    with pytest.raises(AugmentError, match="whole-scene generator; synthesis mode insert paints objects with a "
                                           "crop-mode one"):
        prepare_job(job_from_document(doc))
    doc = v2(env, tmp_path / "out", "scene", filter={})
    doc["generator"] = env["crop_gan"]
    with pytest.raises(AugmentError, match="is a crop-mode generator"):
        prepare_job(job_from_document(doc))
    doc = v2(env, tmp_path / "out", "insert")
    del doc["generator"]
    with pytest.raises(AugmentError, match="missing required key 'generator'"):
        job_from_document(doc)


def test_schema_defaults_are_the_librarys(tmp_path):
    placement = section_defaults_at("synthesis", "placement")
    assert placement["min_pixels"] == DEFAULT_MIN_PIXELS and placement["max_hosts"] == DEFAULT_MAX_HOSTS
    import inspect

    from augment.synthesis.placement import place

    defaults = {k: v.default for k, v in inspect.signature(place).parameters.items()
                if v.default is not inspect.Parameter.empty}
    for key in ("min_ground", "min_contact", "flip_prob", "tries"):
        assert placement[key] == defaults[key], key
    assert tuple(placement["scale_range"]) == defaults["scale_range"]
    assert section_defaults_at("synthesis")["band"] == DEFAULT_BAND
    assert section_defaults_at("filter")["pixel_rule_k"] == DEFAULT_K


def test_unreadable_source_map_is_quarantined_from_the_plan(env, tmp_path):
    from augment.data import example
    from augment.data.codec import class_pixels, encode_image, encode_mask
    from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row

    uri = str(tmp_path / "data")
    with StagedOutput(uri) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", len(example.CLASSES))
        for i, (sample_id, image, mask) in enumerate(example.generate(8, (48, 64), 0)):
            pixels = class_pixels(mask, len(example.CLASSES), example.IGNORE_INDEX, sample_id)
            mask_png = b"not a png" if i == 0 else encode_mask(mask)
            writer.write(make_row(f"train/{sample_id}", encode_image(image), mask_png, 48, 64, "train", pixels))
        stats = writer.close()
        info = DatasetInfo(classes=list(example.CLASSES), palette=[list(c) for c in example.PALETTE],
                           ignore_index=example.IGNORE_INDEX, lineage={"source": "test"})
        info.apply_stats(stats)
        staged.commit(info, stats.quarantine)
    doc = v2(env, tmp_path / "out", "paste", classes={"car": 3})
    doc["data"] = uri
    job = prepare_job(job_from_document(doc))
    bad_id = "train/" + next(iter(example.generate(1, (48, 64), 0)))[0]
    assert [q["id"] for q in job.skipped] == [bad_id] and "\n" not in job.skipped[0]["reason"]
    assert job.plan.insertions and all(bad_id not in (p.host_id, p.source_id) for p in job.plan.insertions)
    json.dumps(job.skipped)


def test_jobs_insert_yaml_is_a_valid_insert_job():
    path = Path(__file__).resolve().parents[1] / "jobs" / "insert.yaml"
    cfg = load_job(str(path))
    assert cfg.synthesis.mode == "insert" and cfg.generator.endswith("demo-out/cropgan")
    assert cfg.synthesis.placement == section_defaults_at("synthesis", "placement")
    assert cfg.region_filter.min_iou == 0.3 and not cfg.region_filter.pixel_rule
