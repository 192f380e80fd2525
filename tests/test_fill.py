"""The fillers (augment/synthesis/fill.py) and the insertion contact sheets (augment/synthesis/insertion_sheets.py)."""

import numpy as np
import pytest
import torch

from augment.data import example
from augment.core.errors import AugmentError, BadSample
from augment.models.gan import GANConfig, build_generator
from augment.synthesis.insertion_sheets import (
    BOX_RGB, COLUMNS, InsertionRow, closeup, insertion_row, insertion_sheets, object_panel, render_insertion_sheet,
)
from augment.data.drawing import ACCEPTED_RGB, BORDER, CAPTION_H, REJECTED_RGB, panel_size
from augment.synthesis.composite import placed_region
from augment.synthesis.fill import (
    DEFAULT_BAND, FILLERS, check_filler, fill_batch, fill_insertion, scene_label_map, source_object,
)
from augment.synthesis.insert_plan import PlannedInsertion, plan_insertions
from augment.synthesis.placement import fit_context

SIZE = (64, 96)
IGNORE = example.IGNORE_INDEX
TINY = {"g_width": 8, "d_width": 16, "spade_hidden": 16, "z_dim": 8}
N_CLASSES = len(example.CLASSES)


@pytest.fixture(scope="module")
def scenes():
    data = list(example.generate(12, SIZE, seed=1))
    return {sid: m for sid, _, m in data}, {sid: im for sid, im, _ in data}


@pytest.fixture(scope="module")
def plan(scenes):
    masks, _ = scenes
    ctx = fit_context(masks.values(), N_CLASSES, IGNORE, min_pixels=8)
    quotas = {example.PEDESTRIAN: 3, example.CAR: 3}
    return plan_insertions(masks, quotas, ctx, 0, class_names=example.CLASSES, min_pixels=8)


def _generator(context: bool, size: tuple[int, int]) -> torch.nn.Module:
    """An untrained generator whose weights are drawn large enough that its images depend on labels and noise
    (at initialisation it paints a near-constant grey)."""
    torch.manual_seed(0)
    generator = build_generator(GANConfig(num_classes=N_CLASSES, size=size, context=context, **TINY)).eval()
    with torch.no_grad():
        for p in generator.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return generator


@pytest.fixture(scope="module")
def painter():
    return _generator(True, (32, 32))


def _inputs(scenes, p: PlannedInsertion):
    masks, images = scenes
    return images[p.host_id], masks[p.host_id], images[p.source_id], masks[p.source_id]


def _fill(filler, scenes, p, generator=None, **kw):
    return fill_insertion(filler, *_inputs(scenes, p), p, generator, precision="fp32", **kw)


def test_filler_names_have_one_home():
    assert FILLERS == ("scene", "paste", "insert")
    assert [check_filler(f) for f in FILLERS] == list(FILLERS)
    with pytest.raises(AugmentError, match="filler must be one of scene, paste, insert; got 'copy'"):
        check_filler("copy")


@pytest.mark.parametrize("filler", ["paste", "insert"])
def test_paste_and_insert_keep_the_host_outside_object_and_band(scenes, plan, painter, filler):
    assert len(plan) >= 4
    for p in plan.insertions:
        host_image, host_mask, _, source_mask = _inputs(scenes, p)
        image, mask = _fill(filler, scenes, p, painter)
        obj, alpha = placed_region(source_object(source_mask, p).shape, p.placement, SIZE, DEFAULT_BAND)
        outside = alpha == 0
        assert obj.any() and image.dtype == np.uint8 and image.shape == host_image.shape
        assert np.array_equal(image[outside], host_image[outside])
        assert np.array_equal(mask[outside], host_mask[outside])
        assert (mask[obj] == p.target_class).all()
        assert (mask[(alpha > 0) & ~obj] == IGNORE).all()
        assert not np.array_equal(image[obj], host_image[obj])
        again = _fill(filler, scenes, p, painter)
        assert np.array_equal(again[0], image) and np.array_equal(again[1], mask)


def test_paste_writes_the_source_object_pixels(scenes, plan):
    masks, images = scenes
    q = plan.insertions[0].placement  # the same placement unscaled and unflipped: the bytes are the source's
    p = PlannedInsertion("ins/x", 1, type(q)(**{**q.to_dict(), "scale": 1.0, "flip": False}))
    obj = source_object(masks[p.source_id], p)
    image, _ = _fill("paste", scenes, p)
    placed, _ = placed_region(obj.shape, p.placement, SIZE, 0)
    ys, xs = np.nonzero(obj.shape)
    src = images[p.source_id][obj.top + ys, obj.left + xs]
    top, left = p.placement.top, p.placement.left
    inside = (top + ys >= 0) & (top + ys < SIZE[0]) & (left + xs >= 0) & (left + xs < SIZE[1])
    assert np.array_equal(image[top + ys[inside], left + xs[inside]], src[inside])


def test_insert_batch_is_one_at_a_time_and_seeds_matter(scenes, plan, painter):
    chosen = plan.insertions[:4]
    batch = fill_batch("insert", *zip(*[_inputs(scenes, p) for p in chosen]), chosen, painter, precision="fp32")
    for p, (image, mask) in zip(chosen, batch):
        alone = _fill("insert", scenes, p, painter)
        assert np.array_equal(alone[0], image) and np.array_equal(alone[1], mask)
    p = chosen[0]
    reseeded = PlannedInsertion(p.sample_id, p.seed + 1, p.placement)
    assert not np.array_equal(_fill("insert", scenes, reseeded, painter)[0], batch[0][0])


