"""Smoke test of the throughput benchmark (augment.pipelines.benchmark, run by benchmarks/throughput.py) at a tiny
size: it runs every contender (the synthesis modes insert and paste beside scene too) and writes the JSON it
promises; its Ray Data peer writes the job's rows; the check that the peer did the same work fails when it did not;
bad --modes / --crop are refused in one line."""

from __future__ import annotations

import json

import pytest

from augment.core.errors import AugmentError
from augment.pipelines import benchmark as bench
from augment.pipelines.benchmark import BenchmarkSettings, run_benchmark


def test_throughput_benchmark_runs_tiny_and_writes_json(tmp_path, ray_session, capsys):
    out = tmp_path / "bench.json"
    run_benchmark(BenchmarkSettings(
        size="48x64", n=8, batch=4, samples_per_shard=4, source_maps=8, workers=[1, 2], threads=1, repeats=1,
        warmup=False, model="tiny", device_section="cpu", gpu_sizes="32x32", gpu_batch=2, gpu_iters=1,
        gpu_model="tiny", workdir=str(tmp_path), json=str(out), compare_precision=True,
    ))
    report = json.loads(out.read_text())
    for key in ("pipeline_images_per_s", "plain_loop_images_per_s", "in_process_images_per_s"):
        assert report[key] > 0, key
    ratio = report["pipeline_images_per_s"] / report["plain_loop_images_per_s"]
    assert abs(report["ratio_vs_plain_loop"] - ratio) < 0.01
    cpu = report["cpu"]
    assert cpu["workers"] == [1] and cpu["workers_skipped"] == [2]  # one core allowed: 2 workers skipped
    assert [s["workers"] for s in report["scaling"]] == [1]
    results = cpu["results"]
    bf16 = bench.use_bf16(bench.torch.device("cpu"), "auto")
    assert set(results) == {"plain loop", "pipeline, no Ray", "augment run, 1 worker", "Ray Data map_batches, 1 worker",
                            "insert: augment run, 1 worker", "paste: augment run, 1 worker"} | (
                               {"plain loop, fp32"} if bf16 else set())
    assert report["machine"]["generator_precision"] == ("bf16" if bf16 else "fp32")
    assert all(r["generated"] == 8 and r["accepted"] == 8 and r["peak_rss_mib"] > 0 for r in results.values())
    peer, ours = results["Ray Data map_batches, 1 worker"], results["augment run, 1 worker"]
    assert [r["rows_written"] for r in peer["runs"]] == [8]  # counted from the files Ray Data wrote
    assert ours["ratio_vs_raydata"] == pytest.approx(ours["images_per_s"] / peer["images_per_s"], rel=1e-6)
    assert report["ratio_vs_raydata"] == pytest.approx(ours["ratio_vs_raydata"], abs=1e-3)
    assert report["raydata"] == [{
        "workers": 1, "images_per_s": round(peer["images_per_s"], 3),
        "augment_run_images_per_s": round(ours["images_per_s"], 3), "rows_written": 8, "augment_run_accepted": 8,
        "ratio_augment_run_vs_raydata": round(ours["ratio_vs_raydata"], 3),
        "steady_ratio_augment_run_vs_raydata": round(ours["steady_ratio_vs_raydata"], 3)}]
    scene = results["augment run, 1 worker"]
    # 48x64: the smallest example images whose maps hold an object of every class (insertion's balance needs one),
    # too small for the 64 crop, so the 32 one
    assert cpu["modes"] == ["scene", "insert", "paste"] and cpu["crop"] == 32
    for mode in ("insert", "paste"):  # same samples, same workers, same round as the scene row; the ratio per round
        ours = results[f"{mode}: augment run, 1 worker"]
        assert ours["ratio_vs_scene"] == pytest.approx(ours["images_per_s"] / scene["images_per_s"], rel=1e-6)
        assert ours["steady_ratio_vs_scene"] == pytest.approx(
            ours["steady_images_per_s"] / scene["steady_images_per_s"], rel=1e-6)
        assert report[f"ratio_{mode}_vs_scene"] == pytest.approx(ours["ratio_vs_scene"], abs=1e-3)
    assert [(m["mode"], m["workers"], m["generated"], m["scene_generated"]) for m in report["modes"]] == [
        ("insert", 1, 8, 8), ("paste", 1, 8, 8)]
    for name in ("plain loop", "pipeline, no Ray"):
        stages = results[name]["stages_seconds"]
        assert set(bench.STAGES) <= set(stages) and stages["generate"] > 0 and stages["encode"] > 0
    dev = report["device_section"]
    assert [(r["precision"], r["compiled"], bool(r["variant"])) for r in dev["rows"]] == [
        ("fp32", False, False), ("bf16", False, False), ("bf16", False, True)]  # no torch.compile on CPU
    assert all(r["images_per_s"] > 0 for r in dev["rows"])
    assert dev["sizes"][0]["generator_gflops_per_image"] > 0
    assert not list(tmp_path.glob("augment-bench-*")), "the work folder is removed"
    printed = capsys.readouterr().out
    assert "images/s" in printed
    assert "Ray Data map_batches, 1 worker" in printed and "Ray Data wrote 8 rows = the job's 8 accepted" in printed
    assert "insert / scene (augment run), 1 worker(s)" in printed and "paste / scene (augment run)" in printed


