"""OASIS GAN wiring: one typed config, builders, the EMA generator, and one training step.

``gan_train_step`` does one discriminator and one generator update so the training loop only
iterates over batches, logs the returned numbers, and saves checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from augment.models.context import context_input, hole_l1_loss, recolour
from augment.data.codec import MIN_SIDE
from augment.models.discriminator import OASISDiscriminator, num_downsamples
from augment.models.generator import OASISGenerator, sample_noise
from augment.models.losses import (
    fake_class_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
    labelmix,
    labelmix_consistency_loss,
    one_hot_labels,
    real_class_loss,
)
from augment.core.errors import CheckpointError

__all__ = [
    "GAN_KIND",
    "GANConfig",
    "GANConfigError",
    "build_discriminator",
    "build_ema",
    "build_generator",
    "build_optimizers",
    "default_widths",
    "gan_train_step",
    "refresh_ema_batchnorm",
]

GAN_KIND = "gan"
"""The `kind` in a train-gan run's card."""
WIDTH_KEYS = ("g_width", "d_width", "spade_hidden")
# short side up to -> (g_width, d_width, spade_hidden); larger sizes use OASIS's own widths
_WIDTH_RULE = ((64, (16, 32, 64)), (128, (32, 64, 128)))
_OASIS_WIDTHS = (64, 128, 128)


def default_widths(size: tuple[int, int]) -> dict[str, int]:
    """Network widths for an image size: small up to 64 px (fast CPU tests), OASIS's at >= 256 px.

    =====================  =======  =======  ============
    short side             g_width  d_width  spade_hidden
    =====================  =======  =======  ============
    <= 64                  16       32       64
    65 .. 128              32       64       128
    > 128 (OASIS)          64       128      128
    =====================  =======  =======  ============
    """
    short = min(size)
    return dict(zip(WIDTH_KEYS, next((w for limit, w in _WIDTH_RULE if short <= limit), _OASIS_WIDTHS)))


def parse_widths(text: str) -> dict[str, int]:
    """'G,D,HIDDEN' (e.g. '8,16,32', small enough for a CPU) as GANConfig fields; ValueError names the problem."""
    try:
        values = [int(w) for w in text.split(",")]
    except ValueError:
        values = []
    if len(values) != len(WIDTH_KEYS) or min(values) < 1:
        raise ValueError(f"GAN widths are three positive integers G,D,HIDDEN "
                         f"({', '.join(WIDTH_KEYS)}), got {text!r}")
    return dict(zip(WIDTH_KEYS, values))


SPADE_NORMS = ("batch", "instance")


class GANConfigError(CheckpointError, ValueError):
    """A GAN model_config (from a card) that does not describe networks augment can build: one line naming the field.

    A CheckpointError, so the CLI prints it on one line, and a ValueError, so callers that add the run's name to a
    bad config's message keep doing so.
    """


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, tuple)) and len(value) == 2 and all(map(check, value))


def _or_none(what: str, check: Callable[[Any], bool]) -> tuple[str, Callable[[Any], bool]]:
    return f"{what} or null", lambda value: value is None or check(value)


_POSITIVE_INT = ("an integer >= 1", lambda v: _is_int(v) and v >= 1)
_NON_NEGATIVE = ("a number >= 0", lambda v: _is_number(v) and v >= 0)
_POSITIVE = ("a number > 0", lambda v: _is_number(v) and v > 0)
_BOOL = ("true or false", lambda v: isinstance(v, bool))
_FIELD_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "num_classes": _POSITIVE_INT,
    "size": (f"[height, width], integers >= {MIN_SIDE}", _pair(lambda v: _is_int(v) and v >= MIN_SIDE)),
    "z_dim": _POSITIVE_INT,
    "g_width": _or_none(*_POSITIVE_INT),
    "d_width": _or_none(*_POSITIVE_INT),
    "spade_hidden": _or_none(*_POSITIVE_INT),
    "d_depth": _or_none("an integer >= 2", lambda v: _is_int(v) and v >= 2),
    "g_norm": (" or ".join(map(repr, SPADE_NORMS)), lambda v: isinstance(v, str) and v in SPADE_NORMS),
    "noise_stages": _or_none(*_POSITIVE_INT),
    "ignore_index": _or_none("an integer in 0..255", lambda v: _is_int(v) and 0 <= v <= 255),
    "lambda_labelmix": _NON_NEGATIVE,
    "use_l1": _BOOL,
    "lambda_l1": _NON_NEGATIVE,
    "use_feature_matching": _BOOL,
    "lambda_fm": _NON_NEGATIVE,
    "ema_decay": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "lr_g": _POSITIVE,
    "lr_d": _POSITIVE,
    "betas": ("[beta1, beta2], numbers in [0, 1)", _pair(lambda v: _is_number(v) and 0 <= v < 1)),
    "context": _BOOL,
    "guide": _BOOL,
}
"""What each GANConfig field read from a card must be (JSON types: lists for tuples, null for None)."""


