"""Fault injection for paths, bounds, resources and checkpoints (issue #12, items 4 and 5), CI-sized.

Every command resolves its path options on the driver, so runs started from another folder land where they were
asked to; a plan beyond MAX_PLAN_SAMPLES and workers no node can hold are refused up front; every broken checkpoint
or card is one line on stderr and exit 2 through the CLI.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from augment.cli import build_parser, main
from augment.data.dataset import open_dataset, read_info
from augment.core.errors import AugmentError
from augment.pipelines.retrain import MixError, RetrainConfig, _prepare_out
from augment.core import cluster
from augment.core.cluster import JOB_RESOURCE_NAMES, check_placeable
from augment.runner.jobfile import job_from_document
from augment.synthesis.plan import MAX_PLAN_SAMPLES, balance_quotas, make_plan
from augment.models.store import CARD_FILE, METRICS_FILE, STATE_FILE, WEIGHTS_FILE, load_card
from helpers import make_dataset
from job_helpers import make_tiny_runs, write_job

SIZE = (32, 32)
ACCEPT_ALL = {"min_miou": 0.0, "min_target_iou": 0.0}
SMALL = {"workers": 1, "batch_size": 4, "samples_per_shard": 4}


def one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI, expect exit 2 with exactly one stderr line holding every fragment; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def runs(tmp_path):
    """A tiny dataset and untrained GAN / segmenter runs that fit it (no Ray)."""
    data = make_dataset(tmp_path / "data", 8, SIZE, num_classes=3)
    gan, seg = make_tiny_runs(tmp_path, data)
    return tmp_path, data, gan, seg


# --- 1. paths resolved on the driver -----------------------------------------------------------------------------


def test_every_path_option_is_made_absolute_and_uris_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    parse = build_parser().parse_args
    uri = "s3://bucket/prefix?endpoint_override=localhost:9000&scheme=http"
    cases = {
        ("ingest", "src", "--format", "folder", "--out", "o"): {"src": "src", "out": "o"},
        ("example-data", "ex"): {"out": "ex"},
        ("info", "d/x"): {"dataset": "d/x"},
        ("train-gan", "--data", "d", "--out", "runs/../g"): {"data": "d", "out": "g"},
        ("train-seg", "--data", f"a, {uri},b", "--val", "v", "--out", "runs/seg"):
            {"data": ["a", uri, "b"], "val": "v", "out": "runs/seg"},
        ("evaluate", "--model", "m", "--data", "d", "--json", "x.json"): {"model": "m", "data": "d", "json": "x.json"},
        ("run", "jobs/j.yaml"): {"job": "jobs/j.yaml"},
        ("retrain", "--real", "r", "--synthetic", "s1,s2", "--val", uri, "--out", "o", "--baseline", "b"):
            {"real": "r", "synthetic": ["s1", "s2"], "val": uri, "out": "o", "baseline": "b"},
        ("demo",): {"out": "demo-out"},
    }
    for argv, expected in cases.items():
        args = parse(list(argv))
        for key, value in expected.items():
            want = [v if "://" in v else os.path.join(here, v) for v in value] if isinstance(value, list) else (
                value if "://" in value else os.path.join(here, value))
            assert getattr(args, key) == want, (argv, key)
    assert parse(["info", "~/d"]).dataset == os.path.expanduser("~/d")
    assert parse(["train-seg", "--data", "d", "--out", "o"]).val is None
    with pytest.raises(SystemExit):
        parse(["example-data", ""])  # an empty path is no folder: refused before anything runs


def test_job_file_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = {"data": "../data", "generator": "runs/gan", "segmenter": "/abs/seg", "output": "s3://b/out",
           "classes": {"a": 1}}
    job = job_from_document(doc, "jobs/j.yaml", base_dir="jobs")
    assert (job.data, job.generator) == (str(tmp_path / "data"), str(tmp_path / "jobs/runs/gan"))
    assert (job.segmenter, job.output) == ("/abs/seg", "s3://b/out")
    assert job_from_document(doc, "<job>").generator == str(tmp_path / "runs/gan")  # default: the current folder
    with pytest.raises(AugmentError, match="data '../data' is a relative path, but a job file read from a URI"):
        job_from_document(doc, "s3://b/j.yaml", base_dir=None)


@pytest.mark.slow
def test_run_and_evaluate_with_relative_paths_from_another_folder(runs, monkeypatch, ray_session):
    # The trainers and retrain with relative paths from a fresh folder: tests/test_readme_example.py runs them so.
    root, data, gan, seg = runs
    make_dataset(root / "val", 4, SIZE, num_classes=3, seed=1)
    (root / "jobs").mkdir()
    write_job(root / "jobs/job.yaml", data="../data", generator="../gan-run", segmenter="../seg-run",
              output="../synth", classes={"class1": 4}, filter=ACCEPT_ALL, sheets=0, resources=SMALL)
    monkeypatch.chdir(root)
    assert main(["run", "jobs/job.yaml"]) == 0
    assert read_info(str(root / "synth")).num_rows == 4
    assert main(["evaluate", "--model", "seg-run", "--data", "val", "--json", "m.json"]) == 0
    assert json.loads((root / "m.json").read_text())["data"] == str(root / "val")
    assert main(["info", "synth"]) == 0


# --- 2. plan size bound --------------------------------------------------------------------------------------------


def test_plan_beyond_the_bound_is_refused_naming_the_key(runs, capsys):
    root, data, gan, seg = runs
    ds = open_dataset(data)
    with pytest.raises(AugmentError, match=f"classes.class1: quota {10**12} is more than the {MAX_PLAN_SAMPLES}"):
        make_plan(ds, {"class1": 10**12}, None, 0)
    half = MAX_PLAN_SAMPLES // 2 + 1
    with pytest.raises(AugmentError, match=f"classes: the quotas add up to {2 * half} samples"):
        make_plan(ds, {"class1": half, "class2": half}, None, 0)
    with pytest.raises(AugmentError, match="balance.total: "):
        balance_quotas([10, 20], MAX_PLAN_SAMPLES + 1)
    job = write_job(root / "job.yaml", data=data, generator=gan, segmenter=seg, output=str(root / "out"),
                    classes={"class1": 10**12}, resources=SMALL)
    one_line_error(capsys, ["run", str(job)], "classes.class1: quota 1000000000000")
    assert not (root / "out").exists()  # refused before the output is claimed


def test_plan_bound_keeps_the_driver_plan_small(runs):
    """Ten million samples at most: the plan is held whole in the driver and in plan.json, so 10^8 is too many."""
    root, data, gan, seg = runs
    assert MAX_PLAN_SAMPLES == 10**7
    with pytest.raises(AugmentError, match=f"balance.total: {2 * 10**7} is more than the 10000000 samples"):
        balance_quotas([10, 20], 2 * 10**7)  # quotas only: refused before any sample is planned
    with pytest.raises(AugmentError, match=f"classes.class1: quota {5 * 10**7} is more than the 10000000"):
        make_plan(open_dataset(data), {"class1": 5 * 10**7}, None, 0)
    assert sum(balance_quotas([10, 20], MAX_PLAN_SAMPLES).values()) == MAX_PLAN_SAMPLES


def test_balance_total_beyond_the_bound_is_refused_through_the_cli(runs, capsys):
    root, data, gan, seg = runs
    job = write_job(root / "job.yaml", data=data, generator=gan, segmenter=seg, output=str(root / "out"),
                    balance={"total": 10**12}, resources=SMALL)
    one_line_error(capsys, ["run", str(job)], "balance.total: 1000000000000 is more than")


# --- 3. resources no node can provide -----------------------------------------------------------------------------


def test_job_worker_bigger_than_any_node_is_refused_on_a_local_instance(runs, capsys, ray_session):
    import ray

    root, data, gan, seg = runs
    cpus = ray.cluster_resources()["CPU"]
    job = write_job(root / "job.yaml", data=data, generator=gan, segmenter=seg, output=str(root / "out"),
                    classes={"class1": 4}, filter=ACCEPT_ALL, sheets=0,
                    resources={**SMALL, "cpus_per_worker": 1000})
    one_line_error(capsys, ["run", str(job)], "resources.cpus_per_worker 1000", f"{cpus:g} CPU")


def test_local_refusals_name_the_key_and_what_the_node_has(ray_session):
    import ray

    cpus = ray.cluster_resources()["CPU"]
    with pytest.raises(AugmentError, match=r"resources.gpus_per_worker 1000: no node of this local Ray instance"):
        check_placeable({"CPU": 1, "GPU": 1000}, 1, JOB_RESOURCE_NAMES, local=True)
    with pytest.raises(AugmentError, match=f"resources.workers {int(cpus) + 1}: the workers need {int(cpus) + 1} CPU"):
        check_placeable({"CPU": 1, "GPU": 0}, int(cpus) + 1, JOB_RESOURCE_NAMES, local=True)
    check_placeable({"CPU": 1, "GPU": 0}, int(cpus), JOB_RESOURCE_NAMES, local=True)  # fits: no error


def test_cluster_refuses_only_when_the_autoscaler_node_types_are_visible(ray_session, monkeypatch, capsys):
    need = {"CPU": 1, "GPU": 1000}  # more GPUs than any machine running this has
    monkeypatch.setattr(cluster, "autoscaler_node_types", lambda: None)
    check_placeable(need, 1, JOB_RESOURCE_NAMES, local=False)
    assert "not visible from here" in capsys.readouterr().err
    monkeypatch.setattr(cluster, "autoscaler_node_types", lambda: [{"CPU": 8.0}])
    with pytest.raises(AugmentError, match="resources.gpus_per_worker 1000: no node of the cluster, and no node type"):
        check_placeable(need, 1, JOB_RESOURCE_NAMES, local=False)
    monkeypatch.setattr(cluster, "autoscaler_node_types", lambda: [{"CPU": 8.0}, {"CPU": 4.0, "GPU": 1000.0}])
    check_placeable(need, 1, JOB_RESOURCE_NAMES, local=False)  # a GPU node type can be added: it waits for it


def test_trainer_gpus_on_a_cpu_only_local_instance_are_refused(tmp_path, capsys, ray_session):
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("the local instance has a GPU")
    data = make_dataset(tmp_path / "data", 8, SIZE, num_classes=3)
    one_line_error(capsys, ["train-seg", "--data", data, "--out", str(tmp_path / "run"), "--epochs", "1",
                            "--gpus-per-worker", "1"], "--gpus-per-worker 1: no node", "0 GPU")
    assert not (tmp_path / "run" / CARD_FILE).exists()


# --- 4. checkpoint and card errors: one line, exit 2 ----------------------------------------------------------------


class _Exploit:
    """A pickle that runs a command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def resume_seg(data: str, seg: str) -> list[str]:
    return ["train-seg", "--data", data, "--out", seg, "--epochs", "2", "--batch", "4", "--resume"]


