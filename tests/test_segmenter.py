import json
import time

import numpy as np
import pytest
import torch

from augment.cli import main
from augment.data.dataset import open_dataset
from augment.core.errors import AugmentError, DatasetError
from augment.models.segmenter import SEGMENTERS, build_segmenter, predict_logits, segmenter_config
from augment.models.store import load_segmenter
from augment.training import distributed as dist_utils
from augment.models.store import CheckpointError, ModelCard, save_checkpoint
from augment.training.data import (
    BatchMixer,
    batch_shares,
    common_size,
    iter_eval_batches,
    open_sources,
    steps_per_epoch,
    training_stream,
)
from augment.training.evaluate import evaluate_segmenter
from augment.training.segmenter import (
    SegTrainConfig,
    class_weights,
    make_optimizer, poly_schedule,
    train_segmenter,
    train_step,
)
from augment.training.transforms import CoverCrop, apply_joint, normalize, train_transform
from helpers import PALETTE, make_dataset

MODEL = "lraspp_mobilenet_v3_large"


def save_fake_run(run, classes, size=(32, 32), model=MODEL, train=False):
    """A segmenter checkpoint written directly (no training run)."""
    net = build_segmenter(model, len(classes))
    if train:  # move BatchNorm statistics off their initial values
        net.train()
        net(torch.randn(2, 3, *size))
    card = ModelCard(kind="segmenter", classes=list(classes), palette=PALETTE[: len(classes)], ignore_index=255,
                     size=list(size), model_config=segmenter_config(model, len(classes)))
    save_checkpoint(str(run), net.state_dict(), card, {"epoch": 1, "step": 3, "optimizer": {}, "scheduler": {}})
    return net


def test_unknown_model_refused(tmp_path, capsys):
    with pytest.raises(AugmentError, match=r"unknown segmenter 'unet'; choose one of lraspp_mobilenet_v3_large, "):
        build_segmenter("unet", 3)
    with pytest.raises(AugmentError, match="no auxiliary head"):
        build_segmenter(MODEL, 3, aux_loss=True)
    with pytest.raises(SystemExit) as exit_info:  # --model's choices: argparse refuses it, exit 2
        main(["train-seg", "--data", str(tmp_path / "x"), "--out", str(tmp_path / "run"), "--model", "unet"])
    assert exit_info.value.code == 2 and "--model: invalid choice: 'unet'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_predict_logits_at_input_size(name):
    assert name in SEGMENTERS
    model = build_segmenter(name, 5).eval()
    with torch.no_grad():
        logits = predict_logits(model, torch.randn(2, 3, 40, 56))
    assert logits.shape == (2, 5, 40, 56)


def test_checkpoint_round_trip_and_tamper(tmp_path):
    run = tmp_path / "run"
    net = save_fake_run(run, ["a", "b", "c"], train=True)
    model, card = load_segmenter(str(run))
    assert not model.training and card.model_config["name"] == MODEL
    expected, loaded = net.state_dict(), model.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert any("running_mean" in k and not torch.equal(v, torch.zeros_like(v)) for k, v in loaded.items())
    blob = bytearray((run / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_segmenter(str(run))
    card_json = json.loads((run / "card.json").read_text())
    card_json["kind"] = "generator"
    (run / "card.json").write_text(json.dumps(card_json))
    with pytest.raises(CheckpointError, match="not a segmenter"):
        load_segmenter(str(run))


def test_transforms_keep_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (24, 32), dtype=np.uint8)
    palette = np.array(PALETTE[:4], np.uint8)
    image = palette[mask]
    torch.manual_seed(0)
    for _ in range(6):  # scale 1: a crop of the whole image, maybe flipped; colours must still match classes
        img, msk = apply_joint(train_transform((24, 32), scale_range=(1.0, 1.0), color_jitter=None), image, mask)
        assert img.dtype == torch.uint8 and img.shape == (3, 24, 32) and msk.shape == (24, 32)
        assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(palette)[msk.long()])
    img, msk = apply_joint(train_transform((24, 32), scale_range=(0.5, 0.5)), image, mask)
    assert msk.shape == (24, 32) and (msk == 255).sum() == 24 * 32 - 12 * 16  # padded with ignore
    assert (img.sum(0)[msk == 255] == 0).all()
    for _ in range(6):  # no resize needed: random 24x16 crops (maybe flipped) stay aligned
        img, msk = apply_joint(CoverCrop((24, 16), hflip=0.5), image, mask)
        assert msk.shape == (24, 16) and torch.equal(img.permute(1, 2, 0), torch.from_numpy(palette)[msk.long()])
    img, msk = apply_joint(CoverCrop((24, 16), random=False), image, mask)
    assert torch.equal(msk, torch.from_numpy(mask[:, 8:24]))
    img, msk = apply_joint(CoverCrop((48, 48)), image, mask)  # upscaled to cover 48x48, no padding
    assert img.shape == (3, 48, 48) and msk.shape == (48, 48) and (msk != 255).all()
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), "tanh")
    assert torch.equal(x, torch.ones_like(x))


