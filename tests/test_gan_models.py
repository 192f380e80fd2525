"""CPU tests of the OASIS GAN modules, losses and training step (tiny sizes and widths)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from augment.models.discriminator import FAKE_INDEX, OASISDiscriminator
from augment.models.gan import (
    GANConfig,
    build_discriminator,
    build_ema,
    build_generator,
    build_optimizers,
    default_widths,
    parse_widths,
    gan_train_step,
    refresh_ema_batchnorm,
)
from augment.models.generator import OASISGenerator, resample_noise_in_region, sample_noise
from augment.models.losses import (
    class_balance_weights,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
    labelmix,
    labelmix_consistency_loss,
    one_hot_labels,
    real_class_loss,
)
from augment.models.spade import SPADE, SPADEResBlock

IGNORE = 255
TINY = {"g_width": 8, "d_width": 16, "spade_hidden": 32}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These models are tiny: one intra-op thread is faster, and on a busy 2-core machine two
    OpenMP threads made the training-step test ~20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synthetic_mask(batch: int, h: int, w: int) -> torch.Tensor:
    """Four classes in blocks and stripes, an ignored corner, and a different layout per image."""
    mask = torch.zeros(batch, h, w, dtype=torch.long)
    mask[:, :, w // 4 : w // 2 + 4] = 1
    mask[:, 3 * h // 4 :, :] = 2
    mask[:, : h // 3, 3 * w // 4 :] = 3
    mask[:, :4, :4] = IGNORE
    for b in range(1, batch):
        mask[b] = torch.roll(mask[b], shifts=b * w // 8, dims=1)
    return mask


def synthetic_images(mask: torch.Tensor) -> torch.Tensor:
    """Per-class colours plus a little texture, in [-1, 1]."""
    colours = torch.tensor([[0.8, -0.5, -0.5], [-0.6, 0.7, -0.2], [-0.3, -0.3, 0.9], [0.5, 0.5, 0.5]])
    index = torch.where(mask == IGNORE, 0, mask)
    img = colours[index].permute(0, 3, 1, 2)
    texture = 0.1 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))
    return (img + texture).clamp(-1, 1)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(64, 64), (32, 64), (64, 32), (36, 52), (16, 24)])  # 16: MIN_SIDE
def test_generator_and_discriminator_shapes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    cfg = GANConfig(num_classes=5, size=size, **TINY)
    G, D = build_generator(cfg), build_discriminator(cfg)
    label = one_hot_labels(synthetic_mask(2, *size), 5, IGNORE)
    z = sample_noise(2, cfg.z_dim, size, torch.Generator().manual_seed(0))
    fake = G(label, z)
    assert fake.shape == (2, 3, *size)
    assert fake.min() >= -1 and fake.max() <= 1
    logits, features = D(fake, return_features=True)
    assert logits.shape == (2, 6, *size)
    assert len(features) == 2 * cfg.d_depth
    assert D(fake).shape == logits.shape


def test_depth_and_widths_follow_size() -> None:
    small, large = GANConfig(num_classes=11, size=(64, 64)), GANConfig(num_classes=11, size=(256, 512))
    g_small, g_large = build_generator(small), build_generator(large)
    assert g_small.n_up == 4 and g_large.n_up == 5
    assert g_small.channels == [256, 256, 128, 64, 32, 16]
    assert g_large.channels == [1024, 1024, 1024, 512, 256, 128, 64]
    assert (small.d_depth, large.d_depth) == (4, 6)
    assert default_widths((64, 64)) == {"g_width": 16, "d_width": 32, "spade_hidden": 64}
    assert default_widths((128, 256)) == {"g_width": 32, "d_width": 64, "spade_hidden": 128}
    assert default_widths((256, 512)) == {"g_width": 64, "d_width": 128, "spade_hidden": 128}
    assert parse_widths("8,16,32") == {"g_width": 8, "d_width": 16, "spade_hidden": 32}
    for bad in ("8,16", "8,x,32", "8,0,32"):
        with pytest.raises(ValueError, match="three positive integers"):
            parse_widths(bad)


def test_spade_blocks() -> None:
    x, cond = torch.randn(2, 8, 8, 8), torch.randn(2, 5, 32, 32)
    assert SPADE(8, 5, hidden=16)(x, cond).shape == x.shape
    block = SPADEResBlock(8, 4, 5, hidden=16)
    assert block.learned_shortcut and block(x, cond).shape == (2, 4, 8, 8)
    assert not SPADEResBlock(8, 8, 5, hidden=16).learned_shortcut
    assert hasattr(block.conv_0, "parametrizations")
    with pytest.raises(ValueError, match="norm"):
        SPADE(8, 5, norm="layer")


def test_generator_rejects_bad_inputs() -> None:
    G = OASISGenerator(3, (32, 32), z_dim=4, width=4, spade_hidden=8)
    label = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="3D noise"):
        G(label, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="label"):
        G(torch.zeros(1, 2, 32, 32), torch.zeros(1, 4, 32, 32))


# ---------------------------------------------------------------- noise


def test_noise_helpers() -> None:
    z = sample_noise(2, 3, (8, 10), torch.Generator().manual_seed(1))
    assert z.shape == (2, 3, 8, 10)
    assert torch.equal(z, z[:, :, :1, :1].expand_as(z))
    assert torch.equal(z, sample_noise(2, 3, (8, 10), torch.Generator().manual_seed(1)))
    region = torch.zeros(2, 8, 10, dtype=torch.bool)
    region[:, 2:5, 3:7] = True
    z2 = resample_noise_in_region(z, region, torch.Generator().manual_seed(2))
    changed = (z2 != z).any(dim=1)
    assert torch.equal(changed, region)
    with pytest.raises(ValueError, match="region"):
        resample_noise_in_region(z, region.float())


def _region_edit(noise_stages: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """|G(z) - G(z')| (max over RGB) where z' redraws the noise in class 1's region, and that region."""
    torch.manual_seed(seed)
    size = (64, 64)
    cfg = GANConfig(num_classes=4, size=size, noise_stages=noise_stages)
    G = build_generator(cfg)
    # OASIS's 0.02-scale init leaves SPADE's modulation (and so the noise's effect) near zero;
    # use unit-gain weights so the noise matters as it does in a trained generator.
    for module in G.modules():
        if isinstance(module, nn.Conv2d) and not hasattr(module, "parametrizations"):
            nn.init.xavier_normal_(module.weight)
    mask = synthetic_mask(2, *size)
    label = one_hot_labels(mask, 4, IGNORE)
    rng = torch.Generator().manual_seed(seed)
    refresh_ema_batchnorm(G, [(label, sample_noise(2, cfg.z_dim, size, rng)) for _ in range(3)])
    G.eval()
    region = mask == 1
    z = sample_noise(2, cfg.z_dim, size, rng)
    z_edit = resample_noise_in_region(z, region, rng)
    with torch.no_grad():
        diff = (G(label, z) - G(label, z_edit)).abs().amax(dim=1)
    return diff, region


def _unchanged_outside(diff: torch.Tensor, region: torch.Tensor, radius: int = 8, tol: float = 0.05) -> float:
    """Fraction of pixels farther than ``radius`` from the region whose change is below ``tol``."""
    near = F.max_pool2d(region[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0
    return (diff[~near] < tol).float().mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_region_noise_resampling_is_local(seed: int) -> None:
    """Redrawing one class's noise changes that class's pixels and (almost) nothing beyond a margin.

    The 8-pixel margin covers most of the receptive field of the two noise stages (half and full
    resolution) at region borders.
    """
    diff, region = _region_edit(noise_stages=2, seed=seed)
    assert (diff[region] > 0.1).float().mean() > 0.9
    assert _unchanged_outside(diff, region) > 0.95


def test_region_check_catches_global_noise() -> None:
    """The same check fails for OASIS's noise-in-every-block generator, whose edits leak globally."""
    diff, region = _region_edit(noise_stages=None)
    assert (diff[region] > 0.1).float().mean() > 0.5
    assert _unchanged_outside(diff, region) < 0.5


# ---------------------------------------------------------------- determinism, precision


def test_forward_is_deterministic_given_z() -> None:
    """Same weights + same z -> same image, whatever the global RNG state (noise is only an input).

    Train-mode forwards advance spectral norm's power iteration, so two identically built
    generators are compared call by call; eval-mode forwards repeat exactly.
    """
    size = (32, 32)
    label = one_hot_labels(synthetic_mask(2, *size), 4, IGNORE)
    z = sample_noise(2, 16, size, torch.Generator().manual_seed(3))
    generators = []
    for _ in range(2):
        torch.manual_seed(0)
        generators.append(OASISGenerator(4, size, z_dim=16, width=8, spade_hidden=16))
    torch.manual_seed(123)
    first = generators[0](label, z)
    torch.manual_seed(456)
    assert torch.equal(first, generators[1](label, z))
    G = generators[0].eval()
    with torch.no_grad():
        assert torch.equal(G(label, z), G(label, z))
        other = sample_noise(2, 16, size, torch.Generator().manual_seed(4))
        assert not torch.allclose(G(label, other), G(label, z))


def test_channels_last_bf16_autocast_forward() -> None:
    torch.manual_seed(0)
    size = (32, 64)
    cfg = GANConfig(num_classes=4, size=size, **TINY)
    G = build_generator(cfg).to(memory_format=torch.channels_last)
    D = build_discriminator(cfg).to(memory_format=torch.channels_last)
    label = one_hot_labels(synthetic_mask(2, *size), 4, IGNORE).to(memory_format=torch.channels_last)
    z = sample_noise(2, cfg.z_dim, size, torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(label, z)
        logits = D(fake)
    assert fake.shape == (2, 3, *size) and logits.shape == (2, 5, *size)
    assert torch.isfinite(fake.float()).all() and torch.isfinite(logits.float()).all()


# ---------------------------------------------------------------- losses


def test_one_hot_labels_ignore_and_errors() -> None:
    mask = torch.tensor([[[0, 2], [IGNORE, 1]]])
    onehot = one_hot_labels(mask, 3, IGNORE)
    assert onehot.shape == (1, 3, 2, 2) and onehot.dtype == torch.float32
    assert onehot[0, :, 1, 0].sum() == 0
    assert onehot[0, 2, 0, 1] == 1 and onehot[0, 1, 1, 1] == 1 and onehot.sum() == 3
    with pytest.raises(ValueError, match=r"\[3\]"):
        one_hot_labels(torch.tensor([[[0, 3]]]), 3, IGNORE)
    with pytest.raises(ValueError, match="integer"):
        one_hot_labels(mask.float(), 3, IGNORE)


def test_class_balance_weights() -> None:
    mask = synthetic_mask(2, 32, 32)
    label = one_hot_labels(mask, 5, IGNORE)
    weights = class_balance_weights(label)
    labelled = mask != IGNORE
    assert weights.shape == (2, 32, 32)
    assert torch.isclose(weights.sum(), labelled.sum().float())
    assert (weights[~labelled] == 0).all()
    per_class = torch.stack([weights[mask == c].sum() for c in range(4)])
    assert torch.allclose(per_class, per_class[0].expand(4))
    assert not (mask == 4).any()
    rare, common = weights[mask == 3].mean(), weights[mask == 0].mean()
    assert rare > common


def test_adversarial_losses() -> None:
    mask = synthetic_mask(2, 16, 16)
    label = one_hot_labels(mask, 4, IGNORE)
    target_real = torch.where(mask == IGNORE, FAKE_INDEX, mask + 1)
    perfect_real = 20 * F.one_hot(target_real, 5).permute(0, 3, 1, 2).float()
    perfect_fake = torch.zeros_like(perfect_real)
    perfect_fake[:, FAKE_INDEX] = 20
    assert discriminator_loss(perfect_real, perfect_fake, label) < 1e-6
    assert discriminator_loss(perfect_fake, perfect_real, label) > 10
    assert generator_adversarial_loss(perfect_real, label) < 1e-6
    assert torch.equal(generator_adversarial_loss(perfect_fake, label), real_class_loss(perfect_fake, label))
    uniform = torch.zeros_like(perfect_real)
    assert torch.isclose(discriminator_loss(uniform, uniform, label), 2 * torch.log(torch.tensor(5.0)))
    # ignored pixels do not count in the real-class term
    ignored = (mask == IGNORE)[:, None].expand_as(perfect_real)
    wrong_on_ignore = torch.where(ignored, perfect_fake, perfect_real)
    assert real_class_loss(wrong_on_ignore, label) < 1e-6


def test_labelmix_mixes_by_class() -> None:
    mask = synthetic_mask(2, 32, 32)
    label = one_hot_labels(mask, 4, IGNORE)
    real, fake = torch.ones(2, 3, 32, 32), -torch.ones(2, 3, 32, 32)
    seen = set()
    for seed in range(12):
        mixed, mix = labelmix(label, real, fake, torch.Generator().manual_seed(seed))
        assert mix.shape == (2, 1, 32, 32)
        assert set(mix.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(mixed, (2 * mix - 1).expand_as(mixed))
        for b in range(2):
            for c in [0, 1, 2, 3, IGNORE]:
                values = mix[b, 0][mask[b] == c].unique()
                assert values.numel() == 1
                seen.add((b, c, values.item()))
    assert len(seen) == 2 * 5 * 2


def test_labelmix_consistency_loss() -> None:
    torch.manual_seed(0)
    mask = synthetic_mask(2, 16, 16)
    label = one_hot_labels(mask, 4, IGNORE)
    real, fake = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    mixed, mix = labelmix(label, real, fake, torch.Generator().manual_seed(0))
    pixelwise_linear = nn.Conv2d(3, 5, 1)
    loss = labelmix_consistency_loss(pixelwise_linear, mixed, mix, pixelwise_linear(real), pixelwise_linear(fake))
    assert loss < 1e-10
    D = OASISDiscriminator(4, width=8, depth=2)
    loss = labelmix_consistency_loss(D, mixed, mix, D(real), D(fake))
    assert torch.isfinite(loss) and loss > 0


def test_reconstruction_losses() -> None:
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert l1_loss(a, b) == 0.5
    feats_real = [torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 8, 4, 4, requires_grad=True)]
    feats_fake = [f.detach().clone().requires_grad_(True) for f in feats_real]
    assert feature_matching_loss(feats_fake, feats_real) == 0
    feats_fake = [f + 1 for f in feats_fake]
    loss = feature_matching_loss(feats_fake, feats_real)
    assert torch.isclose(loss, torch.tensor(1.0))
    loss.backward()
    assert feats_real[0].grad is None
    with pytest.raises(ValueError):
        feature_matching_loss(feats_fake[:1], feats_real)


# ---------------------------------------------------------------- config, EMA, training step


def test_config_roundtrip_and_validation() -> None:
    cfg = GANConfig(num_classes=11, size=(256, 512), use_l1=True)
    assert cfg.g_width == 64 and cfg.d_depth == 6
    data = json.loads(json.dumps(cfg.to_dict()))
    assert GANConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown"):
        GANConfig.from_dict({**data, "lr": 1.0})
    with pytest.raises(ValueError, match="size"):
        GANConfig(num_classes=3, size=(8, 8))


def test_one_minimum_side_for_every_size() -> None:
    """--size, the example data, the GAN config and both networks accept MIN_SIDE (the networks run at it in
    test_generator_and_discriminator_shapes) and refuse one pixel less."""
    from augment.data import example
    from augment.data.codec import MIN_SIDE, parse_size
    from augment.core.errors import AugmentError
    from augment.models.discriminator import num_downsamples
    from augment.models.generator import num_upsamples

    small = MIN_SIDE - 1
    assert parse_size(str(MIN_SIDE)) == (MIN_SIDE, MIN_SIDE) and parse_size(f"{MIN_SIDE}x40") == (MIN_SIDE, 40)
    with pytest.raises(ValueError, match=f"both sides >= {MIN_SIDE}, got '{small}x40'"):
        parse_size(f"{small}x40")
    assert num_downsamples((MIN_SIDE, 40)) >= 2 and num_upsamples((MIN_SIDE, 40)) >= 2
    assert next(example.generate(1, (MIN_SIDE, 40), 0))[2].shape == (MIN_SIDE, 40)
    for refused in (lambda: num_downsamples((small, 40)), lambda: num_upsamples((small, 40)),
                    lambda: GANConfig(num_classes=3, size=(small, 40))):
        with pytest.raises(ValueError, match=f">= {MIN_SIDE}"):
            refused()
    with pytest.raises(AugmentError, match=f">= {MIN_SIDE}"):
        next(example.generate(1, (small, 40), 0))


def _train_setup(seed: int = 0, **overrides) -> tuple:
    torch.manual_seed(seed)
    cfg = GANConfig(num_classes=4, size=(32, 32), ignore_index=IGNORE, **{**TINY, **overrides})
    G, D = build_generator(cfg), build_discriminator(cfg)
    G_ema = build_ema(G, cfg.ema_decay)
    opt_g, opt_d = build_optimizers(cfg, G, D)
    mask = synthetic_mask(2, 32, 32)
    return cfg, G, D, G_ema, opt_g, opt_d, synthetic_images(mask), mask


def test_train_step_losses_finite_and_d_loss_falls() -> None:
    cfg, G, D, G_ema, opt_g, opt_d, real, mask = _train_setup()
    rng = torch.Generator().manual_seed(0)
    history = [gan_train_step(G, D, G_ema, opt_g, opt_d, real, mask, cfg, rng) for _ in range(30)]
    assert set(history[0]) == {"d_real", "d_fake", "d_labelmix", "d_total", "g_adv", "g_total"}
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    d_total = [h["d_total"] for h in history]
    assert sum(d_total[-5:]) / 5 < sum(d_total[:3]) / 3 - 0.3


def test_train_step_with_reconstruction_terms_and_bf16() -> None:
    cfg, G, D, G_ema, opt_g, opt_d, real, mask = _train_setup(use_l1=True, use_feature_matching=True)
    rng = torch.Generator().manual_seed(0)
    out = gan_train_step(G, D, G_ema, opt_g, opt_d, real, mask, cfg, rng, autocast_dtype=torch.bfloat16)
    assert {"g_l1", "g_fm"} <= set(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    expected = out["g_adv"] + cfg.lambda_l1 * out["g_l1"] + cfg.lambda_fm * out["g_fm"]
    assert out["g_total"] == pytest.approx(expected, rel=1e-5)
    assert all(p.requires_grad for p in D.parameters())
    with pytest.raises(ValueError, match="bfloat16"):
        gan_train_step(G, D, G_ema, opt_g, opt_d, real, mask, cfg, rng, autocast_dtype=torch.float16)


def test_ema_decay_and_buffers() -> None:
    cfg, G, D, G_ema, opt_g, opt_d, real, mask = _train_setup(ema_decay=0.9)
    rng = torch.Generator().manual_seed(0)
    gan_train_step(G, D, G_ema, opt_g, opt_d, real, mask, cfg, rng)
    after_first = [p.detach().clone() for p in G.parameters()]
    assert all(torch.equal(e, g) for e, g in zip(G_ema.module.parameters(), after_first))
    gan_train_step(G, D, G_ema, opt_g, opt_d, real, mask, cfg, rng)
    pairs = list(zip(G_ema.module.parameters(), after_first, G.parameters()))
    for ema, old, new in pairs:
        assert torch.allclose(ema, 0.9 * old + 0.1 * new, atol=1e-6)
    assert any(not torch.allclose(ema, new) for ema, _, new in pairs)
    assert all(torch.equal(e, g) for e, g in zip(G_ema.module.buffers(), G.buffers()))
    assert int(G_ema.n_averaged) == 2


def test_refresh_ema_batchnorm() -> None:
    cfg, G, D, G_ema, opt_g, opt_d, real, mask = _train_setup()
    bn = next(m for m in G_ema.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.zero_()
    label = one_hot_labels(mask, 4, IGNORE)
    rng = torch.Generator().manual_seed(0)
    refresh_ema_batchnorm(G_ema, [(label, sample_noise(2, cfg.z_dim, (32, 32), rng)) for _ in range(2)])
    assert bn.running_mean.abs().sum() > 0 and bn.momentum == 0.1
    assert G_ema.training
