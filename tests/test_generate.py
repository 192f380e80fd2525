import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.swa_utils import AveragedModel

from augment.core.device import use_bf16
from augment.models.gan import GANConfig, build_generator
from augment.models.store import CheckpointError, ModelCard, save_checkpoint
from augment.models.store import load_generator
from augment.synthesis.generate import sample_noises, synthesise

NUM_CLASSES, IGNORE, SIZE = 4, 255, (32, 32)
CLASSES = ["road", "car", "person", "sign"]


def tiny_generator(seed: int = 0) -> nn.Module:
    """An untrained 32x32 generator. OASIS's init (gain 0.02) gives an almost flat grey image, so the
    non-spectral-normalised convs (SPADE gamma/beta, to_rgb) are re-drawn at gain 1 for visible structure."""
    torch.manual_seed(seed)
    g = build_generator(GANConfig(num_classes=NUM_CLASSES, size=SIZE, g_width=8, spade_hidden=16))
    for module in g.modules():
        if isinstance(module, nn.Conv2d) and not parametrize.is_parametrized(module):
            nn.init.xavier_normal_(module.weight, gain=1.0)
    return g.eval()


def masks(batch: int = 1) -> torch.Tensor:
    m = torch.zeros(batch, *SIZE, dtype=torch.long)
    m[:, 20:, :] = 1
    m[:, 6:18, 10:22] = 2
    m[:, 0:2, 0:4] = IGNORE
    return m


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convs gain nothing from threads, and on a busy 2-core machine OpenMP threads slow them 50-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generator(one_thread):
    return tiny_generator()


def card(cfg: GANConfig, kind: str = "gan") -> ModelCard:
    return ModelCard(kind=kind, classes=CLASSES, palette=[[0, 0, 0]] * 4, ignore_index=IGNORE, size=list(SIZE),
                     model_config=cfg.to_dict())


def test_output_dtype_shape_range(generator):
    images = synthesise(generator, masks(3), [1, 2, 3], [2, 2, 1], NUM_CLASSES, IGNORE)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, *SIZE)
    assert images.float().std() > 10  # not a flat image
    assert not torch.equal(images[0], images[1])
    with pytest.raises(ValueError, match="noise_mode"):
        synthesise(generator, masks(1), [1], [2], NUM_CLASSES, IGNORE, noise_mode="local")
    with pytest.raises(ValueError, match="as many seeds"):
        synthesise(generator, masks(2), [1], [2, 2], NUM_CLASSES, IGNORE)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["target", "global", "both"])
def test_same_seed_same_image_whatever_the_batch(generator, mode, precision):
    m = masks(4)
    m[1, :, :16] = 3
    m[3] = 0
    kw = {"noise_mode": mode, "precision": precision}
    alone = synthesise(generator, m[2:3], [42], [2], NUM_CLASSES, IGNORE, base_seeds=[9], **kw)
    batch = synthesise(generator, m, [5, 6, 42, 8], [3, 1, 2, 0], NUM_CLASSES, IGNORE, base_seeds=[1, 2, 9, 3], **kw)
    first = synthesise(generator, m[[2, 0]], [42, 5], [2, 2], NUM_CLASSES, IGNORE, base_seeds=[9, 1], **kw)
    assert torch.equal(alone[0], batch[2]) and torch.equal(alone[0], first[0])
    assert torch.equal(alone, synthesise(generator, m[2:3], [42], [2], NUM_CLASSES, IGNORE, base_seeds=[9], **kw))


def test_bf16_stays_close_to_fp32(generator):
    args = (masks(3), [1, 2, 3], [2, 2, 1], NUM_CLASSES, IGNORE)
    fp32 = synthesise(generator, *args, precision="fp32").float()
    bf16 = synthesise(generator, *args, precision="bf16").float()
    assert 0 < (bf16 - fp32).abs().mean() < 2  # grey levels; not the same computation, nearly the same image
    auto = synthesise(generator, *args).float()
    assert torch.equal(auto, bf16 if use_bf16(torch.device("cpu")) else fp32)
    with pytest.raises(ValueError, match="precision must be one of"):
        synthesise(generator, *args, precision="fp16")


