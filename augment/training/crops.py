"""Training crops for crop mode (`augment train-gan --crop SIZE`): square crops around objects at the dataset's
native resolution, each with the hole the generator learns to paint.

`ObjectCrop` is a joint transform (like augment.training.transforms's) for a `TrainingStream`, so it draws from
torch's global generator, which the stream seeds per (seed, epoch, sample id): a sample's crop depends on those
alone. Per label map:
    object  a class among those in the map (not the ignore index), drawn with probability proportional to its
            weight (`rarity_weights`: rare classes more often), then one of its objects (8-connected components of at
            least `min_pixels` pixels, augment.data.objects.find_objects) uniformly; a class without such an
            object gives way to the next one drawn; a map where no class has one takes an object of any size of the
            first class drawn; a map without labelled pixels gets no object;
    window  `crop_window`: size x size, centred on the object's bounding box, or for an object that does not fit,
            on one of its pixels drawn uniformly; shifted inside the image where it would stick out;
    hole    `hole_mask`: the object dilated by `dilation` pixels (the support of
            augment.data.objects.feather_alpha), inside the window; empty when there is no object;
    flip    image, mask and hole flipped left-right with probability `hflip`.
It returns the image as 4 x size x size uint8, the RGB crop and then the hole (HOLE_ON on the object, HOLE_RING on
the rest of the hole, 0 outside), and the mask crop; `split_hole` turns a batch of such images, normalised as the
stream's batches are, into (real, hole), and `object_of` gives the object's own pixels (a guided generator's guide).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from augment.data.objects import DEFAULT_MIN_PIXELS, ObjectComponent, feather_alpha, find_objects

DEFAULT_DILATION = 3
"""Pixels the hole reaches beyond the object (at least the feathered band `paint` blends)."""
DEFAULT_TEMPERATURE = 0.5
MIN_CROP = 32
MAX_CROP = 256
HOLE_ON = 255
HOLE_RING = 160
"""The hole channel's value on the dilated ring around the object (HOLE_ON on the object itself)."""


def rarity_weights(class_pixels: Sequence[int], temperature: float = DEFAULT_TEMPERATURE) -> list[float]:
    """Per-class sampling weights share_c ** -temperature, share_c the class's fraction of all labelled pixels
    (dataset.json's class_pixels), normalised to sum to 1 over the classes that have pixels; 0 for a class without
    any. Temperature 0 weighs every present class alike, 1 by inverse pixel share."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    pixels = np.asarray(class_pixels, np.float64)
    if pixels.ndim != 1 or len(pixels) == 0 or (pixels < 0).any() or pixels.sum() <= 0:
        raise ValueError("class_pixels must be non-negative counts with at least one labelled pixel")
    present = pixels > 0
    weights = np.zeros_like(pixels)
    weights[present] = (pixels[present] / pixels.sum()) ** -temperature
    return (weights / weights.sum()).tolist()


def choose_object(
    mask: np.ndarray, weights: Sequence[float], rng: np.random.Generator, min_pixels: int = DEFAULT_MIN_PIXELS,
    ignore_index: int = 255,
) -> ObjectComponent | None:
    """An object of `mask` drawn as the module docstring says (`weights` per class), or None for a map without
    labelled pixels. Classes of weight 0 come last (all alike when every present class weighs 0). The same
    arguments and generator state give the same object."""
    w = np.asarray(weights, np.float64)
    present = np.array([int(c) for c in np.unique(mask) if c != ignore_index], np.int64)
    if not len(present):
        return None
    if present.max() >= len(w):
        raise ValueError(f"label map has label {present.max()}, but there are weights for {len(w)} classes")
    p = w[present] if (w[present] > 0).any() else np.ones(len(present))
    live = p > 0
    order = [*rng.choice(present[live], size=int(live.sum()), replace=False, p=p[live] / p[live].sum()),
             *present[~live]]
    for c in order:
        objects = find_objects(mask, int(c), min_pixels)
        if objects:
            return objects[int(rng.integers(len(objects)))]
    objects = find_objects(mask, int(order[0]))
    return objects[int(rng.integers(len(objects)))]


def crop_window(centre: tuple[float, float], size: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the size x size window centred on `centre` (row, col), shifted inside an image of
    `image_size` (H, W); ValueError when the image is smaller than the window."""
    h, w = image_size
    if h < size or w < size:
        raise ValueError(f"a {h}x{w} image is smaller than the {size}x{size} crop")
    top = int(round(centre[0] - size / 2))
    left = int(round(centre[1] - size / 2))
    return min(max(top, 0), h - size), min(max(left, 0), w - size)