@dataclass
class GANConfig:
    """Everything needed to rebuild the networks and repeat a training step.

    Widths left as ``None`` are filled from :func:`default_widths` and ``d_depth`` from
    :func:`~augment.models.discriminator.num_downsamples`, so ``to_dict()`` is always explicit.
    ``noise_stages``: see :mod:`augment.models.generator` (``None`` = noise in every block, as OASIS).
    ``ignore_index``: the label-mask value of unlabelled pixels (all-zero one-hot columns).
    ``context``: crop mode, the generator paints a hole in a real crop (augment.models.context); cards from
    before it load as False. ``guide`` (crop mode only): the generator also reads an appearance guide, the object's
    own pixels recoloured in training and the source object's at synthesis; cards from before it load as False.
    """

    num_classes: int
    size: tuple[int, int]
    z_dim: int = 64
    g_width: int | None = None
    d_width: int | None = None
    spade_hidden: int | None = None
    d_depth: int | None = None
    g_norm: str = "batch"
    noise_stages: int | None = 2
    ignore_index: int | None = 255
    lambda_labelmix: float = 10.0
    use_l1: bool = False
    lambda_l1: float = 1.0
    use_feature_matching: bool = False
    lambda_fm: float = 10.0
    ema_decay: float = 0.999
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)
    context: bool = False
    guide: bool = False

    def __post_init__(self) -> None:
        if self.guide and not self.context:
            raise ValueError("GANConfig.guide is a crop-mode option: it needs context")
        self.size = tuple(int(s) for s in self.size)
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.size) != 2 or min(self.size) < MIN_SIDE:
            raise ValueError(f"GANConfig.size must be (H, W) with both >= {MIN_SIDE}, got {self.size}")
        if self.num_classes < 1:
            raise ValueError(f"GANConfig.num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"GANConfig.ema_decay must be in [0, 1], got {self.ema_decay}")
        for key, value in default_widths(self.size).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.d_depth is None:
            self.d_depth = num_downsamples(self.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["size"], out["betas"] = list(self.size), list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "model_config") -> GANConfig:
        """The config in `data` (a card's model_config, parsed JSON). GANConfigError naming `source` and the field
        for anything but a mapping, an unknown or missing key, or a value of the wrong type or out of range."""
        if not isinstance(data, dict):
            raise GANConfigError(f"{source} must be a JSON object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise GANConfigError(f"{source}: unknown GANConfig keys: {unknown}")
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise GANConfigError(f"{source} lacks key(s) {', '.join(missing)}")
        for key, value in data.items():
            what, ok = _FIELD_CHECKS[key]
            if not ok(value):
                raise GANConfigError(f"{source}.{key} must be {what}, got {value!r}")
        return cls(**data)


def build_generator(cfg: GANConfig) -> OASISGenerator:
    return OASISGenerator(
        cfg.num_classes, cfg.size, z_dim=cfg.z_dim, width=cfg.g_width, spade_hidden=cfg.spade_hidden,
        norm=cfg.g_norm, noise_stages=cfg.noise_stages, context=cfg.context,
        guide=cfg.guide,
    )


def build_discriminator(cfg: GANConfig) -> OASISDiscriminator:
    return OASISDiscriminator(cfg.num_classes, width=cfg.d_width, depth=cfg.d_depth)


def build_ema(generator: nn.Module, decay: float = 0.999) -> AveragedModel:
    """EMA copy of the generator (``AveragedModel`` + ``get_ema_multi_avg_fn``).

    Parameters are averaged; buffers (BatchNorm running stats, spectral-norm vectors) are copied
    from the generator at every ``update_parameters``. Call :func:`refresh_ema_batchnorm` before
    sampling from or saving the EMA, as OASIS does, so its BatchNorm stats match its own weights.
    """
    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def build_optimizers(
    cfg: GANConfig, generator: nn.Module, discriminator: nn.Module
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D with OASIS's two time-scale learning rates."""
    return (
        torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=cfg.betas),
        torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=cfg.betas),
    )


class _PairInput(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.module(*inputs)


def refresh_ema_batchnorm(ema: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
    """Recompute the EMA generator's BatchNorm running stats from ``(label_onehot, z)`` batches
    (``(label_onehot, z, context)`` in crop mode).

    Uses ``torch.optim.swa_utils.update_bn`` (cumulative average over all batches).
    """
    update_bn(([pair] for pair in batches), _PairInput(ema))


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    if dtype != torch.bfloat16:
        raise ValueError(f"autocast dtype must be torch.bfloat16 or None (no grad scaler here), got {dtype}")
    return torch.autocast(device.type, dtype=dtype)


def gan_train_step(
    G: nn.Module,
    D: nn.Module,
    G_ema: AveragedModel | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    label_mask: torch.Tensor,
    cfg: GANConfig,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    hole: torch.Tensor | None = None,
    obj: torch.Tensor | None = None,
) -> dict[str, float]:
    """One OASIS update: D (N+1 loss + LabelMix), then G (adversarial [+ L1] [+ feature matching]), then EMA.

    Args:
        real: B x 3 x H x W images in [-1, 1].
        label_mask: B x H x W class indices (``cfg.ignore_index`` for unlabelled pixels).
        generator: RNG for noise and LabelMix (reproducible steps); ``None`` uses the global RNG.
        autocast_dtype: ``torch.bfloat16`` to run the networks under autocast, or ``None``.
        hole: crop mode (``cfg.context``) only: B x 1 x H x W, 1 where G paints. G reads ``context_input(real,
            hole)`` and returns the composite, which D judges; the fake-class term counts the hole's pixels only
            (outside it the composite is the real crop) and the L1 term too.
        obj: guided crop mode (``cfg.guide``) only: B x 1 x H x W, 1 on the object (inside the hole); G's guide is
            ``recolour(real, obj, generator)``, drawn once per step.

    Returns the losses as floats: ``d_real``, ``d_fake``, ``d_labelmix``, ``d_total``, ``g_adv``,
    ``g_total`` and, when enabled, ``g_l1`` and ``g_fm``.
    """
    device = real.device
    label = one_hot_labels(label_mask.to(device), cfg.num_classes, cfg.ignore_index)
    batch, size = real.shape[0], tuple(real.shape[-2:])
    if tuple(label.shape[-2:]) != size:
        raise ValueError(f"label mask size {tuple(label.shape[-2:])} differs from image size {size}")
    if cfg.context != (hole is not None):
        raise ValueError("crop mode (GANConfig.context) needs a hole, and only crop mode takes one")
    if cfg.guide != (obj is not None):
        raise ValueError("guided crop mode (GANConfig.guide) needs the object's map, and only it takes one")
    guide = None if obj is None else recolour(real, obj, generator)
    context = () if hole is None else (context_input(real, hole, guide),)
    fake_weight = None if hole is None else hole[:, 0]
    out: dict[str, torch.Tensor] = {}

    z = sample_noise(batch, cfg.z_dim, size, generator, device)
    with torch.no_grad(), _autocast(device, autocast_dtype):
        fake = G(label, z, *context).float()
    with _autocast(device, autocast_dtype):
        logits_fake = D(fake)
        logits_real = D(real)
        out["d_fake"] = fake_class_loss(logits_fake, fake_weight)
        out["d_real"] = real_class_loss(logits_real, label)
        mixed, mix_mask = labelmix(label, real, fake, generator)
        out["d_labelmix"] = labelmix_consistency_loss(D, mixed, mix_mask, logits_real, logits_fake)
        out["d_total"] = out["d_fake"] + out["d_real"] + cfg.lambda_labelmix * out["d_labelmix"]
    opt_d.zero_grad(set_to_none=True)
    out["d_total"].backward()
    opt_d.step()

    D.requires_grad_(False)
    try:
        z = sample_noise(batch, cfg.z_dim, size, generator, device)
        with _autocast(device, autocast_dtype):
            fake = G(label, z, *context)
            if cfg.use_feature_matching:
                logits_fake, feats_fake = D(fake, return_features=True)
                with torch.no_grad():
                    _, feats_real = D(real, return_features=True)
                out["g_fm"] = feature_matching_loss(feats_fake, feats_real)
            else:
                logits_fake = D(fake)
            out["g_adv"] = generator_adversarial_loss(logits_fake, label)
            total = out["g_adv"]
            if cfg.use_l1:
                out["g_l1"] = l1_loss(fake, real) if hole is None else hole_l1_loss(fake, real, hole)
                total = total + cfg.lambda_l1 * out["g_l1"]
            if cfg.use_feature_matching:
                total = total + cfg.lambda_fm * out["g_fm"]
            out["g_total"] = total
        opt_g.zero_grad(set_to_none=True)
        out["g_total"].backward()
        opt_g.step()
    finally:
        D.requires_grad_(True)

    if G_ema is not None:
        G_ema.update_parameters(G)
    values = torch.stack([v.detach().float() for v in out.values()]).tolist()
    return dict(zip(out, values))
