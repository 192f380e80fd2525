"""The filter for insertions: region IoU in an object's dilated box, its decision, and FreeMask's pixel rule."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from augment.core.errors import AugmentError
from augment.filtering.quality import score_batch
from augment.filtering.region import (
    accept_regions,
    class_mean_losses,
    pixel_rule,
    region_iou,
    region_masks,
)
from augment.synthesis.composite import insertion_box, placed_region
from augment.synthesis.placement import Placement

IGNORE = 255


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8x8 mask with an object of class 1 at rows 2-5, cols 3-4 (the band row above it ignore) and a
    prediction that sees the object one row low, plus a stray class-1 pixel in the corner and one on the band."""
    mask = torch.zeros(8, 8, dtype=torch.uint8)
    mask[2:6, 3:5] = 1
    mask[1, 3:5] = IGNORE
    pred = torch.zeros(8, 8, dtype=torch.long)
    pred[3:7, 3:5] = 1
    pred[0, 0] = 1
    pred[1, 3] = 1
    return pred, mask


def test_region_iou_hand_computed_on_an_8x8_pair():
    pred, mask = scene()
    box = torch.tensor([[2, 3, 6, 5]])  # the object's box: rows 2..5, cols 3..4
    # margin 1: rows 1..6, cols 2..5. mask 8 px, pred 8 px (rows 3..6; the band pixel is ignore, the corner
    # outside), intersection rows 3..5 = 6 -> 6 / 10
    assert region_iou(pred[None], mask[None], box, 1, 1, IGNORE).item() == pytest.approx(0.6)
    # margin 0: the prediction's row 6 is outside -> 6 / 8
    assert region_iou(pred[None], mask[None], box, 1, 0, IGNORE).item() == pytest.approx(0.75)
    # the whole-image target IoU counts the stray corner pixel: 6 / 11
    logits = nn.functional.one_hot(pred, 2).permute(2, 0, 1)[None].float()
    assert score_batch(logits, mask[None], [1], 2, IGNORE)["target_iou"].item() == pytest.approx(6 / 11)


def test_region_iou_is_per_sample_and_zero_on_an_empty_union():
    pred, mask = scene()
    preds, masks = pred[None].repeat(3, 1, 1), mask[None].repeat(3, 1, 1)
    boxes = torch.tensor([[2, 3, 6, 5], [2, 3, 6, 5], [0, 0, 2, 2]])
    ious = region_iou(preds, masks, boxes, torch.tensor([1, 2, 1]), 1, IGNORE)
    assert ious.dtype == torch.float32 and ious.shape == (3,)
    # sample 1: class 2 is nowhere -> 0; sample 2: box rows 0..2, cols 0..2 clipped; class 1 only predicted at
    # (0, 0) (the mask's band pixel (1, 3) is outside) -> 0 / 1
    assert ious.tolist() == pytest.approx([0.6, 0.0, 0.0])
    masks[2, 0, 0] = 1
    assert region_iou(preds, masks, boxes, 1, 1, IGNORE)[2].item() == 1.0
    with pytest.raises(ValueError, match="do not fit"):
        region_iou(preds, masks[:2], boxes, 1, 1, IGNORE)


def test_region_masks_match_clipped_slices():
    rng = np.random.default_rng(0)
    top_left = torch.as_tensor(rng.integers(-4, 12, size=(16, 2)))
    boxes = torch.cat([top_left, top_left + torch.as_tensor(rng.integers(1, 6, size=(16, 2)))], 1)
    got = region_masks(boxes, (8, 10), 2)
    for b, (top, left, bottom, right) in zip(got, boxes.tolist()):
        want = np.zeros((8, 10), bool)
        want[max(top - 2, 0):max(bottom + 2, 0), max(left - 2, 0):max(right + 2, 0)] = True
        assert np.array_equal(b.numpy(), want)
    with pytest.raises(ValueError, match="margin"):
        region_masks(boxes, (8, 10), -1)
    with pytest.raises(ValueError, match="B x 4"):
        region_masks(boxes[:, :3], (8, 10), 0)


def test_accept_regions_threshold():
    ious = torch.tensor([0.0, 0.3, 0.29, 1.0])
    assert accept_regions(ious, 0.3).tolist() == [False, True, False, True]
    assert accept_regions(ious, 0).all()
    for bad in (1.5, -0.1, True, "0.3"):
        with pytest.raises(AugmentError, match="min_iou"):
            accept_regions(ious, bad)


