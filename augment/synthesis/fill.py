"""The three fillers of a planned insertion (`insert_plan.PlannedInsertion`): what ends up in the placed region.

`FILLERS` is the one home of the mode names a job file chooses from:
    scene   today's whole-image synthesis (`generate.synthesise`, a whole-scene generator) from the host's label map
            edited by `scene_label_map`: the placed object's pixels (scaled, flipped, clipped to the host) take its
            class, in front of whatever the host had there; nothing else changes, there is no band. The image is
            wholly synthetic, its noise the sample's `seed` alone (noise mode "global").
    paste   copy-paste, the baseline: the source object's real pixels (`composite.paste`), with the source pixels
            around it (a margin of ceil(band / scale) + 1) feeding the feathered band;
    insert  a crop-mode generator paints the object into the host (`inpaint.paint_batch`), noise from `seed`; a
            guided one (`train-gan --guide`) repaints the source object's pixels (cropped as paste crops them).
For paste and insert the written image is the host's bytes and the mask the host's labels exactly outside the
object and a feathered band of `band` pixels around it; band pixels are blended and labelled the ignore index,
object pixels carry the target class. Each filler is deterministic: the same inputs and seeds give the same bytes.

`fill_batch` fills many insertions with one generator call (scene and insert); `fill_insertion` fills one. The
source object is found again in the source map by its class and component index (`source_object`); a map that no
longer holds it raises `BadSample` (a job quarantines the sample). torch is imported only when a generator runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from augment.core.errors import AugmentError, BadSample
from augment.synthesis import SYNTHESIS_MODES
from augment.synthesis.composite import DEFAULT_BAND, label_placed, paste, placed_region
from augment.synthesis.insert_plan import PlannedInsertion, component_of
from augment.data.objects import ObjectComponent

FILLERS = SYNTHESIS_MODES


def check_filler(name: Any) -> str:
    """`name` when it is one of FILLERS, else AugmentError listing them."""
    if name not in FILLERS:
        raise AugmentError(f"filler must be one of {', '.join(FILLERS)}; got {name!r}")
    return str(name)


def source_object(source_mask: np.ndarray, planned: PlannedInsertion) -> ObjectComponent:
    """The planned object in its source map; BadSample naming the source when the map does not hold it."""
    obj = component_of(source_mask, planned.target_class, planned.placement.component)
    if obj is None:
        raise BadSample(f"no component {planned.placement.component} of class {planned.target_class} in the source "
                        f"label map (planned for {planned.sample_id})", planned.source_id)
    return obj


def scene_label_map(host_mask: np.ndarray, source_mask: np.ndarray, planned: PlannedInsertion) -> np.ndarray:
    """The host's label map with the placed object's pixels set to its class (the object in front), what the scene
    filler synthesises from."""
    obj, alpha = placed_region(source_object(source_mask, planned).shape, planned.placement, host_mask.shape, 0)
    return label_placed(host_mask, obj, alpha, planned.target_class, 0)


def _check_lengths(*columns: Sequence[Any]) -> None:
    if len({len(c) for c in columns}) != 1:
        raise ValueError("fill_batch needs as many host images, host masks, source images, source masks and "
                         "insertions")


def _source_pixels(source_image: np.ndarray | None, obj: ObjectComponent, planned: PlannedInsertion, band: int,
                   filler: str) -> tuple[np.ndarray, np.ndarray]:
    """The planned object's pixels and shape cropped from its source with the margin its band needs."""
    if source_image is None or source_image.shape[:2] != obj.image_size:
        raise ValueError(f"{filler} needs the source image of {planned.source_id}, of its label map's size")
    return obj.crop(source_image, margin=math.ceil(band / planned.placement.scale) + 1)


