"""Crop mode: the context generator and its composite, the crop sampler, crop-mode train-gan, and paint()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from augment.cli import main
from augment.data.codec import encode_image, encode_mask
from augment.models.context import RECOLOUR_SD, context_input, fill_hole, hole_l1_loss, recolour, split_context
from augment.models.gan import GANConfig, build_discriminator, build_ema, build_generator, build_optimizers
from augment.models.gan import gan_train_step
from augment.models.losses import fake_class_loss
from augment.data.objects import feather_alpha
from augment.synthesis.composite import paste, placed_region
from augment.models.store import load_generator
from augment.synthesis.inpaint import paint, paint_batch
from augment.data.objects import find_objects
from augment.synthesis.placement import Placement
from augment.models.store import load_card
from augment.training.crops import (
    HOLE_ON, HOLE_RING, ObjectCrop, choose_object, crop_window, object_map, object_of, rarity_weights, split_hole,
)
from augment.training.data import _decode_batch
from augment.training.seeding import seeded_rng
from augment.training.transforms import apply_joint, normalize
from helpers import blob_sample, make_dataset
from job_helpers import make_tiny_runs
from test_train_gan import sheet_size

IGNORE = 255
TINY = {"g_width": 8, "d_width": 16, "spade_hidden": 16, "z_dim": 8}
CROP = 32


def tiny_context_generator(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_generator(GANConfig(num_classes=4, size=(CROP, CROP), context=True, **TINY))


def square_hole(batch: int, size: int = CROP) -> torch.Tensor:
    hole = torch.zeros(batch, 1, size, size)
    hole[:, :, 8:20, 10:22] = 1
    return hole


# --- the model ----------------------------------------------------------------------------------------------------

def test_config_context_defaults_off_round_trips_and_old_cards_load() -> None:
    old = GANConfig(num_classes=4, size=(32, 32)).to_dict()
    assert old["context"] is False
    del old["context"]  # a card written before crop mode
    assert GANConfig.from_dict(old).context is False
    cfg = GANConfig(num_classes=4, size=(32, 32), context=True)
    assert GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_context_generator_sees_the_context_everywhere_and_keeps_real_pixels_outside_the_hole() -> None:
    G = tiny_context_generator().eval()
    plain = build_generator(GANConfig(num_classes=4, size=(CROP, CROP), **TINY))
    spades = [m for m in G.modules() if type(m).__name__ == "SPADE"]
    plain_spades = [m for m in plain.modules() if type(m).__name__ == "SPADE"]
    assert spades and all(a.shared[0].in_channels == b.shared[0].in_channels + 4 for a, b in zip(spades, plain_spades))
    assert G.head.in_channels == plain.head.in_channels + 4

    real = torch.rand(2, 3, CROP, CROP) * 2 - 1
    hole = square_hole(2)
    label = torch.zeros(2, 4, CROP, CROP)
    label[:, 1] = 1
    z = torch.randn(2, 8, 1, 1).expand(-1, -1, CROP, CROP)
    with torch.no_grad():
        out = G(label, z, context_input(real, hole))
        other_context = real.clone()
        other_context[:, :, 24:, :] = -real[:, :, 24:, :]  # change the real crop only outside the hole
        moved = G(label, z, context_input(other_context, hole))
    assert out.shape == (2, 3, CROP, CROP)
    outside = hole.expand_as(real) == 0
    assert torch.equal(out[outside], real[outside])  # composited: the real crop exactly outside the hole
    assert not torch.equal(out[~outside], real[~outside])
    assert (moved - out)[~outside].abs().max() > 0  # what lies around the hole changes what is painted in it
    with pytest.raises(ValueError, match="context"):
        G(label, z)
    with pytest.raises(ValueError, match="no context"):
        plain(label, z, context_input(real, hole))


def test_fill_hole_and_the_hole_losses() -> None:
    real, gen = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    hole = torch.zeros(1, 1, 4, 4)
    hole[..., 1:3, 1:3] = 1
    filled = fill_hole(gen, context_input(real, hole))
    assert torch.equal(filled[..., 1:3, 1:3], gen[..., 1:3, 1:3]) and torch.equal(filled[..., 0, :], real[..., 0, :])
    far = real.clone()
    far[..., 0, :] += 5  # differences outside the hole do not count
    assert hole_l1_loss(gen, far, hole) == pytest.approx(float((gen - real)[..., 1:3, 1:3].abs().mean()))
    assert hole_l1_loss(gen, real, torch.zeros_like(hole)) == 0
    logits = torch.randn(2, 5, 4, 4)
    assert fake_class_loss(logits, torch.ones(2, 4, 4)) == pytest.approx(float(fake_class_loss(logits)))
    weight = torch.zeros(2, 4, 4)
    weight[0, 0, 0] = 1
    expected = torch.nn.functional.cross_entropy(logits[:1, :, 0, 0], torch.zeros(1, dtype=torch.long))
    assert fake_class_loss(logits, weight) == pytest.approx(float(expected))


def test_crop_mode_training_step() -> None:
    cfg = GANConfig(num_classes=4, size=(CROP, CROP), context=True, use_l1=True, ema_decay=0.9, **TINY)
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    opt_g, opt_d = build_optimizers(cfg, G, D)
    real = torch.rand(2, 3, CROP, CROP) * 2 - 1
    masks = torch.randint(0, 4, (2, CROP, CROP))
    before = [p.detach().clone() for p in G.parameters()]
    losses = gan_train_step(G, D, build_ema(G, 0.9), opt_g, opt_d, real, masks, cfg, torch.Generator().manual_seed(0),
                            hole=square_hole(2))
    assert {"d_fake", "d_real", "g_adv", "g_l1"} <= set(losses) and all(np.isfinite(list(losses.values())))
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    with pytest.raises(ValueError, match="hole"):
        gan_train_step(G, D, None, opt_g, opt_d, real, masks, cfg)


def test_guided_generator_reads_the_guide_and_its_step_recolours_the_object() -> None:
    with pytest.raises(ValueError, match="needs context"):
        GANConfig(num_classes=4, size=(CROP, CROP), guide=True)
    old = GANConfig(num_classes=4, size=(CROP, CROP), context=True).to_dict()
    del old["guide"]  # a crop-mode card written before the guide
    assert GANConfig.from_dict(old).guide is False
    cfg = GANConfig(num_classes=4, size=(CROP, CROP), context=True, guide=True, use_l1=True, ema_decay=0.9, **TINY)
    assert GANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    assert G.context_channels == 7 and G.guided
    real = torch.rand(2, 3, CROP, CROP) * 2 - 1
    hole = square_hole(2)
    obj = torch.zeros_like(hole)
    obj[:, :, 10:18, 12:20] = 1
    label = torch.nn.functional.one_hot(torch.randint(0, 4, (2, CROP, CROP)), 4).permute(0, 3, 1, 2).float()
    z = torch.randn(2, cfg.z_dim, 1, 1).expand(-1, -1, CROP, CROP)
    G.eval()
    with torch.no_grad():
        a = G(label, z, context_input(real, hole, real * obj))
        b = G(label, z, context_input(real, hole, -real * obj))
        with pytest.raises(ValueError, match="context"):
            G(label, z, context_input(real, hole))
    inside = hole.bool().expand_as(a)
    assert not torch.equal(a[inside], b[inside]) and torch.equal(a[~inside], real[~inside])
    assert split_context(context_input(real, hole, real * obj))[1].equal(hole)
    # the training guide: the object's pixels recoloured, the same for the same generator state, 0 off the object
    g1, g2 = recolour(real, obj, torch.Generator().manual_seed(1)), recolour(real, obj, torch.Generator().manual_seed(1))
    assert torch.equal(g1, g2) and (g1[~obj.bool().expand_as(g1)] == 0).all() and g1.abs().max() <= 1
    assert not torch.allclose(g1[obj.bool().expand_as(g1)], real[obj.bool().expand_as(real)], atol=1e-3)
    # its formula, for one image: contrast about the object's mean, then brightness and colour gains, clipped
    draw = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))[0]
    sd = torch.tensor(RECOLOUR_SD)
    x = (real[0] + 1) / 2
    on = obj[0, 0].bool()
    mean = x[:, on].mean(1)[:, None, None]
    expected = ((mean + (x - mean) * (draw[1] * sd[1]).exp()) * (draw[0] * sd[0]).exp()
                * (draw[2:] * sd[2]).exp()[:, None, None]).clamp(0, 1) * 2 - 1
    assert torch.allclose(g1[0][:, on], expected[:, on], atol=1e-5)
    G.train()
    opt_g, opt_d = build_optimizers(cfg, G, D)
    losses = gan_train_step(G, D, None, opt_g, opt_d, real, torch.randint(0, 4, (2, CROP, CROP)), cfg,
                            torch.Generator().manual_seed(0), hole=hole, obj=obj)
    assert all(np.isfinite(list(losses.values()))) and "g_l1" in losses
    with pytest.raises(ValueError, match="object's map"):
        gan_train_step(G, D, None, opt_g, opt_d, real, torch.randint(0, 4, (2, CROP, CROP)), cfg, hole=hole)


# --- the crop sampler ---------------------------------------------------------------------------------------------

def two_object_map(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Class 0 ground, a big class-1 block and a small class-2 block, an ignored frame."""
    mask = np.zeros(size, np.uint8)
    mask[10:40, 5:35] = 1
    mask[45:55, 45:52] = 2
    mask[0, :] = IGNORE
    return mask


