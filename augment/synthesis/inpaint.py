"""The `insert` filler's painting: a crop-mode generator (`augment train-gan --crop`) paints a placed object into
a real host image.

`paint` (one placement) and `paint_batch` (several, one host each, one generator call) work per sample as follows:
    region   `composite.placed_region`: where the placed object (scaled, flipped, clipped to the host) lies, and the
             feathered alpha of its band;
    labels   the edited label map the generator reads: the host's labels with the object's pixels set to its class
             (the object in front);
    hole     the object dilated by `dilation` pixels (`crops.hole_mask`, as in training);
    window   `crops.crop_window` centred on the hole's box, of the generator's crop size S; for a hole that does not
             fit in S x S with S // 8 pixels of context on each side, a square of side L = hole extent + 2 (S // 8)
             (at most the host's short side), cut, resized to S x S (image bilinear, labels nearest, the hole
             wherever it covers part of a pixel), painted and the painting resized back (bilinear);
    guide    a guided generator (`train-gan --crop --guide`) also reads the source object's own pixels (its canvas as
             `composite.paste` places it, scaled and flipped), on the placed object's pixels only, cut like the
             image (pixels resized bilinear, the object's map nearest, as the labels);
    paint    the generator reads the label crop (one-hot), the crop with the hole blanked and the hole, with noise
             from the sample's `seed` alone (`augment.synthesis.generate.synthesise`, noise mode "global"): a
             sample's result does not depend on the rest of its batch;
    result   the painted pixels inside the hole, the host's elsewhere, composited into the host with the band's
             alpha (`composite.composite`), and the mask `composite.label_placed`: outside the object and its band
             the host's bytes and labels exactly, the object labelled its class, the band the ignore index.
A placement that leaves no object pixel inside the host returns the host unchanged. The same inputs and seeds give
the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.models.context import context_input
from augment.synthesis.composite import DEFAULT_BAND, composite, label_placed, placed_pixels, placed_region
from augment.synthesis.generate import synthesise
from augment.synthesis.placement import Placement
from augment.training.crops import DEFAULT_DILATION, crop_window, hole_mask
from augment.training.transforms import normalize



@dataclass
class _Cut:
    """One sample's window (top, left, side) in its host and what the generator reads there, at S x S."""

    top: int
    left: int
    side: int
    labels: torch.Tensor
    image: torch.Tensor
    hole: torch.Tensor
    guide: torch.Tensor | None = None
    """A guided generator's guide at S x S, normalised to [-1, 1] on the object and 0 elsewhere."""


@dataclass
class _Sample:
    """One placement's edited mask, band alpha and (when the object shows in the host) its hole and window."""

    mask: np.ndarray
    alpha: np.ndarray
    hole: np.ndarray | None = None
    cut: _Cut | None = None


def _window(hole: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, side) of the square window around `hole` (host-sized bool, not empty), as the module docstring
    says; ValueError when the hole does not fit in it."""
    ys, xs = np.nonzero(hole)
    extent = int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1
    margin = size // 8
    side = size if extent + 2 * margin <= size else min(extent + 2 * margin, *hole.shape)
    top, left = crop_window(((ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2), side, hole.shape)
    if hole[top : top + side, left : left + side].sum() < hole.sum():
        raise ValueError(f"the object's hole ({extent} px across) does not fit a {side}x{side} window of the host")
    return top, left, side


def _resized(image: np.ndarray, win: tuple[slice, slice], size: int) -> torch.Tensor:
    """3 x size x size uint8: `image[win]` (H x W x 3 uint8) resized (bilinear, antialiased) unless already so."""
    img = torch.from_numpy(np.ascontiguousarray(image[win])).permute(2, 0, 1)[None]
    if img.shape[-1] != size:
        img = F.interpolate(img.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        img = img.round().clamp(0, 255).to(torch.uint8)
    return img[0]


def _cut(image: np.ndarray, labels: np.ndarray, hole: np.ndarray, size: int,
         guide: tuple[np.ndarray, np.ndarray] | None = None) -> _Cut:
    """The window around `hole` and its image, labels and hole resized to size x size (module docstring); with
    `guide` (the placed source pixels, host-sized, and the placed object's map), the guide too."""
    top, left, side = _window(hole, size)
    win = (slice(top, top + side), slice(left, left + side))
    lab = torch.from_numpy(labels[win].astype(np.int64))[None, None]
    hol = torch.from_numpy(hole[win].astype(np.float32))[None, None]
    if side != size:
        lab = F.interpolate(lab.float(), size=(size, size), mode="nearest").long()
        hol = (F.interpolate(hol, size=(size, size), mode="area") > 0).float()
    cut = _Cut(top, left, side, lab[0, 0], _resized(image, win, size), hol[0])
    if guide is not None:
        pixels, obj = guide
        on = torch.from_numpy(obj[win].astype(np.float32))[None, None]
        if side != size:
            on = F.interpolate(on, size=(size, size), mode="nearest")
        cut.guide = normalize(_resized(pixels, win, size), "tanh") * on[0]
    return cut


def _prepare(image: np.ndarray, mask: np.ndarray, placement: Placement, shape: np.ndarray,
             source: tuple[np.ndarray, np.ndarray] | None, size: int, band: int, dilation: int,
             ignore_index: int) -> _Sample:
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"host image {image.shape} and mask {mask.shape} do not match")
    obj, alpha = placed_region(shape, placement, mask.shape, band)
    sample = _Sample(label_placed(mask, obj, alpha, placement.class_index, ignore_index), alpha)
    if obj.any():
        labels = mask.copy()
        labels[obj] = placement.class_index
        sample.hole = hole_mask(obj, dilation)
        guide = None if source is None else (placed_pixels(image, *source, placement, band), obj)
        sample.cut = _cut(image, labels, sample.hole, size, guide)
    return sample