def hole_mask(obj: np.ndarray, dilation: int = DEFAULT_DILATION) -> np.ndarray:
    """`obj` (bool H x W) grown by `dilation` pixels towards its 8 neighbours, as bool."""
    return feather_alpha(obj, dilation) > 0


def object_window(obj: ObjectComponent, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of the crop around `obj` (module docstring: centred on its box, or for an object that does not
    fit the crop on one of its pixels drawn from `rng`)."""
    if obj.height <= size and obj.width <= size:
        centre = (obj.top + obj.height / 2, obj.left + obj.width / 2)
    else:
        ys, xs = np.nonzero(obj.shape)
        k = int(rng.integers(len(ys)))
        centre = (obj.top + ys[k] + 0.5, obj.left + xs[k] + 0.5)
    return crop_window(centre, size, obj.image_size)


def object_map(obj: ObjectComponent) -> np.ndarray:
    """The bool map (of its label map's size) of `obj`'s pixels."""
    full = np.zeros(obj.image_size, bool)
    full[obj.top : obj.top + obj.height, obj.left : obj.left + obj.width] = obj.shape
    return full


class ObjectCrop:
    """The crop-mode joint transform (module docstring): (image 3 x H x W, mask H x W) -> (RGB + hole
    4 x size x size uint8, mask size x size uint8)."""

    def __init__(
        self, size: int, class_weights: Sequence[float], *, dilation: int = DEFAULT_DILATION,
        min_pixels: int = DEFAULT_MIN_PIXELS, hflip: float = 0.5, ignore_index: int = 255,
    ) -> None:
        if not MIN_CROP <= size <= MAX_CROP:
            raise ValueError(f"crop size must be in {MIN_CROP}..{MAX_CROP}, got {size}")
        if dilation < 0:
            raise ValueError(f"hole dilation must be >= 0, got {dilation}")
        self.size = int(size)
        self.class_weights = [float(w) for w in class_weights]
        self.dilation, self.min_pixels, self.hflip, self.ignore_index = dilation, min_pixels, hflip, ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = mask.numpy()
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        obj = choose_object(labels, self.class_weights, rng, self.min_pixels, self.ignore_index)
        s = self.size
        if obj is None:
            top, left = crop_window((labels.shape[0] / 2, labels.shape[1] / 2), s, labels.shape)
            hole = np.zeros((s, s), bool)
        else:
            top, left = object_window(obj, s, rng)
            pixels = object_map(obj)[top : top + s, left : left + s]
            hole = hole_mask(object_map(obj), self.dilation)[top : top + s, left : left + s]
        code = np.where(hole, HOLE_RING, 0).astype(np.uint8)
        if obj is not None:
            code[pixels] = HOLE_ON
        rgb = image[:, top : top + s, left : left + s]
        out = torch.cat([rgb, torch.from_numpy(code)[None]])
        crop = mask[top : top + s, left : left + s]
        if rng.random() < self.hflip:
            out, crop = out.flip(-1), crop.flip(-1)
        return out.contiguous(), crop.contiguous()


def _check_crops(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 4:
        raise ValueError(f"crop-mode images must be B x 4 x H x W (RGB + hole), got {tuple(images.shape)}")


def _threshold(images: torch.Tensor, level: float) -> float:
    """`level` (a uint8 value) in the scale of `images`: itself for integer crops, normalised to [-1, 1] (the
    "tanh" normalisation of the training stream) for floating-point ones."""
    return level / 127.5 - 1 if images.is_floating_point() else level


def split_hole(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(real B x 3 x H x W, hole B x 1 x H x W float in {0, 1}) of a batch of `ObjectCrop` images, integer or
    normalised to [-1, 1]: the hole is where the hole channel is above half of HOLE_RING."""
    _check_crops(images)
    return images[:, :3], (images[:, 3:] > _threshold(images, HOLE_RING / 2)).to(torch.float32)


def object_of(images: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W float in {0, 1}: 1 on the object itself (HOLE_ON, not the ring) of a batch of `ObjectCrop`
    images, integer or normalised to [-1, 1]."""
    _check_crops(images)
    return (images[:, 3:] > _threshold(images, (HOLE_ON + HOLE_RING) / 2)).to(torch.float32)