def test_target_noise_changes_the_target_region_most(generator):
    m = masks(1)
    region = m[0] == 2
    def diff(seed_a, seed_b, mode, base_a=7, base_b=7):
        a = synthesise(generator, m, [seed_a], [2], NUM_CLASSES, IGNORE, mode, base_seeds=[base_a]).float()
        b = synthesise(generator, m, [seed_b], [2], NUM_CLASSES, IGNORE, mode, base_seeds=[base_b]).float()
        d = (a - b).abs().mean(1)[0]
        return d[region].mean().item(), d[~region].mean().item()

    inside, outside = diff(1, 2, "target")
    assert inside > 10 and inside > 3 * outside, (inside, outside)
    inside, outside = diff(1, 1, "target", base_a=7, base_b=8)  # only the base noise differs
    assert outside > 10 and outside > inside, (inside, outside)
    inside, outside = diff(1, 2, "global")
    assert inside > 10 and outside > 10
    z = sample_noises(m, [1], [2], 8, "target", base_seeds=[7])
    assert torch.equal(z[0, :, 0, 0], z[0, :, 31, 31]) and not torch.equal(z[0, :, 10, 12], z[0, :, 0, 0])
    assert torch.equal(z[0, :, 10, 12], z[0, :, 17, 21])


def test_load_generator_round_trip(tmp_path, generator):
    cfg = GANConfig(num_classes=NUM_CLASSES, size=SIZE, g_width=8, spade_hidden=16)
    run = str(tmp_path / "gan")
    save_checkpoint(run, {f"generator.{k}": v for k, v in generator.state_dict().items()}, card(cfg))
    loaded, loaded_card = load_generator(run, "cpu")
    assert not loaded.training and loaded_card.kind == "gan" and loaded_card.classes == CLASSES
    assert all(not p.requires_grad for p in loaded.parameters())
    args = (masks(2), [3, 4], [2, 1], NUM_CLASSES, IGNORE)
    assert torch.equal(synthesise(loaded, *args), synthesise(generator, *args))

    ema = AveragedModel(generator)
    weights = {f"generator.{k}": v for k, v in ema.state_dict().items()}
    weights["discriminator.head.weight"] = torch.zeros(1)
    save_checkpoint(str(tmp_path / "ema"), weights, card(cfg))
    from_ema, _ = load_generator(str(tmp_path / "ema"))
    assert torch.equal(synthesise(from_ema, *args), synthesise(generator, *args))


def test_load_generator_refuses_bad_checkpoints(tmp_path, generator):
    cfg = GANConfig(num_classes=NUM_CLASSES, size=SIZE, g_width=8, spade_hidden=16)
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    save_checkpoint(str(tmp_path / "seg"), state, card(cfg, kind="segmenter"))
    with pytest.raises(CheckpointError, match="not a GAN"):
        load_generator(str(tmp_path / "seg"))
    wider = GANConfig(num_classes=NUM_CLASSES, size=SIZE, g_width=16, spade_hidden=16)
    save_checkpoint(str(tmp_path / "wide"), state, card(wider))
    with pytest.raises(CheckpointError, match="do not fit its model_config"):
        load_generator(str(tmp_path / "wide"))
    save_checkpoint(str(tmp_path / "none"), {"other.x": torch.zeros(1)}, card(cfg))
    with pytest.raises(CheckpointError, match="no 'generator.\\*' weights"):
        load_generator(str(tmp_path / "none"))
    bad = card(cfg)
    bad.model_config = {**cfg.to_dict(), "colour": 1}
    save_checkpoint(str(tmp_path / "cfg"), state, bad)
    with pytest.raises(CheckpointError, match="not a GAN config"):
        load_generator(str(tmp_path / "cfg"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast + channels_last path)")
def test_cuda_matches_cpu_roughly(generator):
    cuda = tiny_generator().cuda().to(memory_format=torch.channels_last)
    args = (masks(2), [3, 4], [2, 1], NUM_CLASSES, IGNORE)
    on_gpu = synthesise(cuda, *args)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8
    assert (on_gpu.cpu().float() - synthesise(generator, *args).float()).abs().mean() < 8
    alone = synthesise(cuda, masks(1), [4], [1], NUM_CLASSES, IGNORE)
    assert (alone[0].float() - on_gpu[1].float()).abs().max() <= 2
