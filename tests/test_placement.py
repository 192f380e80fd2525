"""Placement from the data (augment/synthesis/placement.py): components, the learnt context, where objects go."""

import json
from collections import deque

import numpy as np
import pytest

from augment.data import example
from augment.core.errors import AugmentError
from augment.data.objects import find_objects
from augment.synthesis.composite import placed_region
from augment.synthesis.placement import (
    Placement, PlacementContext, contact_pixels, fit_context, perspective_scale, place, scale_shape,
)

IGNORE = 255


def test_components_of_a_hand_drawn_map():
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 1:3] = 3        # blob A: a 2x2 square ...
    m[3, 3] = 3            # ... and a pixel touching it only diagonally (8-connected: the same component)
    m[5:9, 7] = 3          # blob B: a U shape whose arms meet only at the bottom row
    m[5:9, 10] = 3
    m[8, 8:10] = 3
    m[0, 11] = 3           # a single pixel in the corner
    m[6:8, 2:5] = 1        # one blob of class 1
    m[4, 0] = IGNORE

    objs = find_objects(m, 3)
    assert [(o.index, o.bbox, o.pixels, o.bottom) for o in objs] == [
        (0, (0, 11, 1, 12), 1, 0),
        (1, (1, 1, 4, 4), 5, 3),
        (2, (5, 7, 9, 11), 10, 8),
    ]
    assert objs[1].centre_col == pytest.approx(1 + (0 + 1 + 0 + 1 + 2) / 5)
    assert objs[2].shape.tolist() == [[True, False, False, True]] * 3 + [[True] * 4]
    assert all(o.class_index == 3 and o.image_size == (10, 12) for o in objs)
    assert objs[2].row == pytest.approx(8.5 / 10)

    big = find_objects(m, 3, min_pixels=2)
    assert [o.index for o in big] == [1, 2]  # indices name components whatever the size filter
    ones = find_objects(m, 1)
    assert [(o.bbox, o.pixels) for o in ones] == [((6, 2, 8, 5), 6)]
    assert find_objects(m, 7) == []