def test_insertion_box_is_the_placed_objects_box():
    shape = np.zeros((9, 7), bool)
    shape[2:8, 1:5] = True
    shape[2, 1] = False
    placement = Placement("h", "s", 0, 1, top=5, left=6, scale=1.5, flip=True)
    obj, _ = placed_region(shape, placement, (40, 40), band=0)
    ys, xs = np.nonzero(obj)
    assert insertion_box(shape, placement) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (5, 6, 14, 12)


L4, L6, L3 = math.log(4), math.log(6), math.log(3)


def hand_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """2x3 pixels over 3 classes with known cross-entropies (see the comments)."""
    logits = torch.zeros(1, 3, 2, 3)
    logits[0, :, 0, 0] = torch.tensor([L4, 0, 0])  # label 0: CE ln 1.5
    # (0, 1): uniform, label 0: CE ln 3; (0, 2): ignore
    # (1, 0): uniform, label 1: CE ln 3
    logits[0, :, 1, 1] = torch.tensor([0, 10, 0])  # label 2 but confidently 1: CE ~10
    logits[0, :, 1, 2] = torch.tensor([L4, 0, 0])  # label 1: CE ln 6
    mask = torch.tensor([[[0, 0, IGNORE], [1, 2, 1]]], dtype=torch.uint8)
    return logits, mask


def test_pixel_rule_on_hand_made_logits():
    logits, mask = hand_logits()
    means = [0.5, 1.0, None]  # limits with k = 1.25: 0.625, 1.25, none for class 2
    out = pixel_rule(logits, mask, means, 1.25, IGNORE)
    assert out.dtype == mask.dtype and mask[0, 0, 1] == 0  # a copy
    assert out.tolist() == [[[0, IGNORE, IGNORE], [1, 2, IGNORE]]]
    # k = 2: limits 1.0 and 2.0; ln 3 > 1.0 still goes, ln 6 < 2.0 stays
    assert pixel_rule(logits, mask, means, 2.0, IGNORE).tolist() == [[[0, IGNORE, IGNORE], [1, 2, 1]]]
    # a class with a real mean is judged like the others: class 2's CE ~10 > 1.25 x 1.0
    assert pixel_rule(logits, mask, [0.5, 1.0, 1.0], 1.25, IGNORE)[0, 1, 1] == IGNORE
    with pytest.raises(AugmentError, match="k must be"):
        pixel_rule(logits, mask, means, 0, IGNORE)
    with pytest.raises(AugmentError, match="2 class means for 3 classes"):
        pixel_rule(logits, mask, means[:2], 1.25, IGNORE)


class Identity(nn.Module):
    """A segmenter whose logits are its input images (a 1x1 convolution with identity weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def test_class_mean_losses_streams_sums_and_counts_per_class():
    logits, mask = hand_logits()
    mask = mask.clone()
    mask[0, 1, 1] = 1  # class 2 gets no pixel; this one is label 1 with CE log(1 + 2 e^-10)
    small = torch.tensor([L4, 0.0, 0.0]).view(1, 3, 1, 1)  # upsampled to its 2x2 mask of class 0: 4 x ln 1.5
    model = Identity().train()
    means = class_mean_losses(model, [(logits, mask), (small, torch.zeros(1, 2, 2, dtype=torch.long))], 3, IGNORE)
    assert model.training
    json.dumps(means)
    assert means[0] == pytest.approx((5 * math.log(1.5) + L3) / 6)
    assert means[1] == pytest.approx((L3 + math.log1p(2 * math.exp(-10)) + L6) / 3)
    assert means[2] is None
    with pytest.raises(AugmentError, match="predicts 3 classes, the data has 4"):
        class_mean_losses(model, [(logits, mask)], 4, IGNORE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_with_cpu_masks_and_boxes_give_the_cpu_results():
    pred, mask = scene()
    box = torch.tensor([[2, 3, 6, 5]])
    assert region_iou(pred[None].cuda(), mask[None], box, 1, 1, IGNORE).item() == pytest.approx(0.6)
    logits, hmask = hand_logits()
    out = pixel_rule(logits.cuda(), hmask, [0.5, 1.0, None], 1.25, IGNORE)
    assert out.device.type == "cpu" and out.tolist() == pixel_rule(logits, hmask, [0.5, 1.0, None]).tolist()
    means = class_mean_losses(Identity().cuda(), [(logits, torch.zeros(1, 2, 3, dtype=torch.long))], 3, IGNORE)
    assert means[0] == pytest.approx(class_mean_losses(Identity(), [(logits, torch.zeros(1, 2, 3))], 3, IGNORE)[0],
                                     rel=1e-2)