def _paste_back(host: np.ndarray, painted: torch.Tensor, cut: _Cut, hole: np.ndarray) -> np.ndarray:
    """A copy of `host` with `painted` (3 x S x S uint8) resized to the window put in where `hole` holds."""
    if cut.side != painted.shape[-1]:
        painted = F.interpolate(painted[None].float(), size=(cut.side, cut.side), mode="bilinear",
                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    out = host.copy()
    win = (slice(cut.top, cut.top + cut.side), slice(cut.left, cut.left + cut.side))
    out[win] = np.where(hole[win][..., None], painted.permute(1, 2, 0).cpu().numpy(), host[win])
    return out


def _tight_box(shape: np.ndarray) -> tuple[slice, slice]:
    ys, xs = np.nonzero(shape)
    if not len(ys):
        raise ValueError("an object shape must have at least one True pixel")
    return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


def paint_batch(
    generator: nn.Module, host_images: Sequence[np.ndarray], host_masks: Sequence[np.ndarray],
    placements: Sequence[Placement], obj_shapes: Sequence[np.ndarray], seeds: Sequence[int],
    sources: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, *,
    band: int = DEFAULT_BAND, dilation: int = DEFAULT_DILATION, ignore_index: int = 255, precision: str = "auto",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) per placement (module docstring): `placements[i]` of the object `obj_shapes[i]` (its label
    shape, as `ObjectComponent.shape`) into host `host_images[i]` (H x W x 3 uint8) / `host_masks[i]` (H x W),
    painted by `generator` (a crop-mode generator, e.g. from `load_generator`) with noise from `seeds[i]`. A guided
    generator needs `sources[i]`, the object's pixels and shape as `ObjectComponent.crop` gives them (any margin: only
    the object's own pixels guide), whose object must be `obj_shapes[i]`'s size; others ignore them.
    ValueError for inputs that do not match, a generator without context, a guided one without sources, or an
    object too large for its host."""
    if not len(host_images) == len(host_masks) == len(placements) == len(obj_shapes) == len(seeds):
        raise ValueError("paint_batch needs as many host images, host masks, placements, shapes and seeds")
    if not getattr(generator, "context_channels", 0):
        raise ValueError("paint needs a crop-mode generator (augment train-gan --crop); this one takes no context")
    guided = bool(getattr(generator, "guided", False))
    if guided and (sources is None or len(sources) != len(placements)):
        raise ValueError("a guided generator (train-gan --guide) paints from the source objects' pixels: pass "
                         "one source per placement")
    if guided:
        for i, ((_, crop_shape), shape) in enumerate(zip(sources, obj_shapes)):
            if crop_shape[_tight_box(crop_shape)].shape != shape[_tight_box(shape)].shape:
                raise ValueError(f"source {i}'s object is not the placed object (its box differs in size)")
    size = int(generator.size[0])
    samples = [_prepare(image, mask, placement, shape, sources[i] if guided else None, size, band, dilation,
                        ignore_index)
               for i, (image, mask, placement, shape) in enumerate(zip(host_images, host_masks, placements,
                                                                       obj_shapes))]
    todo = [i for i, s in enumerate(samples) if s.cut is not None]
    painted: dict[int, torch.Tensor] = {}
    if todo:
        cuts = [samples[i].cut for i in todo]
        context = context_input(normalize(torch.stack([c.image for c in cuts]), "tanh"),
                                torch.stack([c.hole for c in cuts]),
                                torch.stack([c.guide for c in cuts]) if guided else None)
        images = synthesise(generator, torch.stack([c.labels for c in cuts]), [int(seeds[i]) for i in todo],
                            [placements[i].class_index for i in todo], generator.num_classes, ignore_index,
                            noise_mode="global", precision=precision, context=context)
        painted = dict(zip(todo, images))
    out = []
    for i, (host, s) in enumerate(zip(host_images, samples)):
        if s.cut is None:
            out.append((host.copy(), s.mask))
        else:
            out.append((composite(host, _paste_back(host, painted[i], s.cut, s.hole), s.alpha), s.mask))
    return out


def paint(
    generator: nn.Module, host_image: np.ndarray, host_mask: np.ndarray, placement: Placement,
    obj_shape: np.ndarray, seed: int = 0, source: tuple[np.ndarray, np.ndarray] | None = None, **options,
) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): `paint_batch` of one placement (its keyword options: band, dilation, ignore_index,
    precision; `source` for a guided generator)."""
    return paint_batch(generator, [host_image], [host_mask], [placement], [obj_shape], [seed],
                       None if source is None else [source], **options)[0]
