"""Images from label maps with the trained (EMA) OASIS generator.

Checkpoint layout read by `load_generator` (a train-gan run folder, see augment.training.checkpoint):
    card.json          kind "gan", model_config = GANConfig.to_dict()
    model.safetensors  the EMA generator's state dict with keys prefixed "generator." (a further "module." prefix,
                       as torch.optim.swa_utils.AveragedModel adds, and its "n_averaged" counter are accepted and
                       dropped); any other prefix (e.g. "discriminator.") is ignored.

Noise (`synthesise`): every sample draws its noise from its own CPU torch.Generator, so an image depends only on its
mask and seeds, never on the rest of its batch. Modes:
    "global"  one noise vector from `seed` over the whole image
    "target"  the base noise from `base_seed` (shared by the samples of one source map, see plan.py) everywhere,
              and a vector from `seed` inside the target class's region: samples of one source differ where the
              target class is
    "both"    the vector from `seed` everywhere and a second one from the same stream inside the target region
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from augment.device import use_bf16
from augment.models.gan import WEIGHTS_PREFIX, GANConfig, build_generator
from augment.models.generator import resample_noise_in_region, sample_noise
from augment.models.losses import one_hot_labels
from augment.training.checkpoint import CheckpointError, ModelCard, load_card, load_into, load_weights

NOISE_MODES = ("target", "global", "both")  # the job schema's `noise` enum lists the same (tests/test_job.py checks)


def generator_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's own state dict out of a checkpoint's weights (layout in the module docstring)."""
    state = {k[len(WEIGHTS_PREFIX):]: v for k, v in weights.items() if k.startswith(WEIGHTS_PREFIX)}
    state.pop("n_averaged", None)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_generator(run: str, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """The EMA generator of a train-gan run, in eval mode and channels_last on `device`, and its card."""
    card = load_card(run)
    if card.kind != "gan":
        raise CheckpointError(f"{run}: a {card.kind!r} checkpoint, not a GAN (train-gan) run")
    try:
        cfg = GANConfig.from_dict(card.model_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{run}: card.json model_config is not a GAN config ({exc})") from None
    generator = build_generator(cfg)
    state = generator_state_dict(load_weights(run, card))
    if not state:
        raise CheckpointError(f"{run}: model.safetensors holds no '{WEIGHTS_PREFIX}*' weights")
    load_into(generator, state, f"{run}: generator", "its model_config")
    device = torch.device(device)
    generator.requires_grad_(False).eval().to(device, memory_format=torch.channels_last)
    return generator, card


def sample_noises(
    masks: torch.Tensor,
    seeds: Sequence[int],
    target_classes: Sequence[int],
    z_dim: int,
    noise_mode: str = "target",
    base_seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """B x z_dim x H x W noise on the masks' device, each sample from its own seeded CPU generator.

    Only the z_dim-vectors are drawn on the CPU; they are broadcast over the image on the masks' device.
    """
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    b = masks.shape[0]
    base_seeds = [0] * b if base_seeds is None else list(base_seeds)
    if not len(seeds) == len(target_classes) == len(base_seeds) == b:
        raise ValueError(
            f"{b} masks need as many seeds, target classes and base seeds; got {len(seeds)}, "
            f"{len(target_classes)}, {len(base_seeds)}"
        )
    size, device = tuple(masks.shape[-2:]), masks.device
    out = []
    for i in range(b):
        rng = torch.Generator().manual_seed(int(seeds[i]))
        region = (masks[i] == int(target_classes[i]))[None]
        if noise_mode == "global":
            z = sample_noise(1, z_dim, size, rng, device)
        elif noise_mode == "target":
            z = sample_noise(1, z_dim, size, torch.Generator().manual_seed(int(base_seeds[i])), device)
            z = resample_noise_in_region(z, region, rng)
        else:
            z = resample_noise_in_region(sample_noise(1, z_dim, size, rng, device), region, rng)
        out.append(z)
    return torch.cat(out)


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """oneDNN off for the block (its other flags, TF32 included, untouched), restored after."""
    was = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(was, None, None, None)


@torch.no_grad()
def synthesise(
    generator: nn.Module,
    masks: torch.Tensor,
    seeds: Sequence[int],
    target_classes: Sequence[int],
    num_classes: int,
    ignore_index: int,
    noise_mode: str = "target",
    base_seeds: Sequence[int] | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """uint8 images B x 3 x H x W (on the generator's device) for label maps `masks` (B x H x W integer).

    `base_seeds` (default 0 for all) only matter in noise_mode "target"; pass `PlannedSample.base_seed`.
    Inputs are channels_last; `precision` (see `augment.device.use_bf16`) picks bf16 autocast, by default where the
    device computes bf16 natively (its images differ slightly from fp32's; tests/test_generate.py bounds it).
    On a CPU in fp32, oneDNN is off for the generator call: its convolutions pick kernels by batch shape, which can
    move a pixel by a grey level, while the reference kernels compute each sample alone. So an fp32 image on a CPU
    never depends on the other samples of its batch (the same bytes on a given machine and software); in bf16 and on
    GPUs, where kernels also follow the batch shape, the same holds to rounding.
    """
    device = next(generator.parameters()).device
    masks = masks.to(device)
    z = sample_noises(masks, seeds, target_classes, generator.z_dim, noise_mode, base_seeds)
    label = one_hot_labels(masks, num_classes, ignore_index).contiguous(memory_format=torch.channels_last)
    z = z.contiguous(memory_format=torch.channels_last)
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    if use_bf16(device, precision):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    batch_invariant = contextlib.nullcontext()
    if device.type == "cpu" and not use_bf16(device, precision):
        batch_invariant = _without_onednn()
    with autocast, batch_invariant:
        images = generator(label, z)
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
