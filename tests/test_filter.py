import numpy as np
import pytest
import torch
from PIL import Image

from augment.data.drawing import BORDER, CAPTION_H, contact_sheet, colorize, render_sheet
from augment.filtering.quality import accept, pixel_ignore_masks, score_batch
from augment.runner.jobfile import filter_config

C, IGNORE = 3, 255
MASK = torch.tensor(
    [[0, 0, 1, 1],
     [0, 0, 1, 1],
     [2, 2, IGNORE, IGNORE],
     [2, 2, 2, 2]], dtype=torch.uint8
)


def logits_for(pred: torch.Tensor, num_classes: int = C) -> torch.Tensor:
    """Logits whose argmax is `pred` (B x H x W); softmax probability of the argmax ~0.9999."""
    return torch.nn.functional.one_hot(pred.long(), num_classes).permute(0, 3, 1, 2).float() * 10


def test_perfect_prediction_scores_one():
    masks = MASK[None].repeat(2, 1, 1)
    pred = torch.where(masks == IGNORE, 0, masks.long())
    scores = score_batch(logits_for(pred), masks, [1, 2], C, IGNORE)
    for key in ("miou", "target_iou", "pixel_accuracy"):
        assert scores[key].dtype == torch.float32 and scores[key].shape == (2,)
        assert torch.allclose(scores[key], torch.ones(2)), key


def test_hand_computed_scores_and_ignored_pixels():
    pred = torch.where(MASK == IGNORE, 0, MASK.long())
    pred[0, 0:2] = 1  # two road pixels (class 0) predicted as class 1
    other = pred.clone()
    other[2, 2:4] = 2  # differs only on the ignored pixels
    scores = score_batch(logits_for(torch.stack([pred, other])), MASK[None].repeat(2, 1, 1), [1, 0], C, IGNORE)
    # class 0: inter 2, union 4 -> 1/2; class 1: inter 4, union 6 -> 2/3; class 2: 1; accuracy 12/14
    expected_miou = (0.5 + 2 / 3 + 1.0) / 3
    assert torch.allclose(scores["miou"], torch.tensor([expected_miou] * 2))
    assert torch.allclose(scores["target_iou"], torch.tensor([2 / 3, 0.5]))
    assert torch.allclose(scores["pixel_accuracy"], torch.tensor([12 / 14] * 2))


def test_missing_or_absent_target_gives_zero_target_iou():
    masks = MASK[None].repeat(2, 1, 1)
    no_class_2 = torch.where(masks == 2, 0, torch.where(masks == IGNORE, 0, masks.long()))
    scores = score_batch(logits_for(no_class_2), masks, [2, 1], C, IGNORE)
    assert scores["target_iou"][0] == 0 and scores["target_iou"][1] == 1
    # class 0 IoU 4/10, class 1 1, class 2 0
    assert torch.allclose(scores["miou"][0], torch.tensor((0.4 + 1 + 0) / 3))
    absent = torch.zeros(1, 4, 4, dtype=torch.uint8)
    assert score_batch(logits_for(absent), absent, [2], C, IGNORE)["target_iou"].item() == 0
    unlabelled = torch.full((1, 4, 4), IGNORE, dtype=torch.uint8)
    s = score_batch(logits_for(absent), unlabelled, [0], C, IGNORE)
    assert s["miou"].item() == s["pixel_accuracy"].item() == s["target_iou"].item() == 0
    with pytest.raises(ValueError, match="do not fit"):
        score_batch(torch.zeros(1, C, 4, 5), absent, [0], C, IGNORE)


def test_accept_thresholds_are_inclusive():
    scores = {
        "miou": torch.tensor([0.5, 0.49, 0.9, 0.9]),
        "target_iou": torch.tensor([0.3, 0.9, 0.29, 0.9]),
        "pixel_accuracy": torch.tensor([0.1, 0.9, 0.9, 0.05]),
    }
    cfg = filter_config({"min_miou": 0.5, "min_target_iou": 0.3, "min_pixel_accuracy": 0.1})
    assert accept(scores, cfg).tolist() == [True, False, False, False]
    assert accept(scores, filter_config({"min_miou": 0.0, "min_target_iou": 0.0})).tolist() == [True] * 4