def test_batch_shares():
    assert batch_shares(8, [1.0], 0) == [8]
    counts = [batch_shares(8, [0.7, 0.3], s) for s in range(100)]
    assert all(sum(c) == 8 and c[1] in (2, 3) for c in counts)
    assert sum(c[1] for c in counts) == 240  # exactly 30% synthetic over time
    assert steps_per_epoch(21, 4) == 5 and steps_per_epoch(21, 4, [3, 1]) == 7


def test_data_refusals(tmp_path):
    a = make_dataset(tmp_path / "a", 4, (32, 32), num_classes=3)
    b = make_dataset(tmp_path / "b", 4, (32, 32), num_classes=4)
    c = make_dataset(tmp_path / "c", 4, (32, 48), num_classes=3, seed=1)
    with pytest.raises(DatasetError, match="must share one class list"):
        open_sources([a, b])
    with pytest.raises(DatasetError, match="--size"):
        common_size([open_dataset(a), open_dataset(c)])
    with pytest.raises(AugmentError, match="4 rows, too few for one batch of 4 on each of 2 worker"):
        train_segmenter(SegTrainConfig(data=[a], out=str(tmp_path / "r"), batch=4, workers=2))
    with pytest.raises(DatasetError, match="must share one class list"):
        train_segmenter(SegTrainConfig(data=[a], val=b, out=str(tmp_path / "r"), batch=2))


def test_resume_refuses_mismatched_run(tmp_path):
    data = make_dataset(tmp_path / "d", 8, (32, 32), num_classes=3)
    run = tmp_path / "run"
    save_fake_run(run, ["class0", "class1", "class2"], model="deeplabv3_mobilenet_v3_large")
    cfg = SegTrainConfig(data=[data], out=str(run), batch=2, epochs=2)
    with pytest.raises(AugmentError, match="already holds a training run; pass --resume"):
        train_segmenter(cfg)
    cfg.resume = True
    with pytest.raises(CheckpointError, match="model name 'deeplabv3_mobilenet_v3_large'"):
        train_segmenter(cfg)
    with pytest.raises(CheckpointError, match="trained at 32x32, not 16x16"):
        train_segmenter(SegTrainConfig(data=[data], out=str(run), batch=2, resume=True, size=(16, 16),
                                       model="deeplabv3_mobilenet_v3_large"))
    other = make_dataset(tmp_path / "o", 8, (32, 32), classes=["x", "y", "z"], num_classes=3)
    with pytest.raises(CheckpointError, match="trained on classes"):
        train_segmenter(SegTrainConfig(data=[other], out=str(run), batch=2, resume=True))


def test_median_frequency_class_weights():
    from augment.data.dataset import DatasetInfo

    info = DatasetInfo(classes=["a", "b", "c", "d"], palette=PALETTE[:4], class_pixels=[600, 300, 100, 0])
    assert class_weights(info, "none") is None
    assert class_weights(info, "median-frequency") == pytest.approx([0.5, 1.0, 3.0, 1.0])  # median share 0.3
    with pytest.raises(AugmentError, match="unknown class weighting 'inverse'"):
        class_weights(info, "inverse")
    with pytest.raises(AugmentError, match="class_pixels"):
        class_weights(DatasetInfo(classes=["a", "b"], palette=PALETTE[:2]), "median-frequency")


