"""The insertion plan (augment/synthesis/insert_plan.py): candidates, hosts, placements, determinism, plan.json."""

import json

import numpy as np
import pytest

from augment.data import example
from augment.core.errors import AugmentError
from augment.synthesis.composite import placed_region
from augment.synthesis.fill import fill_insertion
from augment.synthesis.insert_plan import InsertionPlan, PlannedInsertion, component_of, plan_insertions
from augment.synthesis.placement import Placement, contact_pixels, fit_context, scale_shape

IGNORE = 255
# 32x32 maps: sky (0) in rows 0-8, ground G (2) below; objects of class A (1) stand on G. Class C (3) stands on
# sky-coloured "ground" S2 (4) that exists only in its own map, so it can never be placed in another one.
SKY, A, G, C, S2 = range(5)
NAMES = ["sky", "a", "g", "c", "s2"]


def _map(bottom: int, left: int, extra: bool = False) -> np.ndarray:
    m = np.full((32, 32), SKY, np.uint8)
    m[9:] = G
    m[bottom - (bottom - 8) // 2 + 1 : bottom + 1, left : left + 3] = A
    m[10:12, 28:30] = A  # a small second object (4 px)
    if extra:
        m[20:, 20:] = S2
        m[14:20, 24:26] = C
    return m


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    maps = {f"w/{i}": _map(b, 2 + 3 * i) for i, b in enumerate((12, 16, 20, 24, 28, 18))}
    maps["w/c"] = _map(22, 10, extra=True)
    return maps


@pytest.fixture(scope="module")
def world_context(world):
    return fit_context(world.values(), len(NAMES), IGNORE, min_pixels=2)


def _plan(world, ctx, quotas, seed=0, **kw) -> InsertionPlan:
    return plan_insertions(world, quotas, ctx, seed, class_names=NAMES, min_pixels=kw.pop("min_pixels", 2), **kw)


def _lands_on(p: Placement, shape: np.ndarray, host: np.ndarray, grounds: list[int]) -> bool:
    """Whether every contact pixel of the placed object has one of `grounds` directly below it in `host`."""
    scaled = scale_shape(shape, p.scale, p.flip)
    ys, xs = contact_pixels(scaled, 0.1)
    below = host[p.top + ys + 1, p.left + xs]
    return len(ys) > 0 and bool(np.isin(below, grounds).all())


def test_insertions_take_real_objects_into_other_maps_on_their_ground(world, world_context):
    plan = _plan(world, world_context, {A: 12})
    assert plan.candidates == {A: 2 * len(world)}
    assert len(plan) + plan.unplaced[A] == 12 and len(plan) >= 10
    for p in plan.insertions:
        assert p.host_id != p.source_id and p.host_id in world and p.source_id in world
        assert p.target_class == A and p.sample_id.startswith("ins/a/")
        obj = component_of(world[p.source_id], A, p.placement.component)
        assert obj is not None and obj.pixels >= 2
        assert _lands_on(p.placement, obj.shape, world[p.host_id], [G])
    assert len({p.sample_id for p in plan.insertions}) == len(plan)
    assert len({p.seed for p in plan.insertions}) == len(plan)
    assert len({p.host_id for p in plan.insertions}) > 2 and len({p.source_id for p in plan.insertions}) > 2
    big = _plan(world, world_context, {A: 12}, min_pixels=5)
    assert big.candidates == {A: len(world)}  # the 4-pixel objects are left out
    assert all(component_of(world[p.source_id], A, p.placement.component).pixels >= 5 for p in big.insertions)


def test_samples_no_host_can_take_are_counted_not_planned(world, world_context):
    plan = _plan(world, world_context, {A: 3, C: 4})
    assert plan.candidates[C] == 1
    assert plan.unplaced[C] == 4 and not [p for p in plan.insertions if p.target_class == C]
    assert plan.summary()["unplaced"] == {"a": plan.unplaced[A], "c": 4}


def test_the_plan_is_deterministic_and_independent_of_order_shards_and_other_classes(world, world_context):
    plan = _plan(world, world_context, {A: 10}, seed=3)
    assert _plan(world, world_context, {A: 10}, seed=3).to_dict() == plan.to_dict()
    assert _plan(dict(reversed(list(world.items()))), world_context, {A: 10}, seed=3).to_dict() == plan.to_dict()
    assert _plan(world, world_context, {A: 10}, seed=4).insertions != plan.insertions
    # sample k depends only on (seed, class, k): a smaller quota is a prefix, other classes change nothing
    first = _plan(world, world_context, {A: 4}, seed=3).insertions
    assert first == [p for p in plan.insertions if int(p.sample_id.rsplit("/", 1)[1]) < 4]
    mixed = _plan(world, world_context, {A: 10, C: 2}, seed=3)
    assert [p for p in mixed.insertions if p.target_class == A] == plan.insertions
    shards = plan.shards(3)
    assert [p for s in shards for p in s] == plan.insertions and max(len(s) for s in shards) == 3


def test_pixel_weighting_draws_large_objects_more_than_uniform(world, world_context):
    def share_of_small(weighting: str) -> float:
        plan = _plan(world, world_context, {A: 120}, weighting=weighting)
        small = [component_of(world[p.source_id], A, p.placement.component).pixels == 4 for p in plan.insertions]
        return float(np.mean(small))
    # each map holds a 4-pixel object and one of 6 to 30 pixels: uniform draws the small ones about half the time
    assert share_of_small("pixels") < 0.3 < share_of_small("uniform")


def test_the_plan_round_trips_through_json_with_its_context(world, world_context):
    plan = _plan(world, world_context, {A: 5, C: 1}, place_options={"scale_range": [0.8, 1.5], "tries": 4})
    back = InsertionPlan.from_json(json.dumps(json.loads(plan.to_json())))
    assert back == plan and back.context == world_context
    assert back.place_options == {"scale_range": (0.8, 1.5), "tries": 4}
    p = plan.insertions[0]
    assert PlannedInsertion.from_dict(p.to_dict()) == p
    assert set(p.to_dict()) == {"sample_id", "seed", "host_id", "source_id", "component", "class_index", "top",
                                "left", "scale", "flip"}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("context"), "missing keys"),
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d.update(version=9), "version 9"),
    (lambda d: d.update(weighting="size"), "weighting"),
    (lambda d: d["quotas"].update({"x": 1}), "quotas has key 'x'"),
    (lambda d: d["context"].pop("horizon"), "placement context: missing keys"),
    (lambda d: d["insertions"][0].update(seed=-1), "ins/a/000000: seed"),
    (lambda d: d["insertions"][0].update(scale=0), "ins/a/000000: placement: scale must be positive"),
    (lambda d: d["insertions"][0].update(class_index=7), "class index 7"),
    (lambda d: d["place_options"].update(jitter=1), "unknown option"),
    (lambda d: d["insertions"].append(dict(d["insertions"][0])), "sample id ins/a/000000 appears twice"),
    (lambda d: d["insertions"].pop(), "class a has 1 insertions and 0 unplaced, its quota is 2"),
])
def test_a_malformed_plan_gets_a_one_line_error(world, world_context, change, message):
    d = json.loads(_plan(world, world_context, {A: 2}).to_json())
    change(d)
    with pytest.raises(AugmentError, match=message) as err:
        InsertionPlan.from_dict(d, "out/plan.json")
    assert str(err.value).startswith("out/plan.json: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"quotas": {A: -1}}, "quota of class 1"),
    ({"quotas": {9: 1}}, "not a class index"),
    ({"quotas": {A: 1, C: 1}, "min_pixels": 13}, r"13\+ pixels of class\(es\) \['c'\]"),  # C has 12
    ({"seed": -1}, "seed"),
    ({"weighting": "size"}, "weighting"),
    ({"max_hosts": 0}, "max_hosts"),
    ({"place_options": {"min_contact": 2}}, "min_contact"),
    ({"place_options": {"scale_range": [2, 1]}}, "scale_range"),
])
def test_bad_arguments_are_refused_before_planning(world, world_context, kwargs, message):
    args = {"quotas": {A: 1}, "seed": 0, **kwargs}
    with pytest.raises(AugmentError, match=message):
        plan_insertions(world, args.pop("quotas"), world_context, args.pop("seed"), class_names=NAMES, **args)