def test_rarity_weights() -> None:
    w = rarity_weights([900, 90, 10, 0], temperature=1.0)
    assert w[3] == 0 and w[2] == pytest.approx(90 * w[0]) and sum(w) == pytest.approx(1)
    assert rarity_weights([900, 90, 10, 0], temperature=0.0)[:3] == pytest.approx([1 / 3] * 3)
    half = rarity_weights([900, 90, 10, 0])
    assert half[2] / half[0] == pytest.approx(90 ** 0.5)  # tempered: the square root of the share ratio
    with pytest.raises(ValueError):
        rarity_weights([0, 0])


def test_rare_classes_are_sampled_more() -> None:
    mask = two_object_map()
    rng = np.random.default_rng(0)

    def share_of_class_2(weights) -> float:
        return float(np.mean([choose_object(mask, weights, rng, min_pixels=16).class_index == 2 for _ in range(300)]))

    assert share_of_class_2(rarity_weights([5000, 900, 70], temperature=0.0)) == pytest.approx(1 / 3, abs=0.08)
    assert share_of_class_2(rarity_weights([5000, 900, 70])) > 0.6  # class 2 (70 px of the data) drawn most
    # a class whose objects are all under min_pixels gives way: only class 0 and 1 have objects of 300 px
    big = [choose_object(mask, [0.0, 0.0, 1.0], rng, min_pixels=300) for _ in range(20)]
    assert {o.class_index for o in big} <= {0, 1} and min(o.pixels for o in big) >= 300
    assert choose_object(np.full((8, 8), IGNORE, np.uint8), [1.0], rng) is None