def test_scene_synthesises_the_host_map_with_the_object_in_front(scenes, plan):
    masks, _ = scenes
    generator = _generator(False, SIZE)
    chosen = plan.insertions[:3]
    batch = fill_batch("scene", *zip(*[_inputs(scenes, p) for p in chosen]), chosen, generator, precision="fp32")
    for p, (image, mask) in zip(chosen, batch):
        obj, _ = placed_region(source_object(masks[p.source_id], p).shape, p.placement, SIZE, 0)
        edited = scene_label_map(masks[p.host_id], masks[p.source_id], p)
        assert np.array_equal(mask, edited)
        assert (edited[obj] == p.target_class).all() and np.array_equal(edited[~obj], masks[p.host_id][~obj])
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert np.array_equal(_fill("scene", scenes, p, generator)[0], image)
    with pytest.raises(ValueError, match="whole-scene generator"):
        _fill("scene", scenes, chosen[0], _generator(True, (32, 32)))
    with pytest.raises(ValueError, match="makes 32x48 images, a host is 64x96"):
        _fill("scene", scenes, chosen[0], _generator(False, (32, 48)))


def test_filler_errors(scenes, plan):
    p = plan.insertions[0]
    with pytest.raises(ValueError, match="the insert filler needs a generator"):
        _fill("insert", scenes, p)
    with pytest.raises(AugmentError, match="filler must be one of"):
        _fill("blend", scenes, p)
    gone = PlannedInsertion(p.sample_id, p.seed, type(p.placement)(**{**p.placement.to_dict(), "component": 99}))
    with pytest.raises(BadSample, match=f"{p.source_id}: no component 99 of class {p.target_class}"):
        _fill("paste", scenes, gone)
    with pytest.raises(ValueError, match="as many"):
        fill_batch("paste", [], [], [], [], [p])


def test_insertion_sheet_rows(scenes, plan):
    masks, images = scenes
    rows, chosen = [], plan.insertions
    for i, p in enumerate(chosen):
        result, mask = _fill("paste", scenes, p)
        rows.append(insertion_row(p, images[p.host_id], images[p.source_id], masks[p.source_id], result, mask,
                                  accepted=i % 2 == 0))
    assert rows[0].caption.startswith(f"{chosen[0].sample_id}  {chosen[0].source_id} -> {chosen[0].host_id}")
    obj, _ = placed_region(source_object(masks[chosen[0].source_id], chosen[0]).shape, chosen[0].placement, SIZE, 0)
    ys, xs = np.nonzero(obj)
    assert rows[0].box == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    sheet = render_insertion_sheet(rows[:2], example.PALETTE)
    ph, pw = panel_size(*SIZE)
    row_h = CAPTION_H + ph + 2 * BORDER
    assert sheet.shape == (CAPTION_H + 2 * row_h, len(COLUMNS) * (pw + BORDER) + BORDER, 3)
    assert tuple(sheet[CAPTION_H + 1, 1]) == ACCEPTED_RGB and tuple(sheet[CAPTION_H + row_h + 1, 1]) == REJECTED_RGB
    panel_top = CAPTION_H + CAPTION_H + BORDER
    host_panel = sheet[panel_top : panel_top + ph, BORDER : BORDER + pw]
    assert np.array_equal(host_panel[:: ph // SIZE[0], :: pw // SIZE[1]], images[chosen[0].host_id])
    left = BORDER + 2 * (pw + BORDER)
    result_panel = sheet[panel_top : panel_top + ph, left : left + pw]
    f = ph // SIZE[0]
    outline = (result_panel == BOX_RGB).all(axis=2)
    top, lft, bottom, right = rows[0].box
    assert outline[max(top - 1, 0) * f, max(lft - 1, 0) * f] and not outline[top * f + 1, lft * f + 1]
    left = BORDER + 3 * (pw + BORDER)
    near_panel = sheet[panel_top : panel_top + ph, left : left + pw]
    near = closeup(rows[0].result, rows[0].box)
    margin = max(DEFAULT_BAND, max(bottom - top, right - lft) // 2)
    assert np.array_equal(near, rows[0].result[max(top - margin, 0) : bottom + margin,
                                               max(lft - margin, 0) : right + margin])
    assert np.array_equal(near_panel, object_panel(near, np.ones(near.shape[:2], bool), (ph, pw)))
    sheets = insertion_sheets(chosen, rows, example.PALETTE, example.CLASSES)
    assert list(sheets) == sorted({example.CLASSES[p.target_class] for p in chosen},
                                  key=example.CLASSES.index)
    with pytest.raises(ValueError, match="must all be"):
        render_insertion_sheet([rows[0], InsertionRow(rows[0].host[:32], rows[0].object_image, rows[0].object_shape,
                                                       rows[0].result, rows[0].prediction, True, "bad")],
                               example.PALETTE)


def test_object_panel_keeps_the_aspect_and_dims_the_surroundings():
    image = np.full((10, 4, 3), 200, np.uint8)
    shape = np.zeros((10, 4), bool)
    shape[2:8, 1:3] = True
    panel = object_panel(image, shape, (20, 20))
    painted = (panel != 255).any(axis=2)
    ys, xs = np.nonzero(painted)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (0, 20, 6, 14)  # 10x4 fitted to 20x8, centred
    assert tuple(panel[10, 9]) == (200, 200, 200) and tuple(panel[0, 6]) == (70, 70, 70)
