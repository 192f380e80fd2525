"""Images from label maps with the trained (EMA) OASIS generator.

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

from augment.core.device import use_bf16
from augment.models.generator import resample_noise_in_region, sample_noise
from augment.models.losses import one_hot_labels

NOISE_MODES = ("target", "global", "both")  # the job schema's `noise` enum lists the same (tests/test_job.py checks)


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
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 images B x 3 x H x W (on the generator's device) for label maps `masks` (B x H x W integer).

    `context` (B x 4 x H x W, augment.models.context.context_input) is what a crop-mode generator paints in.

    `base_seeds` (default 0 for all) only matter in noise_mode "target"; pass `PlannedSample.base_seed`.
    Inputs are channels_last; `precision` (see `augment.core.device.use_bf16`) picks bf16 autocast, by default where the
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
    extra = () if context is None else (context.to(device).contiguous(memory_format=torch.channels_last),)
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    if use_bf16(device, precision):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    batch_invariant = contextlib.nullcontext()
    if device.type == "cpu" and not use_bf16(device, precision):
        batch_invariant = _without_onednn()
    with autocast, batch_invariant:
        images = generator(label, z, *extra)
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
