"""train-seg --weights-backbone {none,imagenet,PATH} and --init RUN, offline: state dicts the tests save themselves."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torchvision

from augment.cli import main
from augment.core.errors import AugmentError, CheckpointError
from augment.models.pretrained import fit_backbone, hub_cache_file, imagenet_weights, resolve_init
from augment.models.store import load_card, load_weights
from augment.training.segmenter import SegTrainConfig, train_segmenter
from helpers import make_dataset

MODEL = "lraspp_mobilenet_v3_large"
FROZEN_LR = 1e-30
"""An lr whose updates vanish below float32 precision: the weights after a few steps are the weights at step 0."""


def classifier_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A torchvision mobilenet_v3_large classification model's whole state dict, randomly initialised."""
    torch.manual_seed(seed)
    return torchvision.models.mobilenet_v3_large(weights=None).state_dict()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("init") / "d", 8, (32, 32), num_classes=3)


def _train(data, out, **kw):
    defaults = {"epochs": 1, "batch": 4, "lr": FROZEN_LR, "log_every": 100}
    return train_segmenter(SegTrainConfig(data=[data], out=str(out), **{**defaults, **kw}))


def test_backbone_from_a_classification_state_dict_file(tmp_path, data, ray_session):
    state = classifier_state()
    path = tmp_path / "mobilenet.pth"
    torch.save(state, path)
    card = _train(data, tmp_path / "run", weights_backbone=str(path))
    weights = load_weights(str(tmp_path / "run"))
    assert card.step == 2
    assert torch.equal(weights["backbone.0.0.weight"], state["features.0.0.weight"])  # the first conv, at step 0
    assert torch.equal(weights["backbone.16.0.weight"], state["features.16.0.weight"])
    init = card.model_config["init"]
    assert init["kind"] == "file" and init["source"] == str(path)
    assert init["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert init["keys_ignored"] == sum(1 for k in state if k.startswith("classifier."))
    assert init["keys_loaded"] == sum(1 for k in state if k.startswith("features."))

    scratch = _train(data, tmp_path / "scratch")  # same seed, no file: other first-layer weights
    assert scratch.model_config["init"] == {"kind": "none"}
    assert not torch.equal(load_weights(str(tmp_path / "scratch"))["backbone.0.0.weight"], state["features.0.0.weight"])

    with pytest.raises(CheckpointError, match=r"started file .*mobilenet.pth .*, not from scratch"):
        _train(data, tmp_path / "run", epochs=2, resume=True)  # a resume must start as the run did


def test_backbone_file_forms_and_misfits(tmp_path):
    state = classifier_state()
    backbone_only = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    nested = {"model": state, "epoch": 3}
    for form in (backbone_only, nested):
        fitted, _ = fit_backbone(form if form is backbone_only else nested["model"], MODEL, "x")
        assert torch.equal(fitted["0.0.weight"], state["features.0.0.weight"])
    path = tmp_path / "nested.pth"
    torch.save(nested, path)
    assert resolve_init(MODEL, ["a", "b"], str(path)).record.details["keys_loaded"] == len(backbone_only)

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(CheckpointError, match=r"x: does not fit the mobilenet_v3_large backbone of "
                                              r"lraspp_mobilenet_v3_large: keys \d+ missing \(0\.0\.weight, "):
        fit_backbone(resnet, MODEL, "x")
    bad = dict(state)
    bad["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"1 of another shape \(0\.0\.weight \(8, 3, 3, 3\) \(needs \(16, 3, 3, 3\)\)"):
        fit_backbone(bad, MODEL, "x")
    extra = dict(state)
    extra["features.16.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 unexpected \(16\.9\.weight\)"):
        fit_backbone(extra, MODEL, "x")

    torch.manual_seed(0)
    fitted, ignored = fit_backbone(torchvision.models.resnet50(weights=None).state_dict(), "deeplabv3_resnet50", "r")
    assert "layer4.2.conv3.weight" in fitted and ignored == 2  # fc.weight, fc.bias

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"junk.pth: not a state dict augment can load"):
        resolve_init(MODEL, ["a"], str(junk))
    with pytest.raises(AugmentError, match=r"nowhere.pth: no such file"):
        resolve_init(MODEL, ["a"], str(tmp_path / "nowhere.pth"))


def test_imagenet_offline_is_one_line_naming_the_file(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # refused at once, whatever the network
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    code = main(["train-seg", "--data", data, "--out", str(tmp_path / "run"), "--weights-backbone", "imagenet"])
    err = capsys.readouterr().err.strip().splitlines()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert code == 2 and len(err) == 1, err
    assert "mobilenet_v3_large-8738ca79.pth is not in " + str(folder) in err[0]
    assert "fetch https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth into that folder" in err[0]
    assert not (tmp_path / "run").exists()


def test_imagenet_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = imagenet_weights(MODEL)
    cached = hub_cache_file(weights.url)
    assert cached == str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth")
    os.makedirs(os.path.dirname(cached))
    state = classifier_state(3)
    torch.save(state, cached)
    init = resolve_init(MODEL, ["a", "b"], "imagenet")
    assert init.record.kind == "imagenet" and init.record.source == "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    assert init.record.sha256 == hashlib.sha256(open(cached, "rb").read()).hexdigest()
    assert init.target == "backbone" and torch.equal(init.state["0.0.weight"], state["features.0.0.weight"])


def test_init_from_another_run(tmp_path, data, ray_session):
    source = _train(data, tmp_path / "source", lr=None)  # trained a little: weights off their initial values
    card = _train(data, tmp_path / "run", init=str(tmp_path / "source"), seed=5)
    before, after = load_weights(str(tmp_path / "source")), load_weights(str(tmp_path / "run"))
    assert torch.equal(after["backbone.0.0.weight"], before["backbone.0.0.weight"])
    assert torch.equal(after["classifier.low_classifier.weight"], before["classifier.low_classifier.weight"])
    assert card.step == 2  # a new run from step 0, not a resume
    assert card.model_config["init"] == {"kind": "run", "source": str(tmp_path / "source"),
                                         "sha256": source.weights_sha256, "step": source.step}

    other = make_dataset(tmp_path / "other", 8, (32, 32), classes=["x", "y", "z"], num_classes=3)
    with pytest.raises(CheckpointError, match=r"--init .*source: its 3 classes are not this data's 3 \(classes only in "
                                              r"one: class0, class1, class2, x, y\)"):
        _train(other, tmp_path / "r2", init=str(tmp_path / "source"))
    with pytest.raises(CheckpointError, match=r"its model is lraspp_mobilenet_v3_large, this run trains "
                                              r"deeplabv3_mobilenet_v3_large"):
        _train(data, tmp_path / "r3", init=str(tmp_path / "source"), model="deeplabv3_mobilenet_v3_large")
    with pytest.raises(AugmentError, match="give --init RUN or --weights-backbone, not both"):
        _train(data, tmp_path / "r4", init=str(tmp_path / "source"), weights_backbone="imagenet")
    for run in ("r2", "r3", "r4"):
        assert not (tmp_path / run).exists()
    assert load_card(str(tmp_path / "source")).weights_sha256 == source.weights_sha256