def test_malicious_train_state_on_resume_is_one_line_and_runs_nothing(runs, capsys):
    root, data, gan, seg = runs
    marker = root / "pwned"
    (Path(seg) / STATE_FILE).write_bytes(pickle.dumps({"epoch": _Exploit(marker)}, protocol=2))
    one_line_error(capsys, resume_seg(data, seg), f"{STATE_FILE}: not a training state augment can load")
    assert not marker.exists()


def test_garbage_or_incomplete_train_state_on_resume_is_one_line(runs, capsys):
    root, data, gan, seg = runs
    state = Path(seg) / STATE_FILE
    state.write_bytes(os.urandom(256))
    one_line_error(capsys, resume_seg(data, seg), "not a training state augment can load")
    torch.save([1, 2, 3], state)
    one_line_error(capsys, resume_seg(data, seg), "a training state must be a mapping, got list")
    torch.save({"epoch": 1, "step": 3}, state)
    one_line_error(capsys, resume_seg(data, seg), "training state lacks key(s) optimizer, scheduler")
    torch.save({"epoch": "one", "step": 3, "optimizer": {}, "scheduler": {}}, state)
    one_line_error(capsys, resume_seg(data, seg), "'epoch' must be an integer >= 0")


@pytest.mark.parametrize("content, expected", [
    (b"[1, 2]", "a model card must be a JSON object, got list"),
    (b"", "unreadable model card"),
    (b'{"kind": "segmenter", "classes": ["a"', "unreadable model card"),
    (b"\xff\xfe\x00garbage", "unreadable model card"),
    (b'{"kind": "segmenter"}', "model card lacks key(s) classes, palette, ignore_index, size, model_config"),
    (b'{"kind": "segmenter", "classes": "abc", "palette": [], "ignore_index": 255, "size": [32, 32], '
     b'"model_config": {}}', "model card key 'classes' must be list, got str"),
    (b'{"kind": "segmenter", "classes": ["a"], "palette": [], "ignore_index": 255, "size": [32], '
     b'"model_config": {}}', "model card size must be [height, width]"),
])
def test_broken_card_is_one_line(runs, capsys, content, expected):
    root, data, gan, seg = runs
    (Path(seg) / CARD_FILE).write_bytes(content)
    one_line_error(capsys, ["evaluate", "--model", seg, "--data", data], f"{CARD_FILE}: ", expected)