def test_weighted_loss_counts_rare_class_errors_more():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 1)
    images = torch.randn(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :2] = 1

    def loss(weight):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = poly_schedule(opt, 1)
        return train_step(lambda x: {"out": model(x)}, images, masks, opt, sched, 255, torch.device("cpu"), weight)

    plain, weighted = loss(None), loss(torch.tensor([1.0, 3.0]))
    logp = torch.log_softmax(model(images), 1)
    nll0 = -logp[:, 0][masks == 0].sum()
    nll1 = -logp[:, 1][masks == 1].sum()
    assert plain == pytest.approx(((nll0 + nll1) / masks.numel()).item(), rel=1e-5)
    assert weighted == pytest.approx(((nll0 + 3 * nll1) / (masks.eq(0).sum() + 3 * masks.eq(1).sum())).item(), rel=1e-5)


def test_loss_falls_on_learnable_data(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d", 32, (32, 32), num_classes=4))
    samples = [(s["image"], s["mask"]) for s in ds.iter_samples()]
    torch.manual_seed(0)
    model = build_segmenter(MODEL, 4).train()
    optimizer = make_optimizer(model.parameters(), "sgd", None, 1e-4)
    scheduler = poly_schedule(optimizer, 40)
    transform = train_transform((32, 32))
    losses = []
    for step in range(40):
        pairs = [apply_joint(transform, *samples[(step * 4 + k) % 32]) for k in range(4)]
        images = normalize(torch.stack([p[0] for p in pairs]))
        masks = torch.stack([p[1] for p in pairs]).long()
        losses.append(train_step(model, images, masks, optimizer, scheduler, 255, torch.device("cpu")))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])  # 0.35-0.49 over seeds 0-2; ~1 if not learning
    assert scheduler.get_last_lr()[0] == 0.0


def test_eval_iterator_shards_and_keeps_native_masks(tmp_path):
    ds = open_dataset(make_dataset(tmp_path / "d", 7, (32, 48), num_classes=3))
    seen = []
    for rank in range(2):
        for b in iter_eval_batches(ds, 3, (16, 24), rank=rank, world_size=2, read_rows=4):
            assert b.images.shape[1:] == (3, 16, 24) and b.masks.shape[1:] == (32, 48) and len(b.ids) <= 3
            seen += b.ids
    assert sorted(seen) == sorted(s["id"] for s in ds.iter_samples(columns=("id",)))


def test_worker_cpus_leave_room_for_data(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert dist_utils.worker_cpus(1, 0) == 1.0
    assert dist_utils.worker_cpus(2, 0) == 0.5
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 2.0})
    assert dist_utils.worker_cpus(2, 1) == 1.0 and dist_utils.resolve_gpus(None) == 1.0
    assert dist_utils._storage_path("s3://b/run?endpoint_override=x") == "s3://b/run/ray?endpoint_override=x"


def test_progress_line():
    lines = []

    class Sink:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    p = dist_utils.Progress(10, every_steps=5, every_seconds=1e9, prefix="[t]", stream=Sink())
    assert p.update(1, 8, epoch="1/2", loss=1.5) is None
    line = p.update(5, 8, epoch="1/2", loss=0.25)
    assert line.startswith("[t] epoch 1/2 step 5/10 loss 0.25 |") and "img/s | ETA" in line


def test_evaluate_cli_table_json_and_refusal(tmp_path, capsys):
    classes = ["class0", "class1", "class2"]
    run = tmp_path / "run"
    save_fake_run(run, classes, size=(16, 16))
    data = make_dataset(tmp_path / "d", 5, (32, 32), num_classes=3)
    out_json = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(run), "--data", data, "--json", str(out_json), "--batch", "2"]) == 0
    text = capsys.readouterr().out
    metrics = json.loads(out_json.read_text())
    assert set(metrics["iou"]) == set(classes) and metrics["pixels"] == 5 * (30 * 30)  # frame is ignore
    for name in classes:
        assert name in text
    assert "mIoU" in text and "pixel accuracy" in text
    other = make_dataset(tmp_path / "o", 3, (32, 32), num_classes=4)
    assert main(["evaluate", "--model", str(run), "--data", other]) == 2
    assert "was trained on classes ['class0', 'class1', 'class2'], but the dataset has" in capsys.readouterr().err


