"""train-gan on Ray Train: learning signal, checkpoints that load_generator reads, --resume, DDP, sheets, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augment.cli import main
from augment.data.codec import class_pixels, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row, open_dataset
from augment.core.errors import AugmentError
from augment.models.gan import GANConfig, build_ema, build_generator
from augment.models.generator import sample_noise
from augment.models.losses import one_hot_labels
from augment.data.drawing import CAPTION_H, SHEET_GAP, colorize, panel_size
from augment.models.store import CARD_FILE, load_card, load_generator, load_train_state, load_weights
from augment.training.gan import GANTrainConfig, _sample_masks, ema_weights, train_gan
from augment.synthesis.gan_eval import evaluate_generator
from augment.training.transforms import CoverCrop, apply_joint
from conftest import ensure_local_ray
from helpers import PALETTE, blob_sample, make_dataset
from job_helpers import make_tiny_runs

SIZE = (32, 32)
TINY = {"g_width": 8, "spade_hidden": 16, "z_dim": 8, "d_width": 16, "ema_decay": 0.9}
STEPS, SAMPLE_EVERY, LOG_EVERY = 36, 18, 6


def sheet_size(rows: int, size: tuple[int, int], panels: int = 3) -> tuple[int, int]:
    """(width, height) of a sample sheet, as render_sample_sheet documents it."""
    ph, pw = panel_size(*size)
    return panels * pw + (panels + 1) * SHEET_GAP, CAPTION_H + rows * ph + (rows + 1) * SHEET_GAP


def read_metrics(run: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ensure_local_ray()
    root = tmp_path_factory.mktemp("gan")
    data = make_dataset(root / "data", 48, SIZE, num_classes=4, seed=1)
    run = str(root / "run")
    config = GANTrainConfig(data=data, out=run, steps=STEPS, batch=4, sample_every=SAMPLE_EVERY, log_every=LOG_EVERY,
                            sample_rows=3, model=TINY)
    card = train_gan(config)
    return data, run, card, config


def test_losses_finite_and_discriminator_learns(trained) -> None:
    _, run, card, _ = trained
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    keys = {"d_real", "d_fake", "d_labelmix", "d_total", "g_adv", "g_total", "images_per_s"}
    assert all(keys <= set(r) and all(math.isfinite(r[k]) for k in keys) for r in records)
    # All losses start near ln(5) (4 classes + fake). In the first tens of steps D learns to tell generated pixels
    # apart: its fake-class loss and total fall and G's adversarial loss rises. (Its real-class loss first rises,
    # as the fake class takes probability mass, and falls only later.)
    first, last = records[0], records[-1]
    assert abs(first["d_real"] - math.log(5)) < 0.2 and abs(first["g_adv"] - math.log(5)) < 0.2
    assert last["d_fake"] < first["d_fake"] - 0.4, (first, last)
    assert last["d_total"] < first["d_total"] - 0.3, (first, last)
    assert last["g_adv"] > first["g_adv"] + 0.2, (first, last)
    assert card.kind == "gan" and card.step == STEPS
    assert card.classes == [f"class{i}" for i in range(4)] and card.size == list(SIZE) and card.ignore_index == 255
    assert card.palette == PALETTE[:4]
    assert GANConfig.from_dict(card.model_config).g_width == TINY["g_width"]
    assert card.dataset["train"][0]["num_rows"] == 48 and card.dataset["train"][0]["lineage"]
    assert card.metrics["d_real"] == pytest.approx(last["d_real"])


def test_checkpoint_roundtrip_and_load_generator(trained) -> None:
    _, run, card, _ = trained
    weights = load_weights(run)
    assert weights and all(k.startswith("generator.") for k in weights)
    state = load_train_state(run)
    assert state["step"] == STEPS and len(state["rng"]) == 1
    assert {"generator", "discriminator", "ema", "opt_g", "opt_d"} <= set(state)
    cfg = GANConfig.from_dict(card.model_config)
    ema = build_ema(build_generator(cfg), cfg.ema_decay)
    ema.load_state_dict(state["ema"])
    assert int(ema.n_averaged) == STEPS
    saved = ema_weights(ema)
    assert saved.keys() == weights.keys()
    assert all(torch.equal(saved[k], weights[k]) for k in weights)

    generator, loaded_card = load_generator(run)
    assert loaded_card.step == STEPS
    mask = torch.from_numpy(np.stack([blob_sample(np.random.default_rng(i), SIZE, 4)[1] for i in range(2)])).long()
    label = one_hot_labels(mask, 4, 255)
    z = sample_noise(2, cfg.z_dim, SIZE, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ema.module.eval()(label, z)
        got = generator(label, z)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # load_generator's channels_last rounds differently
    assert got.std() > 0.01
    with torch.no_grad():
        other = generator(label, sample_noise(2, cfg.z_dim, SIZE, torch.Generator().manual_seed(1)))
    assert (other - got).abs().max() > 1e-4


def test_sample_sheets(trained) -> None:
    data, run, card, _ = trained
    sheets = sorted(p.name for p in (Path(run) / "samples").iterdir())
    assert sheets == [f"step-{s:06d}.png" for s in (SAMPLE_EVERY, STEPS)]
    image = Image.open(Path(run) / "samples" / sheets[-1])
    assert image.mode == "RGB" and image.size == sheet_size(3, SIZE)
    pixels = np.asarray(image).astype(int)
    ph, pw = panel_size(*SIZE)
    scale = ph // SIZE[0]
    masks = _sample_masks(open_dataset(data), SIZE, 3)
    noise_effect = 0
    for row, mask in enumerate(masks):
        top = CAPTION_H + SHEET_GAP + row * (ph + SHEET_GAP)
        label, first, second = (pixels[top: top + ph, SHEET_GAP + i * (pw + SHEET_GAP):][:, :pw] for i in range(3))
        assert np.array_equal(label, colorize(mask, card.palette).repeat(scale, 0).repeat(scale, 1))
        assert first.std() > 1
        noise_effect += np.abs(first - second).sum()
    assert noise_effect > 0


def test_resume_continues_and_finished_run_says_so(trained, tmp_path, capsys) -> None:
    data, run, _, config = trained
    with pytest.raises(AugmentError, match="--resume"):
        train_gan(config)
    more = GANTrainConfig(**{**config.__dict__, "steps": STEPS + 6, "resume": True})
    card_file = Path(run) / CARD_FILE  # a card written before crop mode and the guide existed resumes too
    old = json.loads(card_file.read_text())
    del old["model_config"]["context"], old["model_config"]["guide"]
    card_file.write_text(json.dumps(old))
    card = train_gan(more)
    assert card.step == STEPS + 6 and load_train_state(run)["step"] == STEPS + 6
    assert read_metrics(run)[-1]["step"] == STEPS + 6
    assert (Path(run) / "samples" / f"step-{STEPS + 6:06d}.png").is_file()
    capsys.readouterr()
    assert train_gan(more).step == STEPS + 6
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(AugmentError, match="24x24"):
        train_gan(GANTrainConfig(**{**more.__dict__, "size": (24, 24)}))
    other = make_dataset(tmp_path / "other", 8, SIZE, num_classes=3)
    with pytest.raises(AugmentError, match="classes"):
        train_gan(GANTrainConfig(**{**more.__dict__, "data": other}))
    with pytest.raises(AugmentError, match="use_l1"):
        train_gan(GANTrainConfig(**{**more.__dict__, "l1": True}))


def test_evaluate_generator(trained, tmp_path) -> None:
    data, run, _, _ = trained
    _, seg_run = make_tiny_runs(tmp_path, data)
    sheet = str(tmp_path / "eval.png")
    result = evaluate_generator(run, seg_run, data, batch=16, sheet=sheet, sheet_rows=2)
    assert result["rows"] == 48 and result["size"] == list(SIZE)
    for metrics in (result, result["real"]):
        assert 0.0 <= metrics["miou"] <= 1.0 and set(metrics["iou"]) == {f"class{i}" for i in range(4)}
    assert evaluate_generator(run, seg_run, data, batch=7)["miou"] == pytest.approx(result["miou"])
    assert Image.open(sheet).size == sheet_size(2, SIZE, panels=4)


def test_cli_two_workers(ray_session, tmp_path, capsys) -> None:
    data = make_dataset(tmp_path / "data", 16, SIZE, num_classes=3)
    out = str(tmp_path / "run")
    args = ["train-gan", "--data", data, "--out", out, "--steps", "4", "--batch", "2", "--workers", "2",
            "--sample-every", "2", "--l1", "--feature-matching"]
    assert main(args) == 0
    card = load_card(out)
    assert card.step == 4 and card.model_config["use_l1"] and card.model_config["use_feature_matching"]
    assert card.metrics["training"]["workers"] == 2 and {"g_l1", "g_fm"} <= set(card.metrics)
    assert len(load_train_state(out)["rng"]) == 2
    assert sorted(p.name for p in (Path(out) / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert "train-gan: " in capsys.readouterr().out
    assert main(args) == 2
    assert "already holds a training run" in capsys.readouterr().err


def write_mixed_sizes(path: Path) -> str:
    rng = np.random.default_rng(0)
    uri = str(path)
    with StagedOutput(uri) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", 3)
        for i, size in enumerate([(32, 32), (32, 48), (32, 32), (32, 48)]):
            image, mask = blob_sample(rng, size, 3)
            writer.write(make_row(f"train/{i}", encode_image(image), encode_mask(mask), size[0], size[1], "train",
                                  class_pixels(mask, 3, 255)))
        stats = writer.close()
        info = DatasetInfo(classes=["a", "b", "c"], palette=PALETTE[:3])
        info.apply_stats(stats)
        staged.commit(info, stats.quarantine)
    return uri


def test_mixed_sizes_need_size_and_bad_settings_are_refused(tmp_path, capsys) -> None:
    data = write_mixed_sizes(tmp_path / "mixed")
    assert main(["train-gan", "--data", data, "--out", str(tmp_path / "run")]) == 2
    assert "--size" in capsys.readouterr().err
    with pytest.raises(AugmentError, match="too few"):
        train_gan(GANTrainConfig(data=data, out=str(tmp_path / "run"), size=SIZE, batch=4, workers=2))
    with pytest.raises(AugmentError, match="GAN model settings"):
        train_gan(GANTrainConfig(data=data, out=str(tmp_path / "run"), size=SIZE, batch=2, model={"bogus": 1}))
    assert not (tmp_path / "run").exists()


def test_cover_crop() -> None:
    image = np.arange(36 * 48 * 3, dtype=np.uint8).reshape(36, 48, 3)
    mask = (np.arange(36 * 48).reshape(36, 48) % 5).astype(np.uint8)
    for size in [(24, 32), (32, 64), (36, 48), (64, 40)]:
        img, msk = apply_joint(CoverCrop(size), image, mask)
        assert tuple(img.shape) == (3, *size) and tuple(msk.shape) == size
        assert set(np.unique(msk.numpy())) <= set(range(5))
    img, msk = apply_joint(CoverCrop((36, 48), random=False), image, mask)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), image) and np.array_equal(msk.numpy(), mask)
