"""`augment demo` end to end at its smallest setting (32x32, 20 GAN steps, 24 scenes) on the shared Ray instance."""

from __future__ import annotations

import json

import pytest
import yaml

from augment.cli import main
from augment.data.dataset import open_dataset, read_info
from augment.pipelines.demo import DEMO_FILE, rarest_classes
from augment.models.store import load_card
from augment.training.evaluate import evaluate_segmenter

TINY = ["--size", "32x32", "--steps", "20", "--n", "24"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from conftest import ensure_local_ray

    ensure_local_ray()
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    return out


def test_demo_runs_the_whole_chain(demo, capsys):
    out = demo
    assert json.loads((out / DEMO_FILE).read_text()) == {"size": [32, 32], "steps": 20, "n": 24, "seed": 0}
    train, val = read_info(str(out / "data/train")), read_info(str(out / "data/val"))
    assert (train.num_rows, val.num_rows) == (24, 8) and train.lineage["seed"] != val.lineage["seed"]
    assert load_card(str(out / "gan")).step == 20
    job = yaml.safe_load((out / "job.yaml").read_text())
    rare = rarest_classes(str(out / "data/train"))
    assert len(rare) == 4 and job["classes"] == {c: 4 for c in rare}
    base = load_card(str(out / "baseline")).metrics
    assert job["filter"] == {"min_miou": round(base["val_miou"] / 2, 4),  # calibrated to the baseline
                             "min_target_iou": round(sum(base["val_iou"][c] for c in rare) / 8, 4)}
    shares = [p for p in train.class_pixels if p > 0]
    assert max(train.class_pixels[train.classes.index(c)] for c in rare) <= sorted(shares)[3]
    synthetic = open_dataset(str(out / "synthetic"))
    assert synthetic.info.kind == "synthetic" and synthetic.info.extra["job"]["classes"] == job["classes"]

    report = json.loads((out / "retrain/report.json").read_text())
    baseline = report["runs"]["baseline"]
    assert baseline["run"] == str(out / "baseline") and baseline["trained_here"] is False
    assert report["mix"]["steps"] == load_card(str(out / "baseline")).step == load_card(
        str(out / "retrain/augmented")).step
    assert report["targeted"]["classes"] == [c for c in train.classes if c in rare]
    assert report["lineage"]["synthetic"][0]["lineage"]["segmenter"] == str(out / "baseline")
    direct = evaluate_segmenter(str(out / "retrain/augmented"), str(out / "data/val"))
    assert {r["class"]: r["augmented"] for r in report["per_class"]} == direct["iou"]
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"data", "baseline", "gan", "augment", "retrain", "total_s"}
    for name in ("report.md", "report.html", "figures/iou.png", "figures/synthetic.png"):
        assert (out / "retrain" / name).stat().st_size > 0


def test_existing_output_is_refused_then_resumed(demo, capsys):
    out = demo
    assert main(["demo", "--out", str(out), *TINY]) == 2
    assert "--resume to finish that demo" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--size", "32x32", "--steps", "30", "--n", "24", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    before = {run: load_card(str(out / run)).weights_sha256 for run in ("baseline", "gan", "retrain/augmented")}
    assert main(["demo", "--out", str(out), *TINY, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "complete, kept" in printed and "report in" in printed
    assert {run: load_card(str(out / run)).weights_sha256 for run in before} == before


def test_overwrite_deletes_only_demo_outputs(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path / "mine"), *TINY, "--overwrite"]) == 2
    assert "not a demo output" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_demo_in_insert_mode(tmp_path, capsys):
    out = tmp_path / "ins"
    # 150 steps: 20 leave a baseline that finds no inserted object, and then the filter rightly accepts none
    assert main(["demo", "--out", str(out), "--size", "32x32", "--steps", "150", "--n", "24", "--mode", "insert"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / DEMO_FILE).read_text())["mode"] == "insert"
    gan = load_card(str(out / "cropgan"))
    assert gan.step == 150 and gan.model_config.get("context") and gan.model_config.get("guide")
    assert not (out / "gan").exists()
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert job["version"] == 2 and job["synthesis"] == {"mode": "insert"} and "filter" not in job
    summary = json.loads((out / "synthetic" / "_summary.json").read_text())
    assert summary["synthesis"]["mode"] == "insert"
    assert summary["accepted"] > 0 and summary["rejected"] > 0  # the region filter really filters
    assert "Synthesis mode insert: mIoU " in printed and "One seed: a change this size may be noise" in printed