def test_card_that_is_unreadable_is_never_trained_over(runs, capsys):
    root, data, gan, seg = runs
    (Path(seg) / CARD_FILE).write_bytes(b"[]")
    before = (Path(seg) / WEIGHTS_FILE).read_bytes()
    one_line_error(capsys, ["train-seg", "--data", data, "--out", seg, "--epochs", "1", "--batch", "4"],
                   "a model card must be a JSON object")
    assert (Path(seg) / WEIGHTS_FILE).read_bytes() == before


def test_truncated_empty_or_forged_safetensors_is_one_line(runs, capsys):
    import hashlib

    root, data, gan, seg = runs
    weights = Path(seg) / WEIGHTS_FILE
    blob = weights.read_bytes()
    argv = ["evaluate", "--model", seg, "--data", data]
    weights.write_bytes(blob[: len(blob) // 2])
    one_line_error(capsys, argv, "sha256", "does not match card")
    weights.write_bytes(b"")
    one_line_error(capsys, argv, "sha256", "does not match card")
    garbage = b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"  # a safetensors header length, then no header
    weights.write_bytes(garbage)
    card = json.loads((Path(seg) / CARD_FILE).read_text())
    card["weights_sha256"] = hashlib.sha256(garbage).hexdigest()  # the card forged to match
    (Path(seg) / CARD_FILE).write_text(json.dumps(card))
    one_line_error(capsys, argv, f"{WEIGHTS_FILE}: not a safetensors file")


def test_weights_with_missing_keys_are_one_line(runs, capsys):
    from safetensors.torch import load_file

    from augment.models.store import save_checkpoint

    root, data, gan, seg = runs
    for run, key in ((seg, "backbone"), (gan, "generator.")):
        weights = load_file(str(Path(run) / WEIGHTS_FILE))
        dropped = sorted(k for k in weights if k.startswith(key))[0]
        del weights[dropped]
        save_checkpoint(run, weights, load_card(run))
    one_line_error(capsys, ["evaluate", "--model", seg, "--data", data], "weights do not fit", "1 missing")
    job = write_job(root / "job.yaml", data=data, generator=gan, segmenter=seg, output=str(root / "out"),
                    classes={"class1": 4}, resources=SMALL)
    one_line_error(capsys, ["run", str(job)], "generator: weights do not fit its model_config", "1 missing")


GOOD_GAN = {"num_classes": 3, "size": [32, 32], "z_dim": 8, "g_width": 8, "spade_hidden": 16}


@pytest.mark.parametrize("change, expected", [
    ({"z_dim": "eight"}, "model_config.z_dim must be an integer >= 1, got 'eight'"),
    ({"z_dim": 8.0}, "model_config.z_dim must be an integer >= 1, got 8.0"),
    ({"num_classes": True}, "model_config.num_classes must be an integer >= 1, got True"),
    ({"g_width": 0}, "model_config.g_width must be an integer >= 1 or null, got 0"),
    ({"d_depth": 1}, "model_config.d_depth must be an integer >= 2 or null, got 1"),
    ({"size": [32]}, "model_config.size must be [height, width], integers >= 16, got [32]"),
    ({"size": "32x32"}, "model_config.size must be [height, width], integers >= 16, got '32x32'"),
    ({"size": [8, 32]}, "model_config.size must be [height, width], integers >= 16, got [8, 32]"),
    ({"g_norm": "layer"}, "model_config.g_norm must be 'batch' or 'instance', got 'layer'"),
    ({"ignore_index": 256}, "model_config.ignore_index must be an integer in 0..255 or null, got 256"),
    ({"use_l1": "yes"}, "model_config.use_l1 must be true or false, got 'yes'"),
    ({"lambda_fm": -1}, "model_config.lambda_fm must be a number >= 0, got -1"),
    ({"lr_g": 0}, "model_config.lr_g must be a number > 0, got 0"),
    ({"ema_decay": float("nan")}, "model_config.ema_decay must be a number in [0, 1], got nan"),
    ({"betas": [0.5, 1.0]}, "model_config.betas must be [beta1, beta2], numbers in [0, 1), got [0.5, 1.0]"),
    ({"lr": 1.0}, "model_config: unknown GANConfig keys: ['lr']"),
    ({"num_classes": None}, "model_config.num_classes must be an integer >= 1, got None"),
])
def test_gan_config_from_a_card_checks_every_field(change, expected):
    from augment.models.gan import GANConfig, GANConfigError

    with pytest.raises(GANConfigError) as caught:
        GANConfig.from_dict({**GOOD_GAN, **change})
    assert str(caught.value) == expected


def test_gan_config_from_a_card_accepts_what_to_dict_writes_and_names_missing_keys():
    import dataclasses

    from augment.models.gan import _FIELD_CHECKS, GANConfig, GANConfigError
    from augment.models.store import CheckpointError

    assert set(_FIELD_CHECKS) == {f.name for f in dataclasses.fields(GANConfig)}  # every field is checked
    cfg = GANConfig(**{**GOOD_GAN, "size": (32, 48)}, noise_stages=None, ignore_index=None, use_l1=True)
    assert GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(CheckpointError, match="card.json model_config lacks key\\(s\\) size"):
        GANConfig.from_dict({"num_classes": 3}, source="card.json model_config")
    with pytest.raises(GANConfigError, match="model_config must be a JSON object, got list"):
        GANConfig.from_dict([1, 2])


def test_gan_card_with_a_mistyped_field_is_one_line_for_run(runs, capsys):
    root, data, gan, seg = runs
    card = json.loads((Path(gan) / CARD_FILE).read_text())
    card["model_config"]["z_dim"] = "eight"
    (Path(gan) / CARD_FILE).write_text(json.dumps(card))
    job = write_job(root / "job.yaml", data=data, generator=gan, segmenter=seg, output=str(root / "out"),
                    classes={"class1": 4}, resources=SMALL)
    one_line_error(capsys, ["run", str(job)], f"{gan}: card.json model_config is not a GAN config",
                   "model_config.z_dim must be an integer >= 1, got 'eight'")
    assert not (root / "out").exists()


# --- 5. a failed retrain leaves no folder that demands --resume ---------------------------------------------------


def test_failed_retrain_leftovers_count_as_empty(tmp_path, capsys):
    out = tmp_path / "retrain"
    cfg = RetrainConfig(real="r", synthetic=["s"], out=str(out))
    leftover = out / "baseline" / "ray" / "train-1" / "state.json"  # Ray Train's state of a run that died
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{}")
    _prepare_out(cfg)
    assert "holds no finished epoch" in capsys.readouterr().out
    for finished in (out / "baseline" / METRICS_FILE, out / "augmented" / CARD_FILE, out / "notes.txt"):
        finished.parent.mkdir(parents=True, exist_ok=True)
        finished.write_text("x")
        with pytest.raises(MixError, match="is not empty"):
            _prepare_out(cfg)
        _prepare_out(RetrainConfig(real="r", synthetic=["s"], out=str(out), resume=True))
        finished.unlink()
