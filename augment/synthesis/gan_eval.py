"""GAN quality as semantic image synthesis papers report it: segment the generated images with a segmenter
trained on real data only, and score the predictions against the label maps they were generated from.

Protocol of `evaluate_generator`: every label map of the dataset is resized (nearest) to the GAN's resolution; the
EMA generator draws one image per map (noise seeded by the row's position, so a rerun gives the same images); the
segmenter sees it resized to its own training size; its logits are upsampled to the GAN's resolution and compared
with the map there, ignore pixels excluded. The same segmenter on the real images at the GAN's resolution gives the
reference ("real") that a perfect generator would reach.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from augment.data.dataset import open_dataset
from augment.core.device import pick_device
from augment.models.segmenter import predict_logits
from augment.data.drawing import colorize, render_sample_sheet, save_png
from augment.synthesis.generate import synthesise
from augment.models.store import CheckpointError, check_compatible, load_generator, load_segmenter
from augment.training.data import iter_eval_batches
from augment.training.evaluate import autocast
from augment.training.gan import spread_rows
from augment.training.metrics import ConfusionMatrix
from augment.training.transforms import normalize

SHEET_TITLES = ("label", "real", "generated", "seg. of generated")


@torch.no_grad()
def segment(model: nn.Module, images: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int],
            norm: str = "imagenet") -> torch.Tensor:
    """Class predictions B x H x W at `out_size` for uint8 images B x 3 x h x w, fed to `model` at `size`."""
    device = next(model.parameters()).device
    x = images.to(device)
    if tuple(x.shape[-2:]) != tuple(size):
        x = TF.resize(x, list(size), antialias=True)
    x = normalize(x, norm)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device):
        logits = predict_logits(model, x)
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def evaluate_generator(
    gan_run: str,
    seg_run: str,
    data_uri: str,
    batch: int = 8,
    device: torch.device | str | None = None,
    seed: int = 0,
    sheet: str | None = None,
    sheet_rows: int = 4,
) -> dict[str, Any]:
    """mIoU of the segmenter in `seg_run` on images the GAN in `gan_run` generates from `data_uri`'s label maps.

    Returns `ConfusionMatrix.to_dict` for the generated images (miou, pixel_accuracy, iou per class, ...), the same
    under "real" for the real images at the GAN's resolution, and gan, segmenter, data, rows, size. `sheet`: also
    write a PNG of `sheet_rows` rows spread over the dataset (label | real | generated | its segmentation).
    """
    device = pick_device(str(device) if device is not None else None)
    ds = open_dataset(data_uri)
    generator, gan_card = load_generator(gan_run, device)
    segmenter, seg_card = load_segmenter(seg_run, device)
    check_compatible(gan_card, ds.info, f"GAN {gan_run}")
    check_compatible(seg_card, ds.info, f"segmenter {seg_run}")
    if device.type == "cuda":
        segmenter = segmenter.to(memory_format=torch.channels_last)
    size = (int(gan_card.size[0]), int(gan_card.size[1]))
    seg_size = (int(seg_card.size[0]), int(seg_card.size[1]))
    norm = seg_card.model_config.get("normalize", "imagenet")
    info = ds.info
    generated_cm = ConfusionMatrix(info.num_classes, info.ignore_index, device=device)
    real_cm = ConfusionMatrix(info.num_classes, info.ignore_index, device=device)
    examples: list[tuple[np.ndarray, ...]] = []
    wanted = set(spread_rows(info.num_rows, sheet_rows))
    index = 0
    for b in iter_eval_batches(ds, batch, size):
        masks = b.masks.to(device)
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
        n = len(masks)
        fake = synthesise(generator, masks, [seed + index + i for i in range(n)], [0] * n,
                          info.num_classes, info.ignore_index, noise_mode="global")
        pred_fake = segment(segmenter, fake, seg_size, size, norm)
        generated_cm.update(masks, pred_fake)
        real_cm.update(masks, segment(segmenter, b.images, seg_size, size, norm))
        for i in range(n):
            if index + i not in wanted:
                continue
            examples.append((masks[i].cpu().numpy(), b.images[i].permute(1, 2, 0).numpy(),
                             fake[i].permute(1, 2, 0).cpu().numpy(), pred_fake[i].cpu().numpy()))
        index += n
    if index == 0:
        raise CheckpointError(f"{data_uri}: no rows to evaluate the GAN on")
    result = generated_cm.to_dict(info.classes)
    result["real"] = real_cm.to_dict(info.classes)
    result.update(gan=gan_run, segmenter=seg_run, data=data_uri, rows=index, size=list(size), seed=seed)
    if sheet is not None:
        write_eval_sheet(sheet, examples, gan_card.palette)
        result["sheet"] = sheet
    return result


def write_eval_sheet(path: str, examples: Sequence[tuple[np.ndarray, ...]], palette: Sequence[Sequence[int]]) -> None:
    """PNG of (mask, real, generated, prediction) rows, columns as in SHEET_TITLES."""
    masks = np.stack([e[0] for e in examples]).astype(np.uint8)
    columns = [np.stack([e[1] for e in examples]), np.stack([e[2] for e in examples]),
               np.stack([colorize(e[3], palette) for e in examples])]
    save_png(path, render_sample_sheet(masks, columns, palette, SHEET_TITLES))