def crop_of(mask: np.ndarray, image: np.ndarray, seed: int, crop: ObjectCrop) -> tuple[np.ndarray, np.ndarray]:
    with seeded_rng(seed):
        img, msk = apply_joint(crop, image, mask)
    return img.numpy(), msk.numpy()


def test_object_crop_is_deterministic_per_seed_and_its_hole_is_the_dilated_object() -> None:
    mask = two_object_map()
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    crop = ObjectCrop(CROP, rarity_weights([5000, 900, 70]), dilation=2, hflip=0.0)
    first = crop_of(mask, image, 7, crop)
    assert all(np.array_equal(a, b) for a, b in zip(first, crop_of(mask, image, 7, crop)))
    draws = [crop_of(mask, image, s, crop) for s in range(8)]
    assert len({d[0].tobytes() for d in draws}) > 1
    for img, msk in draws:
        assert img.shape == (4, CROP, CROP) and msk.shape == (CROP, CROP)
        assert set(np.unique(img[3])) <= {0, HOLE_RING, HOLE_ON}
        # locate the crop in the map: the RGB crop is a window of the image
        hits = [(t, l) for t in range(64 - CROP + 1) for l in range(64 - CROP + 1)
                if np.array_equal(image[t:t + CROP, l:l + CROP].transpose(2, 0, 1), img[:3])]
        assert len(hits) == 1
        t, l = hits[0]
        assert np.array_equal(mask[t:t + CROP, l:l + CROP], msk)
        # the hole is one object of the map dilated by 2 px, cut to the crop
        assert any(np.array_equal(img[3] > 0, (feather_alpha(object_map(o), 2) > 0)[t:t + CROP, l:l + CROP])
                   and np.array_equal(img[3] == HOLE_ON, object_map(o)[t:t + CROP, l:l + CROP])
                   for c in range(3) for o in find_objects(mask, c, 16))
        # the object (a guided generator's guide) reads the same from uint8 and from normalised crops
        batch = torch.from_numpy(img)[None]
        assert torch.equal(object_of(batch), object_of(normalize(batch, "tanh")))
        assert torch.equal(object_of(batch)[0, 0].bool(), torch.from_numpy(img[3] == HOLE_ON))