def test_throughput_script_defaults_are_the_settings_defaults():
    import runpy

    from conftest import PROJECT_ROOT

    script = runpy.run_path(str(PROJECT_ROOT / "benchmarks" / "throughput.py"), run_name="throughput_script")
    assert script["parse_args"]([]) == BenchmarkSettings()
    parsed = script["parse_args"](["--workers", "1,3", "--no-warmup", "--size", "32x48", "--modes", "paste,scene",
                                   "--crop", "48"])
    assert (parsed.workers, parsed.warmup, parsed.size, parsed.modes, parsed.crop) == (
        [1, 3], False, "32x48", ["paste", "scene"], 48)
    with pytest.raises(SystemExit):
        script["parse_args"](["--modes", "insert,paste"])  # no scene to compare with: argparse's one-line error


def test_modes_are_the_job_schemas_and_need_scene():
    from augment.runner.jobfile import job_schema

    assert set(bench.MODES) == set(job_schema()["properties"]["synthesis"]["properties"]["mode"]["enum"])
    assert BenchmarkSettings().modes == list(bench.MODES)
    assert bench.parse_modes("scene, paste") == ["scene", "paste"]
    for text in ("insert,paste", "scene,blend", "scene,scene"):
        with pytest.raises(AugmentError, match="give distinct modes of scene, insert, paste, scene among them"):
            bench.parse_modes(text)


@pytest.mark.parametrize("size, crop, expected", [
    ("64x64", None, 64), ("64x96", None, 64), ("48x64", None, 32), ("32x32", None, 32), ("64x64", 48, 48)])
def test_crop_size_fits_the_images(size, crop, expected):
    assert bench.crop_size(BenchmarkSettings(size=size, crop=crop)) == expected


@pytest.mark.parametrize("size, crop", [("32x32", 64), ("64x64", 16), ("24x24", None)])
def test_crop_size_refuses_a_crop_that_does_not_fit(size, crop):
    with pytest.raises(AugmentError, match="mode insert's crop must be in 32.."):
        bench.crop_size(BenchmarkSettings(size=size, crop=crop))


def test_job_config_builds_each_mode(tmp_path):
    from augment.data.ingest import write_example_data

    write_example_data(str(tmp_path / "data"), 4, (32, 32), seed=0, workers=1)
    gan, seg = bench.make_models(tmp_path, str(tmp_path / "data"), "lraspp_mobilenet_v3_large", "tiny")
    crop_gan = bench.save_generator(str(tmp_path / "crop"), str(tmp_path / "data"), "tiny", 32)
    inputs = {"data": str(tmp_path / "data"), "gan": gan, "seg": seg, "crop_gan": crop_gan}
    settings = BenchmarkSettings(batch=2, samples_per_shard=3)
    configs = {m: bench.job_config(settings, inputs, str(tmp_path / m), 6, 1, 1, 0, m) for m in bench.MODES}
    assert {m: (c.synthesis.mode, c.generator) for m, c in configs.items()} == {
        "scene": ("scene", gan), "insert": ("insert", crop_gan), "paste": ("paste", None)}
    assert all(c.balance_total == 6 and c.resources.batch_size == 2 for c in configs.values())
    assert configs["insert"].region_filter.min_iou == 0.0 and configs["scene"].filter.min_miou == 0.0


def test_raydata_peer_writes_the_jobs_rows(tmp_path, ray_session):
    """The Ray Data peer makes exactly the rows the job's shard processor makes: the same ids, image and mask bytes,
    scores."""
    import pyarrow.dataset as pads

    from augment.data.ingest import write_example_data
    from augment.runner.job import prepare_job

    write_example_data(str(tmp_path / "data"), 6, (32, 32), seed=0, workers=1)
    gan, seg = bench.make_models(tmp_path, str(tmp_path / "data"), "lraspp_mobilenet_v3_large", "tiny")
    inputs = {"data": str(tmp_path / "data"), "gan": gan, "seg": seg}
    settings = BenchmarkSettings(batch=2, samples_per_shard=3)  # a batch cut short at every shard's end
    cfg = bench.job_config(settings, inputs, str(tmp_path / "job"), 6, 1, 1, 0)
    job = prepare_job(cfg)
    ours = bench.pipeline_in_process(job, cfg.output, bench.torch.device("cpu"), 1)
    theirs = bench.raydata_job(job, str(tmp_path / "raydata"), 1, 1, 0)
    assert (theirs.generated, theirs.accepted) == (ours.generated, ours.accepted) == (6, 6)
    columns = ["id", "image", "mask", "class_pixels", "miou", "target_iou", "pixel_accuracy", "accepted", "seed"]
    job_rows = pads.dataset(str(tmp_path / "job" / "data"), format="parquet").to_table(columns).sort_by("id")
    peer_rows = pads.dataset(str(tmp_path / "raydata"), format="parquet").to_table(columns).sort_by("id")
    assert peer_rows.equals(job_rows)
    assert theirs.extra["rows_written"] == 6 and len(theirs.extra["busy_seconds_per_actor"]) == 1
    assert 0 < theirs.setup_seconds < theirs.seconds


def test_check_same_rows_refuses_a_peer_that_wrote_other_rows():
    job = [bench.Run(1.0, 8, 8), bench.Run(1.0, 8, 8)]
    runs = {"augment run, 2 workers": job, "Ray Data map_batches, 2 workers": [bench.Run(1.0, 8, 8)] * 2}
    bench.check_same_rows(runs)
    runs["Ray Data map_batches, 2 workers"] = [bench.Run(1.0, 8, 8), bench.Run(1.0, 8, 7)]
    with pytest.raises(RuntimeError, match="round 2: Ray Data map_batches, 2 workers wrote 7 rows from 8 images, "
                                           "but augment run, 2 workers accepted 8 of 8"):
        bench.check_same_rows(runs)
