import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from augment.training.metrics import ConfusionMatrix


def random_batches(num_classes, seed, n=3, absent=()):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        target = torch.randint(0, num_classes, (2, 17, 23), generator=g)
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target,
                           torch.randint(0, num_classes, target.shape, generator=g))
        for c in absent:
            target[target == c] = 0
            pred[pred == c] = 0
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        yield target, pred


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_matches_torchmetrics(seed):
    n = 6
    cm = ConfusionMatrix(n, ignore_index=255)
    ref = MulticlassJaccardIndex(num_classes=n, average=None, ignore_index=255)
    correct = counted = 0
    for target, pred in random_batches(n, seed, absent=(4,)):
        cm.update(target, pred)
        ref.update(pred, target)
        keep = target != 255
        correct += int((pred[keep] == target[keep]).sum())
        counted += int(keep.sum())
    acc, iou, miou = cm.compute()
    expected = ref.compute().double()
    present = [c for c in range(n) if c != 4]
    assert torch.allclose(iou[present], expected[present], atol=1e-6)
    assert math.isnan(iou[4])  # in neither target nor prediction: no IoU, not part of mIoU
    assert miou == pytest.approx(expected[present].mean().item(), abs=1e-6)
    assert acc == pytest.approx(correct / counted)


def test_hand_computed_and_to_dict():
    target = torch.tensor([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 3], [1, 0, 2, 2]])
    cm = ConfusionMatrix(5)
    cm.update(target, pred)
    out = cm.to_dict(["a", "b", "c", "d", "e"])
    # class a: tp 1, fp 1, fn 1 -> 1/3; b: tp 2, fp 1, fn 1 -> 1/2; c: 1; d, e absent (ignored pixel predicted d)
    assert out["iou"]["a"] == pytest.approx(1 / 3) and out["iou"]["b"] == pytest.approx(0.5)
    assert out["iou"]["c"] == 1.0 and out["iou"]["d"] is None and out["iou"]["e"] is None
    assert out["miou"] == pytest.approx((1 / 3 + 0.5 + 1) / 3)
    assert out["pixel_accuracy"] == pytest.approx(5 / 7) and out["pixels"] == 7
    assert out["target_pixels"] == {"a": 2, "b": 3, "c": 2, "d": 0, "e": 0}
    cm.update(torch.tensor([4]), torch.tensor([3]))  # predicted but never right: IoU 0, counts in mIoU
    assert cm.to_dict("abcde")["iou"]["d"] == 0.0 and cm.to_dict("abcde")["iou"]["e"] == 0.0


def test_empty_and_bad_predictions():
    cm = ConfusionMatrix(3)
    acc, iou, miou = cm.compute()
    assert math.isnan(acc) and math.isnan(miou) and iou.isnan().all()
    assert cm.to_dict(["x", "y", "z"])["miou"] is None
    with pytest.raises(ValueError, match="0..2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    cm.reduce_from_all_processes()  # no process group: a no-op