def test_objects_at_the_border_shift_the_crop_inside_and_big_images_fail_clearly() -> None:
    assert crop_window((2.0, 60.0), CROP, (64, 64)) == (0, 32)
    assert crop_window((40.0, 30.0), CROP, (64, 64)) == (24, 14)
    with pytest.raises(ValueError, match="smaller"):
        crop_window((5.0, 5.0), CROP, (20, 64))
    mask = np.zeros((64, 64), np.uint8)
    mask[60:64, 0:4] = 1  # a small object in the corner
    image = np.zeros((64, 64, 3), np.uint8)
    image[60:, :4] = 200
    img, _ = crop_of(mask, image, 0, ObjectCrop(CROP, [0.0, 1.0], min_pixels=4, hflip=0.0))
    assert img[3, -4:, :4].all() and (img[:3, -4:, :4] == 200).all()


def test_stream_decoding_draws_crops_from_seed_epoch_and_sample_id() -> None:
    rows = []
    for i in range(3):
        image, mask = blob_sample(np.random.default_rng(i), (48, 48), 4)
        rows.append({"id": f"s{i}", "image": {"bytes": encode_image(image), "path": None},
                     "mask": {"bytes": encode_mask(mask), "path": None}})
    table = pa.Table.from_pylist(rows)
    crop = ObjectCrop(CROP, [0.25] * 4)
    a = _decode_batch(table, crop, "test", [0, 0, 1])
    b = _decode_batch(table, crop, "test", [0, 0, 1])
    c = _decode_batch(table, crop, "test", [0, 0, 2])
    assert a["image"].shape == (3, 4, CROP, CROP)
    assert np.array_equal(a["image"], b["image"]) and not np.array_equal(a["image"], c["image"])
    real, hole = split_hole(normalize(torch.from_numpy(a["image"]), "tanh"))
    assert real.shape == (3, 3, CROP, CROP) and torch.equal(hole[:, 0].bool(), torch.from_numpy(a["image"][:, 3] > 0))


# --- crop-mode train-gan through the CLI --------------------------------------------------------------------------

