"""Compositing placed objects into real hosts (augment/synthesis/composite.py): host bytes kept, band ignored."""

import numpy as np
import pytest

from augment.data.objects import feather_alpha
from augment.synthesis.composite import composite, label_placed, paste, placed_region, scale_pixels
from augment.synthesis.placement import Placement, scale_shape

IGNORE = 255
CLS = 5


def test_feather_alpha_falls_off_by_chessboard_distance():
    shape = np.zeros((7, 7), bool)
    shape[3, 3] = True
    alpha = feather_alpha(shape, band=2)
    expected = np.zeros((7, 7), np.float32)
    expected[1:6, 1:6] = 1 / 3
    expected[2:5, 2:5] = 2 / 3
    expected[3, 3] = 1
    np.testing.assert_allclose(alpha, expected, rtol=1e-6)
    assert np.array_equal(feather_alpha(shape, band=0), shape.astype(np.float32))
    with pytest.raises(ValueError, match="band"):
        feather_alpha(shape, -1)


def test_composite_keeps_host_and_painted_bytes_exactly_and_blends_between():
    host = np.full((2, 2, 3), 10, np.uint8)
    painted = np.full((2, 2, 3), 200, np.uint8)
    alpha = np.array([[0, 1], [0.5, 0.25]], np.float32)
    out = composite(host, painted, alpha)
    assert out[0, 0].tolist() == [10] * 3 and out[0, 1].tolist() == [200] * 3
    assert out[1, 0].tolist() == [105] * 3 and out[1, 1].tolist() == [round(10 * 0.75 + 200 * 0.25)] * 3
    with pytest.raises(ValueError, match="do not match"):
        composite(host, painted, alpha[:1])


def test_label_placed_puts_the_object_in_front_and_ignores_the_band():
    host = np.zeros((3, 3), np.uint8)
    obj = np.zeros((3, 3), bool)
    obj[1, 1] = True
    alpha = np.zeros((3, 3), np.float32)
    alpha[:2, :2] = 0.5
    alpha[1, 1] = 1
    out = label_placed(host, obj, alpha, CLS, IGNORE)
    assert out.tolist() == [[IGNORE, IGNORE, 0], [IGNORE, CLS, 0], [0, 0, 0]]


def _object(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular 6 x 4 object inside a crop with a 2-pixel margin of source context, random pixels."""
    shape = np.zeros((10, 8), bool)
    shape[2:8, 3:5] = True
    shape[4, 2:6] = True
    shape[7, 2] = True
    return rng.integers(0, 256, (10, 8, 3), dtype=np.uint8), shape


def _host(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 4, (32, 32)).astype(np.uint8)


@pytest.mark.parametrize("flip", [False, True])
def test_paste_keeps_the_host_outside_the_object_and_band(flip):
    rng = np.random.default_rng(0)
    host_image, host_mask = _host(rng)
    obj_image, obj_shape = _object(rng)
    p = Placement("h", "s", 0, CLS, top=10, left=12, scale=1.0, flip=flip)
    image, mask = paste(host_image, host_mask, obj_image, obj_shape, p, band=3, ignore_index=IGNORE)

    obj, alpha = placed_region(obj_shape, p, host_mask.shape, band=3)
    outside = alpha == 0
    band = (alpha > 0) & ~obj
    assert obj.sum() == obj_shape.sum() and band.sum() > 0
    assert np.array_equal(image[outside], host_image[outside])
    assert np.array_equal(mask[outside], host_mask[outside])
    assert (mask[band] == IGNORE).all()
    assert (mask[obj] == CLS).all()
    # at scale 1 the object's own pixels come through unchanged (flipped with the placement)
    tight = obj_image[2:8, 2:6]
    shape = obj_shape[2:8, 2:6]
    if flip:
        tight, shape = tight[:, ::-1], shape[:, ::-1]
    assert np.array_equal(obj[10:16, 12:16], shape)
    assert np.array_equal(image[10:16, 12:16][shape], tight[shape])
    # the band blends source context with the host: neither alone where 0 < alpha < 1
    one = band & (alpha < 1)
    assert not np.array_equal(image[one], host_image[one])


def test_paste_clips_objects_at_the_border():
    rng = np.random.default_rng(1)
    host_image, host_mask = _host(rng)
    obj_image, obj_shape = _object(rng)
    p = Placement("h", "s", 0, CLS, top=-2, left=29, scale=1.0, flip=False)
    image, mask = paste(host_image, host_mask, obj_image, obj_shape, p, band=2, ignore_index=IGNORE)
    inside = obj_shape[2:8, 2:6][2:, :3]  # rows 0..3 and columns 29..31 of the host
    assert np.array_equal(mask[0:4, 29:32] == CLS, inside)
    assert (mask == CLS).sum() == inside.sum()
    _, alpha = placed_region(obj_shape, p, host_mask.shape, band=2)
    assert np.array_equal(image[alpha == 0], host_image[alpha == 0])
    assert (mask[:, :26] == host_mask[:, :26]).all() and (mask[7:] == host_mask[7:]).all()
    gone = Placement("h", "s", 0, CLS, top=40, left=40, scale=1.0, flip=False)
    image, mask = paste(host_image, host_mask, obj_image, obj_shape, gone)
    assert np.array_equal(image, host_image) and np.array_equal(mask, host_mask)


def test_scaled_paste_covers_the_scaled_shape():
    rng = np.random.default_rng(2)
    host_image, host_mask = _host(rng)
    obj_image, obj_shape = _object(rng)
    p = Placement("h", "s", 0, CLS, top=4, left=6, scale=2.0, flip=True)
    image, mask = paste(host_image, host_mask, obj_image, obj_shape, p, band=3, ignore_index=IGNORE)
    expected = scale_shape(obj_shape[2:8, 2:6], 2.0, flip=True)
    assert expected.shape == (12, 8)
    assert np.array_equal(mask[4:16, 6:14] == CLS, expected)
    assert (mask == CLS).sum() == expected.sum()
    _, alpha = placed_region(obj_shape, p, host_mask.shape, band=3)
    assert np.array_equal(image[alpha == 0], host_image[alpha == 0])


def test_scale_pixels_makes_a_canvas_of_the_scaled_box_and_band():
    obj_image = np.full((6, 4, 3), 77, np.uint8)
    obj_shape = np.zeros((6, 4), bool)
    obj_shape[1:5, 1:3] = True
    canvas = scale_pixels(obj_image, obj_shape, 0.5, False, band=2)
    assert canvas.shape == (2 + 4, 1 + 4, 3)
    assert (canvas == 77).all()  # a constant source stays constant, the band fed by repeated edges
    ramp = np.repeat(np.arange(0, 240, 40, dtype=np.uint8)[:, None], 4, axis=1)[..., None].repeat(3, axis=2)
    canvas = scale_pixels(ramp, obj_shape, 1.0, False, band=1)
    assert canvas[:, 0, 0].tolist() == [0, 40, 80, 120, 160, 200]  # the band shows the source's own context
    with pytest.raises(ValueError, match="differ"):
        scale_pixels(obj_image[:5], obj_shape, 1.0, False, band=1)
    with pytest.raises(ValueError, match="at least one"):
        scale_pixels(obj_image, np.zeros((6, 4), bool), 1.0, False, band=1)