@pytest.mark.slow
def test_mixer_draws_fixed_shares(tmp_path, ray_session):
    a = open_dataset(make_dataset(tmp_path / "a", 8, (32, 32), num_classes=3, seed=1))
    b = open_dataset(make_dataset(tmp_path / "b", 3, (32, 32), num_classes=3, seed=2))
    a_masks = {s["mask"].tobytes() for s in a.iter_samples()}
    b_masks = {s["mask"].tobytes() for s in b.iter_samples()}
    mixer = BatchMixer([(training_stream(a, None, seed=0), 3), (training_stream(b, None, seed=0, index=1), 1)], 4)
    batches = list(mixer.epoch())
    assert len(batches) == 2  # 8 rows of the first stream, 3 per batch: the incomplete third batch is dropped
    for images, masks in batches:
        assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32) and masks.dtype == torch.int64
        origin = ["a" if m.to(torch.uint8).numpy().tobytes() in a_masks else "b" for m in masks]
        assert all(m.to(torch.uint8).numpy().tobytes() in a_masks | b_masks for m in masks)
        assert sorted(origin) == ["a", "a", "a", "b"]


@pytest.mark.slow
def test_train_ddp_resume_and_evaluate(tmp_path, ray_session, capsys):
    data = make_dataset(tmp_path / "train", 32, (32, 32), num_classes=4)
    val = make_dataset(tmp_path / "val", 8, (32, 32), num_classes=4, seed=5)
    run = str(tmp_path / "run")
    t0 = time.monotonic()
    weighted = {"class_weights": "median-frequency"}
    card = train_segmenter(SegTrainConfig(data=[data], val=val, out=run, epochs=2, batch=4, workers=2, log_every=2,
                                          **weighted))
    t1 = time.monotonic()
    training = card.model_config["training"]
    expected = class_weights(open_dataset(data).info, "median-frequency")
    assert training["class_weights"] == "median-frequency"
    assert training["class_weight_values"] == pytest.approx(expected, abs=1e-6)
    assert card.step == 2 * 4 and card.metrics["epoch"] == 2  # 16 rows per worker, batch 4
    assert card.dataset["train"][0]["num_rows"] == 32 and card.dataset["val"]["uri"] == val
    assert card.model_config["name"] == MODEL and card.size == [32, 32]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and all(0 <= x["val_miou"] <= 1 for x in lines)

    with pytest.raises(CheckpointError, match="class weights 'median-frequency', not 'none'"):
        train_segmenter(SegTrainConfig(data=[data], val=val, out=run, epochs=3, batch=4, resume=True))
    card = train_segmenter(SegTrainConfig(data=[data], val=val, out=run, epochs=3, batch=4, workers=1, resume=True,
                                          **weighted))
    t2 = time.monotonic()
    assert card.step == 8 + 8 and card.metrics["epoch"] == 3  # one worker: 32 rows / 4
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 8, 16]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert "resuming" in capsys.readouterr().out

    card = train_segmenter(SegTrainConfig(data=[data], out=run, epochs=3, batch=4, resume=True, **weighted))
    assert "already finished 3 of 3 epochs" in capsys.readouterr().out and card.step == 16

    metrics = evaluate_segmenter(run, val, batch=3)
    assert metrics["miou"] == pytest.approx(card.metrics["val_miou"], abs=1e-9)  # same protocol, single process
    print(f"timings: 2-worker run {t1 - t0:.0f}s, resume {t2 - t1:.0f}s")


def test_worker_errors_reach_the_cli_as_one_line():
    import ray.exceptions

    from augment.core.errors import BadSample

    class WorkerGroupError(Exception):  # the shape of Ray Train's error: worker rank -> exception
        def __init__(self, message, worker_failures):
            super().__init__(message)
            self.worker_failures = worker_failures

    inner = BadSample("corrupt or unreadable image", "ds row train/3")
    wrapped = ray.exceptions.RayTaskError("_read_and_decode", "Traceback ...", inner).as_instanceof_cause()
    assert dist_utils._worker_error(WorkerGroupError("w", {1: RuntimeError("x"), 0: wrapped})) is inner
    err = dist_utils._worker_error(WorkerGroupError("w", {1: RuntimeError("a\nboom")}))
    assert isinstance(err, dist_utils.TrainingError) and str(err) == "training failed on worker 1: RuntimeError: boom"
