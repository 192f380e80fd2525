"""The built-in procedural street-scene dataset."""

from __future__ import annotations

import numpy as np
import pytest

from augment.data.example import CLASSES, IGNORE_INDEX, PALETTE, generate, render_sample, render_scene
from augment.core.errors import AugmentError

RARE = ("pole", "sign_symbol", "fence", "pedestrian", "bicyclist")


@pytest.fixture(scope="module")
def batch() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return list(generate(50, (64, 64), seed=0))


def _share(batch) -> tuple[np.ndarray, np.ndarray]:
    counts = np.zeros(256)
    present = np.zeros(256)
    for _, _, mask in batch:
        c = np.bincount(mask.ravel(), minlength=256)
        counts += c
        present += c > 0
    return counts / counts.sum(), present / len(batch)


def test_constants_match_camvid():
    assert CLASSES == ("sky", "building", "pole", "road", "pavement", "tree",
                       "sign_symbol", "fence", "car", "pedestrian", "bicyclist")
    assert len(PALETTE) == len(CLASSES)
    assert PALETTE[CLASSES.index("road")] == (128, 64, 128)
    assert PALETTE[CLASSES.index("bicyclist")] == (0, 128, 192)
    assert IGNORE_INDEX == 255


def test_deterministic_for_a_seed():
    first = list(generate(4, (48, 64), seed=3))
    second = list(generate(4, (48, 64), seed=3))
    for (id_a, img_a, mask_a), (id_b, img_b, mask_b) in zip(first, second):
        assert id_a == id_b
        assert img_a.tobytes() == img_b.tobytes()
        assert mask_a.tobytes() == mask_b.tobytes()


def test_sample_independent_of_order_and_sharding():
    full = list(generate(5, (40, 56), seed=11))
    for i in (4, 2, 0):
        sid, img, mask = render_sample(i, (40, 56), seed=11)
        assert sid == full[i][0] == f"example/{i:06d}"
        assert np.array_equal(img, full[i][1]) and np.array_equal(mask, full[i][2])
    img, mask = render_scene(np.random.default_rng([11, 3]), (40, 56))
    assert np.array_equal(img, full[3][1]) and np.array_equal(mask, full[3][2])


def test_different_seeds_and_samples_differ():
    _, img_a, mask_a = render_sample(0, (48, 48), seed=0)
    _, img_b, mask_b = render_sample(0, (48, 48), seed=1)
    _, img_c, _ = render_sample(1, (48, 48), seed=0)
    assert not np.array_equal(img_a, img_b)
    assert not np.array_equal(mask_a, mask_b)
    assert not np.array_equal(img_a, img_c)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (40, 96), (96, 40)])
def test_shapes_dtypes_and_label_range(size):
    for sid, img, mask in generate(3, size, seed=2):
        assert sid.startswith("example/")
        assert img.shape == (*size, 3) and img.dtype == np.uint8
        assert mask.shape == size and mask.dtype == np.uint8
        labels = np.unique(mask)
        assert np.all((labels < len(CLASSES)) | (labels == IGNORE_INDEX)), labels


def test_layout_does_not_depend_on_resolution():
    for i in range(4):
        _, _, small = render_sample(i, (48, 64), seed=5)
        _, _, large = render_sample(i, (96, 128), seed=5)
        assert (small == large[::2, ::2]).mean() > 0.9


def test_class_balance_is_camvid_like(batch):
    share, present = _share(batch)
    for k, name in enumerate(CLASSES):
        assert present[k] > 0, f"{name} never appears in 50 images"
    for name in ("sky", "road", "building"):
        assert share[CLASSES.index(name)] > 0.08, (name, share[CLASSES.index(name)])
    for name in RARE:
        k = CLASSES.index(name)
        assert 0.0005 < share[k] < 0.03, (name, share[k])
        assert present[k] < 0.95, (name, present[k])
    assert share[IGNORE_INDEX] < 0.01


def test_appearance_depends_on_class(batch):
    images = np.stack([img for _, img, _ in batch]).astype(np.float64)
    masks = np.stack([mask for _, _, mask in batch])
    means = {name: images[masks == k].mean(axis=0) for k, name in enumerate(CLASSES)}
    assert np.linalg.norm(means["sky"] - means["road"]) > 40
    assert means["sky"].sum() > means["road"].sum()
    r, g, b = means["tree"]
    assert g > r and g > b, means["tree"]
    brighter = [img[mask == 0].mean() > img[mask == 3].mean()
                for (_, img, mask) in batch if (mask == 0).any() and (mask == 3).any()]
    assert np.mean(brighter) > 0.8


def test_textures_vary_within_a_class(batch):
    _, img, mask = batch[0]
    road = img[mask == CLASSES.index("road")].astype(np.float64)
    assert road.std(axis=0).mean() > 2.0


@pytest.mark.parametrize("bad", [(8, 64), (64, 0), (64,), (64.5, 64), "64x64"])
def test_bad_size_is_a_clear_error(bad):
    with pytest.raises(AugmentError, match="size"):
        generate(1, bad)


def test_bad_count_or_seed_is_a_clear_error():
    with pytest.raises(AugmentError, match="count"):
        generate(-1)
    with pytest.raises(AugmentError, match="seed"):
        generate(1, seed=-2)