def _paste_one(host_image: np.ndarray, host_mask: np.ndarray, source_image: np.ndarray, source_mask: np.ndarray,
               planned: PlannedInsertion, band: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    pixels, shape = _source_pixels(source_image, source_object(source_mask, planned), planned, band, "paste")
    return paste(host_image, host_mask, pixels, shape, planned.placement, band, ignore_index)


def _scene(
    generator: Any, host_masks: Sequence[np.ndarray], source_masks: Sequence[np.ndarray],
    planned: Sequence[PlannedInsertion], ignore_index: int, precision: str,
) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    from augment.synthesis.generate import synthesise

    if getattr(generator, "context_channels", 0):
        raise ValueError("the scene filler needs a whole-scene generator; this one is a crop-mode (context) one")
    masks = [scene_label_map(h, s, p) for h, s, p in zip(host_masks, source_masks, planned)]
    size = tuple(int(s) for s in generator.size)
    wrong = next((m.shape for m in masks if m.shape != size), None)
    if wrong is not None:
        raise ValueError(f"the scene filler's generator makes {size[0]}x{size[1]} images, a host is "
                         f"{wrong[0]}x{wrong[1]}")
    images = synthesise(generator, torch.from_numpy(np.stack(masks)).long(), [p.seed for p in planned],
                        [p.target_class for p in planned], generator.num_classes, ignore_index,
                        noise_mode="global", precision=precision)
    return list(zip(images.permute(0, 2, 3, 1).cpu().numpy(), masks))


def fill_batch(
    filler: str, host_images: Sequence[np.ndarray], host_masks: Sequence[np.ndarray],
    source_images: Sequence[np.ndarray | None], source_masks: Sequence[np.ndarray],
    planned: Sequence[PlannedInsertion], generator: Any = None, *, band: int = DEFAULT_BAND,
    ignore_index: int = 255, precision: str = "auto", dilation: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image H x W x 3 uint8, mask H x W) per insertion, filled by `filler` (module docstring): `planned[i]` of
    the object in `source_masks[i]` (pixels `source_images[i]`, for paste and a guided generator) into host `host_images[i]` /
    `host_masks[i]`. scene and insert need `generator` (whole-scene, or crop-mode from `train-gan --crop`) and call
    it once; `dilation` (the insert filler's hole, default `inpaint`'s) and `band` (not used by scene) as in
    `inpaint.paint_batch`. AugmentError for an unknown filler; ValueError for inputs that do not match or a missing
    or wrong generator; BadSample for a source map without the planned object."""
    filler = check_filler(filler)
    _check_lengths(host_images, host_masks, source_images, source_masks, planned)
    if filler == "paste":
        return [_paste_one(*args, band, ignore_index)
                for args in zip(host_images, host_masks, source_images, source_masks, planned)]
    if generator is None:
        raise ValueError(f"the {filler} filler needs a generator")
    if not planned:
        return []
    if filler == "scene":
        return _scene(generator, host_masks, source_masks, planned, ignore_index, precision)
    from augment.synthesis.inpaint import paint_batch

    options: dict[str, Any] = {"band": band, "ignore_index": ignore_index, "precision": precision}
    if dilation is not None:
        options["dilation"] = dilation
    objects = [source_object(m, p) for m, p in zip(source_masks, planned)]
    sources = None
    if getattr(generator, "guided", False):
        sources = [_source_pixels(image, obj, p, band, "a guided generator")
                   for image, obj, p in zip(source_images, objects, planned)]
    return paint_batch(generator, host_images, host_masks, [p.placement for p in planned],
                       [obj.shape for obj in objects], [p.seed for p in planned], sources, **options)


def fill_insertion(
    filler: str, host_image: np.ndarray, host_mask: np.ndarray, source_image: np.ndarray | None,
    source_mask: np.ndarray, planned: PlannedInsertion, generator: Any = None, **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): `fill_batch` of one insertion (its keyword options: band, ignore_index, precision,
    dilation)."""
    return fill_batch(filler, [host_image], [host_mask], [source_image], [source_mask], [planned], generator,
                      **options)[0]