def test_train_gan_crop_mode_cli(ray_session, tmp_path, capsys) -> None:
    data = make_dataset(tmp_path / "data", 8, (48, 48), num_classes=4, seed=3)
    out = str(tmp_path / "run")
    args = ["train-gan", "--data", data, "--out", out, "--crop", str(CROP), "--steps", "2", "--batch", "2", "--l1"]
    assert main(args) == 0
    card = load_card(out)
    assert card.step == 2 and card.size == [CROP, CROP]
    assert card.model_config["context"] is True and card.model_config["size"] == [CROP, CROP]
    training = card.metrics["training"]
    assert training["mode"] == "crop" and training["crop"] == CROP and training["hole_dilation"] >= 1
    assert "g_l1" in card.metrics and np.isfinite(card.metrics["d_fake"])
    sheet = Image.open(Path(out) / "samples" / "step-000002.png")
    assert sheet.size == sheet_size(4, (CROP, CROP))
    generator, loaded = load_generator(out)
    assert generator.context_channels == 4 and loaded.metrics["training"]["crop"] == CROP
    image, mask = blob_sample(np.random.default_rng(9), (48, 48), 4)
    painted, _ = paint(generator, image, mask, Placement("h", "s", 0, 2, 20, 20, 1.0, False), np.ones((6, 5), bool),
                       seed=1, precision="fp32")
    assert painted.shape == image.shape
    capsys.readouterr()
    assert main(["train-gan", "--data", data, "--out", str(tmp_path / "r2"), "--crop", "32", "--size", "32x32"]) == 2
    assert main(["train-gan", "--data", data, "--out", str(tmp_path / "r3"), "--crop", "64"]) == 2
    assert main(["train-gan", "--data", data, "--out", str(tmp_path / "r4"), "--guide"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "drop --size" in err[0] and "does not fit" in err[1] and "add --crop" in err[2]


# --- paint --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def context_generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    data = make_dataset(root / "data", 2, (48, 48), num_classes=4)
    gan_run, _ = make_tiny_runs(root, data, size=(CROP, CROP), context=True)
    return load_generator(gan_run)[0]


def host(seed: int = 0, size: tuple[int, int] = (48, 64)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, size).astype(np.uint8)
    return image, mask


def person(h: int = 10, w: int = 6) -> np.ndarray:
    shape = np.zeros((h, w), bool)
    shape[:, 1:-1] = True
    shape[:3, :] = True
    return shape


def test_paint_keeps_the_host_outside_the_object_and_band_and_paints_the_hole(context_generator) -> None:
    image, mask = host()
    shape, placement = person(), Placement("h", "s", 0, 3, 20, 30, 1.0, False)
    out, out_mask = paint(context_generator, image, mask, placement, shape, seed=5, band=2, precision="fp32")
    obj, alpha = placed_region(shape, placement, mask.shape, 2)
    untouched = alpha == 0
    assert np.array_equal(out[untouched], image[untouched]) and np.array_equal(out_mask[untouched], mask[untouched])
    assert (out_mask[obj] == 3).all() and (out_mask[(alpha > 0) & ~obj] == IGNORE).all()
    painted = out[obj].astype(int)
    assert painted.std() > 1  # not the blanked input (a flat grey) nor a constant
    assert np.abs(painted - 128).max() > 10 and not np.array_equal(out[obj], image[obj])
    again, _ = paint(context_generator, image, mask, placement, shape, seed=5, band=2, precision="fp32")
    other, _ = paint(context_generator, image, mask, placement, shape, seed=6, band=2, precision="fp32")
    assert np.array_equal(again, out) and not np.array_equal(other[obj], out[obj])


def out_differs(out: np.ndarray, image: np.ndarray, obj: np.ndarray) -> bool:
    """Most of the object's pixels were painted anew."""
    return float((out[obj] != image[obj]).any(axis=1).mean()) > 0.5


def test_paint_batch_equals_one_at_a_time_and_handles_big_and_absent_objects(context_generator) -> None:
    hosts = [host(i) for i in range(3)]
    placements = [Placement("h", "s", 0, 3, 20, 30, 1.0, False),
                  Placement("h", "s", 0, 1, 4, 10, 1.0, True),  # 40 px tall: painted in a larger window
                  Placement("h", "s", 0, 2, 100, 100, 1.0, False)]  # outside the host
    shapes = [person(), person(40, 20), person()]
    batch = paint_batch(context_generator, [h[0] for h in hosts], [h[1] for h in hosts], placements, shapes,
                        [1, 2, 3], precision="fp32")
    for (image, mask), placement, shape, seed, (out, out_mask) in zip(hosts, placements, shapes, [1, 2, 3], batch):
        alone = paint(context_generator, image, mask, placement, shape, seed=seed, precision="fp32")
        assert np.array_equal(alone[0], out) and np.array_equal(alone[1], out_mask)
        obj, alpha = placed_region(shape, placement, mask.shape, 3)
        assert np.array_equal(out[alpha == 0], image[alpha == 0]) and (out_mask[obj] == placement.class_index).all()
    obj = placed_region(shapes[1], placements[1], hosts[1][1].shape, 3)[0]
    assert obj.sum() == person(40, 20).sum() and out_differs(batch[1][0], hosts[1][0], obj)
    assert np.array_equal(batch[2][0], hosts[2][0]) and np.array_equal(batch[2][1], hosts[2][1])
    plain = build_generator(GANConfig(num_classes=4, size=(CROP, CROP), **TINY))
    with pytest.raises(ValueError, match="crop-mode"):
        paint(plain, *hosts[0], placements[0], shapes[0])


def test_guided_paint_repaints_the_source_pixels_and_keeps_the_host_outside(tmp_path, context_generator) -> None:
    data = make_dataset(tmp_path / "data", 2, (48, 48), num_classes=4)
    generator, _ = load_generator(make_tiny_runs(tmp_path, data, size=(CROP, CROP), context=True, guide=True)[0])
    assert generator.guided and generator.context_channels == 7
    image, mask = host()
    shape, placement = person(), Placement("h", "s", 0, 3, 20, 30, 1.0, False)
    crop_shape = np.pad(shape, 2)  # as ObjectComponent.crop gives it: the object with a margin of source pixels
    bright = np.full((*crop_shape.shape, 3), 230, np.uint8)
    dark = np.full((*crop_shape.shape, 3), 20, np.uint8)
    with pytest.raises(ValueError, match="source"):
        paint(generator, image, mask, placement, shape, seed=5, precision="fp32")
    with pytest.raises(ValueError, match="not the placed object"):
        paint(generator, image, mask, placement, shape, seed=5, source=(bright, np.pad(person(8, 6), 2)))
    a, a_mask = paint(generator, image, mask, placement, shape, seed=5, source=(bright, crop_shape), precision="fp32")
    b, _ = paint(generator, image, mask, placement, shape, seed=5, source=(dark, crop_shape), precision="fp32")
    again, _ = paint(generator, image, mask, placement, shape, seed=5, source=(bright, crop_shape), precision="fp32")
    obj, alpha = placed_region(shape, placement, mask.shape, 3)
    assert np.array_equal(a, again)
    assert np.array_equal(a[alpha == 0], image[alpha == 0]) and np.array_equal(a_mask[alpha == 0], mask[alpha == 0])
    assert (a_mask[obj] == 3).all() and not np.array_equal(a[obj], b[obj])  # the guide reaches the painting
    # an unguided generator ignores sources
    plain = context_generator
    x, _ = paint(plain, image, mask, placement, shape, seed=5, source=(bright, crop_shape), precision="fp32")
    y, _ = paint(plain, image, mask, placement, shape, seed=5, source=(dark, crop_shape), precision="fp32")
    assert np.array_equal(x, y)
    # with its last layer zeroed a guided generator returns its guide: the source pixels, placed as paste places them
    with torch.no_grad():
        generator.to_rgb.weight.zero_()
        generator.to_rgb.bias.zero_()
    pixels = np.random.default_rng(3).integers(0, 256, (*crop_shape.shape, 3), dtype=np.uint8)
    guided, _ = paint(generator, image, mask, placement, shape, seed=5, source=(pixels, crop_shape), precision="fp32")
    pasted, _ = paste(image, mask, pixels, crop_shape, placement, 3, IGNORE)
    assert np.abs(guided[obj].astype(int) - pasted[obj].astype(int)).max() <= 1