def _bfs_components(mask: np.ndarray, value: int) -> set[frozenset]:
    """Reference: 8-connected components of `value` by breadth-first search."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    out = set()
    for y in range(h):
        for x in range(w):
            if mask[y, x] != value or seen[y, x]:
                continue
            comp, todo = set(), deque([(y, x)])
            seen[y, x] = True
            while todo:
                cy, cx = todo.popleft()
                comp.add((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and mask[ny, nx] == value:
                            seen[ny, nx] = True
                            todo.append((ny, nx))
            out.add(frozenset(comp))
    return out


def test_components_match_a_breadth_first_search_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.integers(0, 3, (13, 17)).astype(np.uint8)
        got = {frozenset((o.top + y, o.left + x) for y, x in zip(*np.nonzero(o.shape))) for o in find_objects(m, 1)}
        assert got == _bfs_components(m, 1)


def test_contact_pixels_are_the_bottom_boundary_within_the_foot():
    shape = np.array([[1, 1, 1, 0],
                      [1, 0, 1, 0],
                      [1, 0, 1, 1],
                      [1, 0, 0, 1]], bool)
    ys, xs = contact_pixels(shape, foot=0.5)  # the lowest 2 rows
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(2, 2), (3, 0), (3, 3)]
    ys, xs = contact_pixels(shape, foot=0.1)  # at least the lowest row
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(3, 0), (3, 3)]


# A synthetic world of 32x32 maps: sky (0) in rows 0-8, below it ground G (2) on the left half and B (3) on the right.
# Class A (1) always stands on G, class C (4) on B; their heights follow height = a * (bottom - 8) with a = 1/2
# and 1, i.e. a horizon at normalised row 8.5 / 32.
SKY, A, G, B, C = range(5)
H = W = 32
HORIZON = 8.5 / 32
BOTTOMS = (12, 16, 20, 24, 28)


def _world(a_bottom: int, c_bottom: int) -> np.ndarray:
    m = np.full((H, W), SKY, np.uint8)
    m[9:, :16] = G
    m[9:, 16:] = B
    m[a_bottom - (a_bottom - 8) // 2 + 1 : a_bottom + 1, 4:7] = A
    m[c_bottom - (c_bottom - 8) + 1 : c_bottom + 1, 22:25] = C
    return m


@pytest.fixture(scope="module")
def world() -> list[np.ndarray]:
    return [_world(a, c) for a, c in zip(BOTTOMS, BOTTOMS[::-1])]


@pytest.fixture(scope="module")
def world_context(world) -> PlacementContext:
    return fit_context(world, 5, IGNORE, min_pixels=2)


def test_the_context_learns_ground_rows_and_horizon(world_context):
    ctx = world_context
    assert ctx.ground[A] == [0, 0, 1, 0, 0]
    assert ctx.ground[C] == [0, 0, 0, 1, 0]
    assert ctx.ground_classes(A) == [G] and ctx.ground_classes(C) == [B]
    assert ctx.objects[A] == ctx.objects[C] == len(BOTTOMS)
    expected = np.zeros(20)
    for b in BOTTOMS:
        expected[int((b + 0.5) / H * 20)] += 1 / len(BOTTOMS)
    assert ctx.rows[A] == pytest.approx(expected.tolist())
    assert ctx.objects[G] == 0  # ground touches the bottom edge: its bottom is unknown, it is not counted
    assert ctx.horizon == pytest.approx(HORIZON, abs=1e-3)


def test_no_horizon_without_classes_that_shrink_towards_it(world):
    flat = [np.where(m == C, B, m) for m in world]  # A alone, and fewer than min_objects: no class to fit
    assert fit_context(flat[:3], 5, IGNORE, min_pixels=2).horizon is None


def test_a_label_outside_the_classes_names_the_map(world):
    bad = world[1].copy()
    bad[0, 0] = 9
    with pytest.raises(ValueError, match="label map 1 has label 9"):
        fit_context([world[0], bad], 5, IGNORE)


def _lands_on(placement: Placement, obj, host: np.ndarray, grounds: list[int]) -> bool:
    """Whether every contact pixel of the placed object has a ground class directly below it in `host`."""
    shape = scale_shape(obj.shape, placement.scale, placement.flip)
    ys, xs = contact_pixels(shape, 0.1)
    below = host[placement.top + ys + 1, placement.left + xs]
    return len(ys) > 0 and bool(np.isin(below, grounds).all())


def test_placements_stand_on_the_learnt_ground(world, world_context):
    host = np.full((H, W), SKY, np.uint8)
    host[12:, :] = B
    host[20:, 20:28] = G  # the only G: a patch in the lower right
    obj = find_objects(world[2], A)[0]
    placed = [place(obj, host, world_context, np.random.default_rng(s)) for s in range(30)]
    assert all(p is not None for p in placed)
    for p in placed:
        assert _lands_on(p, obj, host, [G])
        assert p.class_index == A and p.component == obj.index
    assert len({(p.top, p.left) for p in placed}) > 3
    assert {p.flip for p in placed} == {True, False}


def test_hole_margin_keeps_objects_that_would_not_fit_the_painted_window_out(world, world_context):
    host = np.full((H, W), SKY, np.uint8)
    host[12:, :] = B
    host[20:, 20:28] = G
    obj = find_objects(world[2], A)[0]
    placed = [place(obj, host, world_context, np.random.default_rng(s), hole_margin=2) for s in range(30)]
    assert all(p is not None for p in placed)
    for p in placed:
        grown = max(scale_shape(obj.shape, p.scale).shape) + 2 * 2
        assert grown <= min(H, W)
    margin = (min(H, W) - max(obj.shape.shape) * 0.5) / 2  # even at the smallest scale the object cannot fit
    assert all(place(obj, host, world_context, np.random.default_rng(s), hole_margin=int(margin) + 1) is None
               for s in range(10))


def test_no_placement_where_the_host_has_no_such_ground(world, world_context):
    host = np.full((H, W), SKY, np.uint8)
    host[12:, :] = B
    obj = find_objects(world[2], A)[0]
    assert all(place(obj, host, world_context, np.random.default_rng(s)) is None for s in range(10))


def _context(horizon: float | None, rows: list[float] | None = None) -> PlacementContext:
    """A hand-made context for classes SKY..C where A stands on G, at any row unless `rows` says otherwise."""
    ground = [[0.0] * 5 for _ in range(5)]
    ground[A][G] = 1.0
    hist = [[0.0] * 4 for _ in range(5)]
    hist[A] = rows or [0.25] * 4
    return PlacementContext(5, IGNORE, horizon, ground, hist, [0, 10, 0, 0, 0], 2, 0.1)


def test_perspective_shrinks_objects_placed_nearer_the_horizon():
    source = np.full((H, W), G, np.uint8)
    source[20:29, 10:14] = A  # bottom row 28
    obj = find_objects(source, A)[0]
    host = np.full((H, W), B, np.uint8)
    host[16:18, :] = G  # ground directly below rows 15 and 16 only
    ctx = _context(horizon=0.25)
    p = place(obj, host, ctx, np.random.default_rng(0), scale_range=(0.1, 10.0))
    bottom = p.top + scale_shape(obj.shape, p.scale).shape[0] - 1
    assert bottom in (15, 16)
    assert p.scale == pytest.approx(((bottom + 0.5) / H - 0.25) / ((28.5 / H) - 0.25))
    assert scale_shape(obj.shape, p.scale).shape[0] < obj.height
    clipped = place(obj, host, ctx, np.random.default_rng(0))  # the default range stops at half size
    assert clipped.scale == 0.5

    far = np.full((H, W), G, np.uint8)
    far[12:16, 0:4] = A  # bottom row 15, placed lower down comes out larger
    low = np.full((H, W), B, np.uint8)
    low[30:, :] = G
    p = place(find_objects(far, A)[0], low, ctx, np.random.default_rng(0), scale_range=(0.1, 10.0))
    assert p.scale > 1 and scale_shape(find_objects(far, A)[0].shape, p.scale).shape[0] > 4


def test_rows_follow_the_learnt_histogram_and_the_horizon_side():
    source = np.full((H, W), G, np.uint8)
    source[20:29, 10:14] = A
    obj = find_objects(source, A)[0]
    host = np.full((H, W), G, np.uint8)
    only_top = _context(horizon=None, rows=[1.0, 0.0, 0.0, 0.0])  # bottoms only in the top quarter
    for s in range(10):
        p = place(obj, host, only_top, np.random.default_rng(s))
        assert p.top + scale_shape(obj.shape, p.scale).shape[0] - 1 < H // 4
    # the source stands below the horizon, the class's rows all lie above it: no row on the source's side
    assert place(obj, host, _context(horizon=0.5, rows=[1.0, 0.0, 0.0, 0.0]), np.random.default_rng(0)) is None
    assert perspective_scale(0.8, 0.3, 0.5) is None
    assert perspective_scale(0.8, 0.65, 0.5) == pytest.approx(0.5)
    assert perspective_scale(0.8, 0.65, None, size_ratio=2.0) == 2.0


@pytest.fixture(scope="module")
def scenes():
    return list(example.generate(16, (64, 96), seed=3))


def test_example_scenes_objects_stand_where_they_stand_in_the_scenes(scenes):
    """The procedural scenes put cars on the road and people on the pavement (or crossing the road)."""
    masks = [m for _, _, m in scenes]
    ctx = fit_context(masks, len(example.CLASSES), example.IGNORE_INDEX, min_pixels=8)
    assert ctx.ground_classes(example.CAR) == [example.ROAD]
    people = ctx.ground_classes(example.PEDESTRIAN)
    assert set(people) <= {example.ROAD, example.PAVEMENT}
    assert max(people, key=lambda g: ctx.ground[example.PEDESTRIAN][g]) == example.PAVEMENT
    assert ctx.horizon is not None and 0.2 < ctx.horizon < 0.6
    rng = np.random.default_rng(0)
    done = 0
    for i, mask in enumerate(masks):
        host = masks[(i + 1) % len(masks)]
        for cls in (example.CAR, example.PEDESTRIAN):
            for obj in find_objects(mask, cls, min_pixels=8):
                p = place(obj, host, ctx, rng)
                if p is not None:
                    assert _lands_on(p, obj, host, ctx.ground_classes(cls))
                    done += 1
    assert done >= 20


def _plan(scenes, seed: int) -> list[dict]:
    masks = [m for _, _, m in scenes]
    ctx = fit_context(masks, len(example.CLASSES), example.IGNORE_INDEX, min_pixels=8)
    rng = np.random.default_rng(seed)
    out = []
    for i, (sid, _, mask) in enumerate(scenes):
        for obj in find_objects(mask, example.PEDESTRIAN, min_pixels=8):
            j = int(rng.integers(len(scenes)))
            p = place(obj, masks[j], ctx, rng, source_id=sid, host_id=scenes[j][0])
            out.append(None if p is None else p.to_dict())
    return out


def test_the_plan_is_deterministic(scenes):
    first = _plan(scenes, 7)
    assert len([p for p in first if p]) >= 5
    assert _plan(scenes, 7) == first
    assert _plan(scenes, 8) != first


def test_context_and_placement_round_trip_through_json(world_context):
    ctx = world_context
    back = PlacementContext.from_dict(json.loads(json.dumps(ctx.to_dict())))
    assert back == ctx
    p = Placement("host/1", "src/2", 3, A, -2, 5, 0.7312345678901234, True)
    assert Placement.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("horizon"), "missing keys"),
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d.update(horizon=1.5), "horizon"),
    (lambda d: d["ground"].pop(), "ground must be a list of 5"),
    (lambda d: d["rows"][1].append(0.1), r"rows\[1\]"),
    (lambda d: d["ground"][0].__setitem__(0, -1), r"ground\[0\] must hold non-negative"),
])
def test_a_malformed_context_gets_a_one_line_error(world_context, change, message):
    d = json.loads(json.dumps(world_context.to_dict()))
    change(d)
    with pytest.raises(AugmentError, match=message):
        PlacementContext.from_dict(d)


def test_a_malformed_placement_gets_a_one_line_error():
    d = Placement("h", "s", 0, 1, 0, 0, 1.0, False).to_dict()
    with pytest.raises(AugmentError, match="scale must be positive"):
        Placement.from_dict({**d, "scale": 0})
    with pytest.raises(AugmentError, match="top must be of type int"):
        Placement.from_dict({**d, "top": 1.5})
    with pytest.raises(AugmentError, match="keys"):
        Placement.from_dict({k: v for k, v in d.items() if k != "flip"})


def test_placed_region_covers_what_place_checked(world, world_context):
    host = np.full((H, W), SKY, np.uint8)
    host[10:, :] = G
    obj = find_objects(world[4], A)[0]
    p = place(obj, host, world_context, np.random.default_rng(1))
    region, _ = placed_region(obj.shape, p, host.shape, band=0)
    expected = scale_shape(obj.shape, p.scale, p.flip)
    assert region.sum() == expected.sum()
    assert np.array_equal(region[p.top : p.top + expected.shape[0], p.left : p.left + expected.shape[1]], expected)
