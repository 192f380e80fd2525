"""augment retrain on CPU: tiny example data (32x32), a synthetic dataset from a job with tiny untrained models."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pytest

from augment.cli import main
from augment.data.dataset import open_dataset
from augment.pipelines import experiment as exp
from augment.pipelines.retrain import MixError, RetrainConfig, baseline_recipe, check_mix, retrain
from augment.runner.job import load_job, run_job
from augment.models.store import load_card
from augment.report.page import pct
from augment.report.retrain import synthesis_modes, verdict
from augment.training.data import read_units
from augment.training.evaluate import evaluate_segmenter
from helpers import make_dataset
from job_helpers import SEGMENTER, make_example_dataset, make_tiny_runs, write_job

QUOTAS = {"pedestrian": 6, "bicyclist": 6}
RESOURCES = {"workers": 1, "batch_size": 6, "samples_per_shard": 4}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Real train/val data and a synthetic dataset holding accepted and (kept) rejected rows."""
    from conftest import ensure_local_ray

    ensure_local_ray()
    root = tmp_path_factory.mktemp("retrain")
    data = make_example_dataset(root / "train", n=16, size=(32, 32))
    val = make_example_dataset(root / "val", n=8, size=(32, 32), seed=1)
    gan, seg = make_tiny_runs(root, data)
    common = {"data": data, "generator": gan, "segmenter": seg, "classes": QUOTAS, "sheets": 0,
              "resources": RESOURCES}
    run_job(load_job(str(write_job(root / "all.yaml", output=str(root / "all"), keep_rejected=True,
                                   filter={"min_miou": 0.0, "min_target_iou": 0.0}, **common))))
    scores = sorted(open_dataset(str(root / "all")).arrow.to_table(columns=["pixel_accuracy"])
                    .column("pixel_accuracy").to_pylist())
    threshold = float(scores[len(scores) // 2])
    run_job(load_job(str(write_job(root / "kept.yaml", output=str(root / "kept"), keep_rejected=True,
                                   filter={"min_miou": 0.0, "min_target_iou": 0.0, "min_pixel_accuracy": threshold},
                                   **common))))
    synthetic = str(root / "kept")
    table = open_dataset(synthetic).arrow.to_table(columns=["id", "accepted"])
    accepted = set(table.filter(pc.field("accepted")).column("id").to_pylist())
    assert 0 < len(accepted) < table.num_rows
    return {"root": root, "data": data, "val": val, "synthetic": synthetic, "accepted": accepted,
            "rows": table.num_rows}


def test_training_stream_takes_accepted_synthetic_rows_only(env, ray_session):
    import pyarrow.parquet as pq

    from augment.training.data import training_stream

    ds = open_dataset(env["synthetic"])
    ids = []
    for unit in read_units(ds, rows_per_unit=3):
        table = pq.ParquetFile(unit["path"]).read_row_group(unit["row_group"], columns=["id"])
        ids += table.slice(unit["start"], unit["stop"] - unit["start"]).column("id").to_pylist()
    assert sorted(ids) == sorted(env["accepted"])
    assert training_stream(ds, None).dataset().count() == len(env["accepted"])


@pytest.fixture(scope="module")
def first(env):
    out = env["root"] / "run"
    cfg = RetrainConfig(real=env["data"], synthetic=[env["synthetic"]], val=env["val"], out=str(out), ratio=0.5,
                        epochs=1, batch=4, log_every=2)
    return {"out": out, "report": retrain(cfg)}


def test_report_numbers_equal_a_direct_evaluate(env, first, tmp_path):
    out, report = first["out"], first["report"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["per_class"] == report["per_class"] and saved["miou"] == report["miou"]
    for name in ("baseline", "augmented"):
        run = str(out / name)
        direct = evaluate_segmenter(run, env["val"])
        assert report["runs"][name]["run"] == run
        assert report["runs"][name]["weights_sha256"] == load_card(run).weights_sha256
        assert report["miou"][name] == direct["miou"]
        assert report["pixel_accuracy"][name] == direct["pixel_accuracy"]
        assert {r["class"]: r[name] for r in report["per_class"]} == direct["iou"]
        assert main(["evaluate", "--model", run, "--data", env["val"], "--json", str(tmp_path / f"{name}.json")]) == 0
        cli = json.loads((tmp_path / f"{name}.json").read_text())
        assert cli["iou"] == direct["iou"] and cli["miou"] == report["miou"][name]
    for row in report["per_class"]:
        if row["baseline"] is not None and row["augmented"] is not None:
            assert row["delta"] == pytest.approx(row["augmented"] - row["baseline"])
    assert report["miou"]["delta"] == pytest.approx(report["miou"]["augmented"] - report["miou"]["baseline"])


def test_report_records_mix_budget_and_lineage(env, first):
    out, report = first["out"], first["report"]
    baseline, augmented = load_card(str(out / "baseline")), load_card(str(out / "augmented"))
    assert baseline.step == augmented.step == report["mix"]["steps"] == 4  # 16 rows / batch 4, one epoch
    assert augmented.model_config["training"]["max_steps"] == baseline.step
    assert [d["uri"] for d in augmented.dataset["train"]] == [env["data"], env["synthetic"]]
    real, synthetic = report["mix"]["datasets"]
    assert real["share"] == synthetic["share"] == 0.5 and real["rows"] == 16
    assert synthetic["rows"] == env["rows"] and synthetic["accepted_rows"] == len(env["accepted"])
    assert sum(synthetic["accepted_per_class"].values()) == len(env["accepted"])
    assert report["targeted"]["classes"] == ["pedestrian", "bicyclist"]
    lineage = report["lineage"]["synthetic"][0]
    info = open_dataset(env["synthetic"]).info
    assert lineage["lineage"]["job_fingerprint"] == info.lineage["job_fingerprint"]
    assert lineage["job"]["classes"] == QUOTAS and lineage["derived_from_real"] is True
    assert report["runs"]["baseline"]["trained_here"] is True
    for name in ("report.md", "report.html", "figures/iou.png", "figures/synthetic.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "figures/iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.md").read_text()
    assert "**pedestrian (targeted)**" in page and baseline.weights_sha256 in page and "figures/iou.png" in page
    assert "class weights none" in page and report["mix"]["class_weights"] == "none"
    assert report["recipe"]["seed"] == 0 and report["recipe"]["deterministic"] is False
    assert augmented.reproducibility["seed"] == baseline.reproducibility["seed"] == 0
    assert "one paired difference" in page and "jobs/experiment.py --seeds" in page
    assert info.lineage["job_fingerprint"] in (out / "report.html").read_text()
    assert lineage["synthesis_mode"] == "scene"
    word = {True: "a gain", False: "a loss"}[report["miou"]["delta"] > 0] if report["miou"]["delta"] else "no change"
    assert f"Verdict: Synthesis mode scene: mIoU {pct(report['miou']['delta'], signed=True)} points ({word})" in page
    assert "mode scene: whole images generated from edited label maps" in page


def test_cli_reuses_a_given_baseline(env, first, tmp_path, capsys):
    baseline = str(first["out"] / "baseline")
    out = tmp_path / "again"
    assert main(["retrain", "--real", env["data"], "--synthetic", env["synthetic"], "--val", env["val"],
                 "--out", str(out), "--ratio", "0.25", "--baseline", baseline]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["runs"]["baseline"] == {**first["report"]["runs"]["baseline"], "trained_here": False}
    assert report["mix"]["steps"] == load_card(str(out / "augmented")).step == load_card(baseline).step
    assert report["recipe"]["batch_per_worker"] == 4 and not (out / "baseline").exists()
    printed = capsys.readouterr().out
    assert "report in" in printed and "Synthesis mode scene: mIoU" in printed
    assert main(["retrain", "--real", env["data"], "--synthetic", env["synthetic"], "--val", env["val"],
                 "--out", str(out), "--baseline", baseline]) == 2
    assert "not empty" in capsys.readouterr().err


def _cfg(env, tmp_path, **kw):
    base = {"real": env["data"], "synthetic": [env["synthetic"]], "val": env["val"], "out": str(tmp_path / "out")}
    return RetrainConfig(**{**base, **kw})


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_ratio_outside_zero_one_is_refused(env, tmp_path, ratio):
    with pytest.raises(MixError, match="strictly between 0 and 1"):
        retrain(_cfg(env, tmp_path, ratio=ratio))
    assert not (tmp_path / "out").exists()


def test_bad_mix_is_refused_before_training(env, first, tmp_path, capsys):
    other = make_dataset(tmp_path / "four", 8, size=(32, 32), num_classes=4)
    with pytest.raises(MixError, match=r"different classes \(only in --synthetic .*: sky, building"):
        check_mix(_cfg(env, tmp_path, real=other, val=other), 8)
    assert main(["retrain", "--real", other, "--synthetic", env["synthetic"], "--val", other,
                 "--out", str(tmp_path / "out"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "different classes" in err and "only in --real: class0" in err
    big = make_example_dataset(tmp_path / "big", n=8, size=(48, 48))
    with pytest.raises(MixError, match="differ in size .* pass --size"):
        retrain(_cfg(env, tmp_path, real=big, val=big))
    with pytest.raises(MixError, match="not the output of an augmentation job"):
        retrain(_cfg(env, tmp_path, synthetic=[env["val"]]))
    with pytest.raises(MixError, match="no real sample in a batch of 2"):
        retrain(_cfg(env, tmp_path, ratio=0.6, batch=2))
    assert not (tmp_path / "out").exists()


def test_unfitting_baseline_is_refused(env, first, tmp_path):
    _, wrong_size = make_tiny_runs(tmp_path / "s", env["data"], size=(16, 16))
    with pytest.raises(MixError, match="trained at 16x16, the mix trains at 32x32"):
        retrain(_cfg(env, tmp_path, baseline=wrong_size))
    _, wrong_classes = make_tiny_runs(tmp_path / "c", env["data"], classes=["a", "b", "c"])
    with pytest.raises(MixError, match="different classes"):
        retrain(_cfg(env, tmp_path, baseline=wrong_classes))
    baseline = str(first["out"] / "baseline")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(baseline, unfinished)
    card = json.loads((unfinished / "card.json").read_text())
    card["model_config"]["training"]["epochs"] = 3
    (unfinished / "card.json").write_text(json.dumps(card))
    with pytest.raises(MixError, match=r"unfinished \(epoch 1 of 3\)"):
        retrain(_cfg(env, tmp_path, baseline=str(unfinished)))
    with pytest.raises(MixError, match="--batch 8 does not fit .* trained with --batch 4"):
        retrain(_cfg(env, tmp_path, baseline=baseline, batch=8))
    with pytest.raises(MixError, match="--class-weights median-frequency does not fit .* --class-weights none"):
        retrain(_cfg(env, tmp_path, baseline=baseline, class_weights="median-frequency"))
    weighted = tmp_path / "weighted"
    shutil.copytree(baseline, weighted)
    card = json.loads((weighted / "card.json").read_text())
    card["model_config"]["training"]["class_weights"] = "median-frequency"
    (weighted / "card.json").write_text(json.dumps(card))
    card["reproducibility"]["deterministic"] = True
    (weighted / "card.json").write_text(json.dumps(card))
    cfg = _cfg(env, tmp_path, baseline=str(weighted))
    recipe = baseline_recipe(cfg, load_card(str(weighted)), check_mix(cfg, 4))
    assert recipe.class_weights == "median-frequency" and recipe.deterministic is True  # inherited
    with pytest.raises(MixError, match="--deterministic True does not fit .* trained with --deterministic False"):
        retrain(_cfg(env, tmp_path, baseline=baseline, deterministic=True))
    with pytest.raises(MixError, match="not trained on --real alone"):
        retrain(_cfg(env, tmp_path, baseline=str(first["out"] / "augmented")))
    assert not (tmp_path / "out").exists()
    assert SEGMENTER == load_card(baseline).model_config["name"]


def test_experiment_subset_and_summary(tmp_path):
    src = make_example_dataset(tmp_path / "train", n=20, size=(32, 32))
    a = exp.subset_dataset(src, str(tmp_path / "a"), 0.25, seed=3)
    b = exp.subset_dataset(src, str(tmp_path / "b"), 0.25, seed=3)
    ids = [open_dataset(p).arrow.to_table(columns=["id"]).column("id").to_pylist() for p in (a, b)]
    assert ids[0] == ids[1] and len(ids[0]) == 5
    info = open_dataset(a).info
    assert info.num_rows == 5 and info.lineage["subset_fraction"] == 0.25 and sum(info.class_pixels) > 0

    x = exp.Experiment(camvid="", out=str(tmp_path), fractions=[0.25], seeds=[0, 1], targets=["pole", "fence"])

    def iou(pole, fence):
        return {"pole": pole, "fence": fence, "sky": 0.9}

    cells = [exp._cell(0.25, 0, "a", {"miou": 0.40, "pixel_accuracy": 0.8, "iou": iou(0.1, 0.2)}, None, "r"),
             exp._cell(0.25, 1, "a", {"miou": 0.44, "pixel_accuracy": 0.8, "iou": iou(0.1, None)}, None, "r"),
             exp._cell(0.25, 0, "c", {"miou": 0.45, "pixel_accuracy": 0.8, "iou": iou(0.3, 0.2)}, 10, "r"),
             exp._cell(0.25, 1, "c", {"miou": 0.47, "pixel_accuracy": 0.8, "iou": iou(0.2, None)}, 12, "r")]
    summary = {r["setting"]: r for r in exp.summarize(x, cells)}
    c = summary["c"]
    assert c["miou"]["mean"] == pytest.approx(0.46) and c["miou"]["sd"] == pytest.approx(0.0141421, rel=1e-4)
    assert c["delta_miou"]["values"] == pytest.approx([0.05, 0.03]) and c["delta_miou"]["seeds"] == [0, 1]
    # mean 0.04, s.d. 0.0141421, t(0.975, 1) = 12.7062: 0.04 -+ 12.7062 * 0.0141421 / sqrt(2) = 0.04 -+ 0.127062
    assert (c["delta_miou"]["low"], c["delta_miou"]["high"]) == pytest.approx((-0.087062, 0.167062), abs=1e-6)
    assert c["delta_miou"]["within_noise"] is True
    assert c["delta_targeted"]["values"] == pytest.approx([0.1, 0.1])
    assert c["delta_targeted"]["low"] == pytest.approx(0.1) and c["delta_targeted"]["within_noise"] is False
    assert c["delta_iou"]["pole"]["values"] == pytest.approx([0.2, 0.1]) and c["delta_iou"]["fence"]["n"] == 1
    assert c["synthetic_rows"]["mean"] == 11 and summary["a"]["synthetic_rows"] is None
    assert summary["a"]["delta_miou"] is None
    page = exp.results_page(x, list(summary.values()), []).to_markdown()
    assert ("| 25% of train | val | (c) real + synthetic, filter | 46.00 ± 1.41 | +4.00 [-8.71, +16.71], within noise | "
            in page)
    assert "| mIoU | +5.00 | +3.00 | +4.00 | [-8.71, +16.71] | within noise |" in page
    assert "| fence | +0.00 | - | +0.00 | - | one seed: no interval |" in page


def test_experiment_control_arm_reports_agreement(tmp_path):
    x = exp.Experiment(camvid="", out=str(tmp_path / "x"), fractions=[0.25], seeds=[0, 1], targets=["pole"])
    data = make_example_dataset(x.val_data, n=4, size=(32, 32))
    folder = tmp_path / "x" / "f25" / "seed0"
    for name, seed in (("real", 0), (exp.CONTROL_RUN, 0), ("other", 1)):
        shutil.copytree(make_tiny_runs(tmp_path / name, data, seed=seed)[1], folder / name)
    cells = exp.collect(x)
    assert [(c["seed"], c["setting"]) for c in cells] == [(0, "a")]
    (control,) = exp.control_agreement(x, cells)
    assert control["weights_identical"] and control["metrics_identical"] and control["max_abs_difference"] == 0
    page = exp.results_page(x, exp.summarize(x, cells), [], [control]).to_markdown()
    assert "seed 0: `" in page and "have identical weights" in page and "every class's IoU 0.00 points" in page
    shutil.rmtree(folder / exp.CONTROL_RUN)
    shutil.copytree(folder / "other", folder / exp.CONTROL_RUN)
    (control,) = exp.control_agreement(x, cells)
    assert not control["weights_identical"]


def test_experiment_report_describes_the_settings_the_runs_used(tmp_path):
    ran = exp.Experiment(camvid="c", out=str(tmp_path), size=(64, 96), seg_steps=60, gan_steps=40, per_class=8)
    exp.record_settings(ran)
    report_only = exp.Experiment(camvid="c", out=str(tmp_path), seeds=[0])
    described = exp.recorded_settings(report_only)
    assert (described.seg_steps, described.gan_steps, described.per_class, described.size) == (60, 40, 8, (64, 96))
    assert described.seeds == [0]
    with pytest.raises(exp.AugmentError, match="seg_steps 60 -> 3000"):
        exp.record_settings(exp.Experiment(camvid="c", out=str(tmp_path)))
    # a setting added after the stages ran reads as its default, which they ran with
    settings = tmp_path / exp.SETTINGS_FILE
    older = json.loads(settings.read_text())
    del older["crop_guide"]
    settings.write_text(json.dumps(older))
    exp.record_settings(ran)
    assert exp.recorded_settings(report_only).crop_guide is False
    with pytest.raises(exp.AugmentError, match="crop_guide False -> True"):
        exp.record_settings(exp.Experiment(**{**ran.__dict__, "crop_guide": True}))


def test_experiment_job_documents_are_valid_jobs_per_arm(tmp_path):
    from augment.runner.jobfile import job_from_document

    x = exp.Experiment(camvid="", out=str(tmp_path), fractions=[0.25], seeds=[0], targets=["pole", "fence"],
                       train_match="^(0006R0|0016E5)_", heldout_match="^0001TP_")
    docs = exp.job_documents(x, 0.25, 0)
    assert sorted(docs) == ["filter", "ignore", "insert", "insert-rule", "nofilter", "paste"]
    modes = {name: job_from_document(doc).synthesis.mode for name, doc in docs.items()}
    assert modes == {"nofilter": "scene", "filter": "scene", "ignore": "scene", "paste": "paste", "insert": "insert",
                     "insert-rule": "insert"}
    assert "generator" not in docs["paste"] and docs["insert"]["generator"].endswith("f25/cropgan")
    assert job_from_document(docs["insert-rule"]).region_filter.pixel_rule
    assert x.eval_data() == {"val": x.val_data, "heldout": x.heldout_data}
    assert x.train_data(1.0) == x.pool_data and x.pool_data.endswith("data/train-pool")
    src = make_example_dataset(tmp_path / "pool", n=8, size=(32, 32))
    drawn = exp.subset_dataset(src, str(tmp_path / "sub"), 0.25, seed=0, of_rows=20)  # 25% of 20, from 8 rows
    assert open_dataset(drawn).info.num_rows == 5 and open_dataset(drawn).info.lineage["drawn_from_rows"] == 8
    with pytest.raises(exp.AugmentError, match="holds only 8"):
        exp.subset_dataset(src, str(tmp_path / "sub2"), 0.5, seed=0, of_rows=20)
    only = exp.Experiment(camvid="", out=str(tmp_path), arms=["a", "e"])
    assert sorted(exp.job_documents(only, 0.25, 0)) == ["paste"] and not only.uses(exp.INSERT_ARMS)


def test_augmented_run_starts_as_the_baseline_started(env, tmp_path):
    import torch
    import torchvision

    from augment.core.errors import AugmentError
    from augment.training.segmenter import SegTrainConfig, train_segmenter

    torch.manual_seed(1)
    path = tmp_path / "backbone.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), path)
    baseline = str(tmp_path / "baseline")
    train_segmenter(SegTrainConfig(data=[env["data"]], out=baseline, epochs=1, batch=4, log_every=100,
                                   weights_backbone=str(path)))
    start = load_card(baseline).model_config["init"]
    assert start["kind"] == "file" and start["source"] == str(path)
    with pytest.raises(MixError, match=r"--weights-backbone none does not fit --baseline .*, trained with "
                                       r"--weights-backbone .*backbone.pth"):
        retrain(_cfg(env, tmp_path, baseline=baseline, weights_backbone="none"))
    report = retrain(_cfg(env, tmp_path, baseline=baseline, ratio=0.5))
    assert load_card(str(tmp_path / "out" / "augmented")).model_config["init"] == start
    assert report["recipe"]["init"] == start
    assert "starting from the backbone file " + str(path) in (tmp_path / "out" / "report.md").read_text()

    torch.save({k: v + 1 for k, v in torch.load(path).items()}, path)  # the file changed since the baseline
    with pytest.raises(AugmentError, match=r"the initialisation file .*backbone.pth \(sha256 \w+\) is not the one "
                                           r"asked for \(sha256 " + start["sha256"][:12]):
        retrain(_cfg(env, tmp_path, baseline=baseline, ratio=0.5, out=str(tmp_path / "out2")))


def test_verdict_names_the_mode_and_calls_a_loss_a_loss():
    job = {"version": 2, "synthesis": {"mode": "insert"}}
    report = {"miou": {"delta": -0.0168}, "targeted": {"mean_delta": 0.004},
              "lineage": {"synthetic": [{"job": job}, {"synthesis_mode": "paste"}, {"job": {"version": 1}}]}}
    assert synthesis_modes(report) == ["insert", "paste", "scene"]
    said = verdict(report)
    assert said.startswith("Synthesis mode insert + paste + scene: mIoU -1.68 points (a loss), targeted classes' "
                           "mean IoU +0.40 points (a gain). One seed")
    report["targeted"]["mean_delta"] = None
    assert "targeted classes' mean IoU not measurable" in verdict(report)
    report["miou"]["delta"] = 0.00004
    assert "mIoU +0.00 points (no change)" in verdict(report)
