"""OASIS losses: (N+1)-class adversarial cross-entropy, class balancing, LabelMix, and optional
reconstruction terms (L1, discriminator feature matching) for small training budgets.

Conventions shared with the generator and discriminator:

* Labels are one-hot maps ``B x C x H x W`` from :func:`one_hot_labels`; an ignored pixel is an
  all-zero column (no extra channel). Ignored pixels get zero weight in the real-class terms and
  are still "fake" pixels of a generated image in the fake-class term.
* Discriminator channel 0 is the fake class, channel ``c + 1`` real class ``c``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from augment.models.discriminator import FAKE_INDEX

__all__ = [
    "class_balance_weights",
    "discriminator_loss",
    "fake_class_loss",
    "feature_matching_loss",
    "generator_adversarial_loss",
    "l1_loss",
    "labelmix",
    "labelmix_consistency_loss",
    "one_hot_labels",
    "real_class_loss",
]


def one_hot_labels(mask: torch.Tensor, num_classes: int, ignore_index: int | None = 255) -> torch.Tensor:
    """Class-index map ``B x H x W`` -> float one-hot ``B x C x H x W``; ``ignore_index`` -> all zeros.

    Raises ``ValueError`` for a value that is neither a class index nor ``ignore_index``.
    """
    if mask.dim() != 3 or mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise ValueError(f"label mask must be an integer B x H x W tensor, got {mask.dtype} {tuple(mask.shape)}")
    mask = mask.long()
    valid = mask != ignore_index if ignore_index is not None else torch.ones_like(mask, dtype=torch.bool)
    bad = valid & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = torch.unique(mask[bad]).tolist()[:10]
        raise ValueError(
            f"label mask has values {values} outside classes 0..{num_classes - 1} (ignore_index={ignore_index})"
        )
    index = torch.where(valid, mask, 0).unsqueeze(1)
    out = torch.zeros(mask.shape[0], num_classes, *mask.shape[1:], device=mask.device)
    return out.scatter_(1, index, valid.unsqueeze(1).float())


def class_balance_weights(label: torch.Tensor) -> torch.Tensor:
    """OASIS inverse-frequency pixel weights ``B x H x W`` for a one-hot batch ``B x C x H x W``.

    A pixel of class ``c`` gets ``n / (k * n_c)`` (``n`` labelled pixels in the batch, ``n_c`` of
    class ``c``, ``k`` classes present), so every present class carries the same total weight and
    the weights sum to ``n``. Ignored pixels get 0.
    """
    counts = label.sum(dim=(0, 2, 3))
    present = counts > 0
    coeff = torch.where(present, counts.sum() / (present.sum() * counts).clamp_min(1), torch.zeros_like(counts))
    return torch.einsum("bchw,c->bhw", label, coeff)


def real_class_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross-entropy pushing each labelled pixel to channel ``class + 1``."""
    weights = class_balance_weights(label)
    target = label.argmax(dim=1) + 1
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1)


def fake_class_loss(logits: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy pushing every pixel to the fake channel, unweighted (as in OASIS); with `weight` (B x H x W),
    its weighted mean (crop mode: only the painted pixels are fake; 0 when the weights are all 0)."""
    target = torch.full((logits.shape[0], *logits.shape[2:]), FAKE_INDEX, dtype=torch.long, device=logits.device)
    if weight is None:
        return F.cross_entropy(logits.float(), target)
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp_min(1)


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """OASIS (N+1)-class D loss: real pixels -> their class (class-balanced), fake pixels -> fake."""
    return real_class_loss(logits_real, label) + fake_class_loss(logits_fake)


def generator_adversarial_loss(logits_fake: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """OASIS G loss: D should classify generated pixels as their real label class (class-balanced)."""
    return real_class_loss(logits_fake, label)


def labelmix(
    label: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LabelMix: per image, a random subset of classes takes the real pixels, the rest the fake ones.

    Returns ``(mixed, mask)``; ``mask`` is ``B x 1 x H x W`` float in {0, 1}, 1 where ``real`` is
    used, constant over every class region (ignored pixels form one extra region). Unlike OASIS,
    which draws one subset for the whole batch, each image draws its own.
    """
    b, c = label.shape[:2]
    region = torch.where(label.sum(dim=1) > 0, label.argmax(dim=1), c)
    draw_device = generator.device if generator is not None else label.device
    take_real = torch.randint(0, 2, (b, c + 1), generator=generator, device=draw_device).to(label.device)
    mask = take_real.gather(1, region.flatten(1)).view(b, 1, *label.shape[2:]).to(real.dtype)
    return mask * real + (1 - mask) * fake, mask


def labelmix_consistency_loss(
    discriminator: Callable[[torch.Tensor], torch.Tensor],
    mixed: torch.Tensor,
    mask: torch.Tensor,
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
) -> torch.Tensor:
    """OASIS LabelMix regulariser: ``|| D(mix(real, fake)) - mix(D(real), D(fake)) ||^2`` (mean).

    Gradients flow through all three discriminator outputs, as in OASIS; weight it by lambda_LM.
    """
    logits_mixed = discriminator(mixed)
    target = mask * logits_real.float() + (1 - mask) * logits_fake.float()
    return F.mse_loss(logits_mixed.float(), target)


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel difference between a generated image and its real counterpart."""
    return F.l1_loss(fake.float(), real.float())


def feature_matching_loss(feats_fake: Sequence[torch.Tensor], feats_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD-style feature matching: mean over layers of L1(fake feature, detached real feature)."""
    if len(feats_fake) != len(feats_real) or not feats_fake:
        raise ValueError(f"need equally many feature maps, got {len(feats_fake)} fake and {len(feats_real)} real")
    losses = [F.l1_loss(f.float(), r.detach().float()) for f, r in zip(feats_fake, feats_real)]
    return torch.stack(losses).mean()