def test_one_map_is_too_few(world, world_context):
    with pytest.raises(AugmentError, match="at least two label maps"):
        _plan({"w/0": world["w/0"]}, world_context, {A: 1})
    with pytest.raises(AugmentError, match="4 class names"):
        plan_insertions(world, {A: 1}, world_context, 0, class_names=NAMES[:4])


def test_example_scenes_pasted_objects_stand_on_learnt_ground():
    """Fit on 20 example scenes, plan pedestrian / bicyclist / pole insertions, paste them: every object's bottom
    edge lands on a ground class the context learnt for its class, and the written mask labels it."""
    scenes = list(example.generate(20, (64, 96), seed=0))
    masks = {sid: m for sid, _, m in scenes}
    images = {sid: im for sid, im, _ in scenes}
    ctx = fit_context(masks.values(), len(example.CLASSES), example.IGNORE_INDEX, min_pixels=8)
    targets = (example.PEDESTRIAN, example.BICYCLIST, example.POLE)
    plan = plan_insertions(masks, {c: 10 for c in targets}, ctx, 0, class_names=example.CLASSES, min_pixels=8)
    for c in targets:
        assert ctx.ground_classes(c) and c not in ctx.ground_classes(c)
        assert sum(p.target_class == c for p in plan.insertions) >= 5
    for p in plan.insertions:
        host, cls = masks[p.host_id], p.target_class
        obj = component_of(masks[p.source_id], cls, p.placement.component)
        assert _lands_on(p.placement, obj.shape, host, ctx.ground_classes(cls))
        image, mask = fill_insertion("paste", images[p.host_id], host, images[p.source_id], masks[p.source_id], p)
        placed, alpha = placed_region(obj.shape, p.placement, host.shape, 3)
        assert placed.any() and (mask[placed] == cls).all()
        assert np.array_equal(image[alpha == 0], images[p.host_id][alpha == 0])