def test_pixel_ignore_marks_only_confident_disagreement():
    mask = torch.tensor([[[0, 1, 2, IGNORE]]], dtype=torch.uint8)
    probs = torch.tensor([
        [0.03, 0.95, 0.02],  # class 0 pixel, predicted 1 with 0.95 -> confident disagreement
        [0.60, 0.30, 0.10],  # class 1 pixel, predicted 0 with 0.60 -> not confident
        [0.02, 0.02, 0.96],  # class 2 pixel, predicted 2 confidently -> agreement
        [0.98, 0.01, 0.01],  # ignored pixel stays ignored
    ])
    probs = probs / probs.sum(1, keepdim=True)
    logits = probs.log().T.reshape(1, C, 1, 4)
    out = pixel_ignore_masks(logits, mask, filter_config({"ignore_confidence": 0.9}), IGNORE)
    assert out.dtype == mask.dtype and out.tolist() == [[[IGNORE, 1, 2, IGNORE]]]
    assert mask.tolist() == [[[0, 1, 2, IGNORE]]]
    loose = pixel_ignore_masks(logits, mask, filter_config({"ignore_confidence": 0.5}), IGNORE)
    assert loose.tolist() == [[[IGNORE, IGNORE, 2, IGNORE]]]


PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60]]


def test_colorize():
    mask = np.array([[0, 1], [2, IGNORE]], np.uint8)
    assert colorize(mask, PALETTE).tolist() == [[[128, 64, 128], [0, 0, 142]], [[220, 20, 60], [0, 0, 0]]]


@pytest.mark.parametrize("h, w, panel", [(32, 32, (96, 96)), (64, 48, (128, 96))])
def test_contact_sheet_grid(tmp_path, h, w, panel):
    rng = np.random.default_rng(0)
    rows = [
        (rng.integers(0, 3, (h, w)).astype(np.uint8), rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
         rng.integers(0, 3, (h, w)).astype(np.uint8), i != 1, f"car {i} miou 0.{i}")
        for i in range(3)
    ]
    path = tmp_path / "sheets" / "car.png"
    contact_sheet(rows, PALETTE, str(path))
    sheet = np.asarray(Image.open(path))
    ph, pw = panel
    row_h = CAPTION_H + ph + 2 * BORDER
    assert sheet.shape == (CAPTION_H + 3 * row_h, 3 * pw + 4 * BORDER, 3)
    assert np.array_equal(sheet, render_sheet(rows, PALETTE))
    for r, colour in enumerate([(40, 170, 60), (210, 40, 40), (40, 170, 60)]):
        top = CAPTION_H + r * row_h
        assert tuple(sheet[top + CAPTION_H + 1, 0]) == colour
    top = CAPTION_H + CAPTION_H + BORDER
    assert np.array_equal(sheet[top : top + ph, BORDER : BORDER + pw], colorize(np.kron(rows[0][0], np.ones(
        (ph // h, pw // w), np.uint8)), PALETTE))
    with pytest.raises(ValueError, match="at least one row"):
        render_sheet([], PALETTE)


def test_confusion_matrices_match_a_plain_count():
    from augment.filtering.quality import confusion_matrices

    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 5, (3, 6, 7), generator=g)  # labels 3, 4 are out of range for C = 3
    masks[0, 0] = IGNORE
    pred = torch.randint(0, 3, (3, 6, 7), generator=g)
    expected = torch.zeros(3, C, C, dtype=torch.long)
    for b, t, p in zip(*[x.reshape(-1).tolist() for x in (torch.arange(3).view(3, 1, 1).expand_as(masks), masks, pred)]):
        if t < C:
            expected[b, t, p] += 1
    assert torch.equal(confusion_matrices(pred, masks.to(torch.uint8), C, IGNORE), expected)
