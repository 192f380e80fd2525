"""Smoke test of the throughput benchmark (augment.pipelines.benchmark, run by benchmarks/throughput.py) at a tiny
size: it runs every contender and writes the JSON it promises."""

from __future__ import annotations

import json

from augment.pipelines import benchmark as bench
from augment.pipelines.benchmark import BenchmarkSettings, run_benchmark


def test_throughput_benchmark_runs_tiny_and_writes_json(tmp_path, ray_session, capsys):
    out = tmp_path / "bench.json"
    run_benchmark(BenchmarkSettings(
        size="32x32", n=8, batch=4, samples_per_shard=4, source_maps=8, workers=[1, 2], threads=1, repeats=1,
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
    assert set(results) == {"plain loop", "pipeline, no Ray", "augment run, 1 worker"} | (
        {"plain loop, fp32"} if bf16 else set())
    assert report["machine"]["generator_precision"] == ("bf16" if bf16 else "fp32")
    assert all(r["generated"] == 8 and r["accepted"] == 8 and r["peak_rss_mib"] > 0 for r in results.values())
    for name in ("plain loop", "pipeline, no Ray"):
        stages = results[name]["stages_seconds"]
        assert set(bench.STAGES) <= set(stages) and stages["generate"] > 0 and stages["encode"] > 0
    dev = report["device_section"]
    assert [(r["precision"], r["compiled"], bool(r["variant"])) for r in dev["rows"]] == [
        ("fp32", False, False), ("bf16", False, False), ("bf16", False, True)]  # no torch.compile on CPU
    assert all(r["images_per_s"] > 0 for r in dev["rows"])
    assert dev["sizes"][0]["generator_gflops_per_image"] > 0
    assert not list(tmp_path.glob("augment-bench-*")), "the work folder is removed"
    assert "images/s" in capsys.readouterr().out


def test_throughput_script_defaults_are_the_settings_defaults():
    import runpy

    from conftest import PROJECT_ROOT

    script = runpy.run_path(str(PROJECT_ROOT / "benchmarks" / "throughput.py"), run_name="throughput_script")
    assert script["parse_args"]([]) == BenchmarkSettings()
    parsed = script["parse_args"](["--workers", "1,3", "--no-warmup", "--size", "32x48"])
    assert (parsed.workers, parsed.warmup, parsed.size) == ([1, 3], False, "32x48")
