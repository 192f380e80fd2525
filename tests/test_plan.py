import json

import numpy as np
import pytest

from augment.data.codec import class_pixels, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row, open_dataset
from augment.core.errors import AugmentError
from augment.synthesis.edit import apply_edits, paste_regions, scale_crop
from augment.synthesis.plan import Plan, balance_quotas, derive_seed, make_plan

CLASSES = ["road", "car", "person", "sign"]
PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60], [220, 220, 0]]
ROAD, CAR, PERSON, SIGN = range(4)
IGNORE = 255
H = W = 32


def scene(car: int = 0, person: int = 0, sign: int = 0, ignore: int = 0) -> np.ndarray:
    """A 32x32 road map with `car` pixels in the top rows, `person`/`sign` pixels further down (row-major runs)."""
    flat = np.full(H * W, ROAD, np.uint8)
    start = 0
    for label, n in ((CAR, car), (PERSON, person), (SIGN, sign), (IGNORE, ignore)):
        flat[start : start + n] = label
        start += n + 37
    return flat.reshape(H, W)


MAPS = {
    "train/a": scene(car=200, person=30),
    "train/b": scene(car=300, person=300),
    "train/c": scene(car=100),
    "train/d": scene(car=50, ignore=20),
    "val/e": scene(car=10, person=5, sign=40),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "ds"
    with StagedOutput(str(out)) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", len(CLASSES), row_group_rows=2)
        image = encode_image(np.zeros((H, W, 3), np.uint8))
        for sample_id, mask in MAPS.items():
            writer.write(make_row(sample_id, image, encode_mask(mask), H, W, sample_id.split("/")[0],
                                  class_pixels(mask, len(CLASSES), IGNORE)))
        stats = writer.close()
        info = DatasetInfo(classes=CLASSES, palette=PALETTE, ignore_index=IGNORE)
        info.apply_stats(stats)
        staged.commit(info, [])
    return open_dataset(str(out))


EDITS = {"flip": 0.5, "scale": [1.0, 2.0], "paste": {"prob": 0.7, "max": 2}}


def test_plan_is_deterministic_and_round_trips(dataset):
    a = make_plan(dataset, {"person": 20, "car": 10}, None, seed=3, edit_options=EDITS)
    b = make_plan(dataset, {"car": 10, "person": 20}, None, seed=3, edit_options=EDITS)
    assert a.to_json() == b.to_json()
    assert Plan.from_json(a.to_json()) == a
    assert make_plan(dataset, {"person": 20, "car": 10}, None, seed=4, edit_options=EDITS).to_json() != a.to_json()
    assert a.quotas == {CAR: 10, PERSON: 20}
    assert [s.sample_id for s in a.samples[:2]] == ["syn/car/000000", "syn/car/000001"]
    assert len({s.sample_id for s in a.samples}) == 30 and len({s.seed for s in a.samples}) == 30
    assert all(0 <= s.seed < 2**63 for s in a.samples)
    assert a.samples[10].seed == derive_seed(3, "noise", PERSON, 0)
    json.loads(a.to_json())


def test_explicit_quotas_by_name_or_index_and_only_train_sources(dataset):
    plan = make_plan(dataset, {"2": 7, CAR: 3}, None, seed=0)
    assert plan.quotas == {CAR: 3, PERSON: 7}
    assert plan.splits == ["train"]
    assert {s.source_id for s in plan.samples if s.target_class == PERSON} <= {"train/a", "train/b"}
    assert all(s.source_id.startswith("train/") for s in plan.samples)
    assert all(s.edits == {} for s in plan.samples)
    everything = make_plan(dataset, {"sign": 2}, None, seed=0, splits=["train", "val"])
    assert {s.source_id for s in everything.samples} == {"val/e"}


def test_sources_weighted_by_target_pixels(dataset):
    plan = make_plan(dataset, {"person": 2000}, None, seed=0)
    small = sum(s.source_id == "train/a" for s in plan.samples)
    # train/a holds 30 person pixels, train/b 300: expected share 1/11 (182 of 2000, sd 13)
    assert 130 < small < 235, small
    cars = make_plan(dataset, {"car": 3000}, None, seed=0)
    counts = {k: sum(s.source_id == k for s in cars.samples) for k in ("train/a", "train/b", "train/c", "train/d")}
    assert counts["train/b"] > counts["train/a"] > counts["train/c"] > counts["train/d"] > 0


def test_balance_gives_rare_classes_more(dataset):
    plan = make_plan(dataset, None, 101, seed=0)
    assert plan.mode == "balance" and sum(plan.quotas.values()) == 101 == len(plan)
    q = plan.quotas
    assert SIGN not in q  # only in val: not a source class
    assert q[PERSON] > q[CAR] > q[ROAD] > 0
    assert balance_quotas(np.array([900, 90, 9, 0]), 10, power=1.0) == {0: 0, 1: 1, 2: 9}
    assert sum(balance_quotas(np.array([5, 3, 2]), 7).values()) == 7
    assert plan.summary()["quotas"] == {"road": q[ROAD], "car": q[CAR], "person": q[PERSON]}


@pytest.mark.parametrize(
    "classes, balance, match",
    [
        ({"bus": 3}, None, r"unknown class 'bus'; classes are road, car, person, sign"),
        ({7: 3}, None, r"class index 7 out of range 0\.\.3"),
        ({"sign": 3}, None, r"no source label map in split\(s\) \['train'\] .* contains class\(es\) \['sign'\]"),
        ({"car": 1, 1: 2}, None, r"names class 'car' a second time"),
        ({"car": -1}, None, r"quota of 'car' must be an integer >= 0"),
        ({"car": 1}, 5, r"not both or neither"),
        (None, None, r"not both or neither"),
    ],
)
def test_bad_requests_are_refused(dataset, classes, balance, match):
    with pytest.raises(AugmentError, match=match):
        make_plan(dataset, classes, balance, seed=0)


def test_bad_edit_options_and_splits_are_refused(dataset):
    with pytest.raises(AugmentError, match=r"edits: unknown option\(s\) \['rotate'\]"):
        make_plan(dataset, {"car": 1}, None, 0, {"rotate": 1})
    with pytest.raises(AugmentError, match=r"edits.scale"):
        make_plan(dataset, {"car": 1}, None, 0, {"scale": [2, 1]})
    with pytest.raises(AugmentError, match=r"no split\(s\) \['test'\]"):
        make_plan(dataset, {"car": 1}, None, 0, splits=["test"])
    with pytest.raises(AugmentError, match="not a valid plan"):
        Plan.from_json('{"version": 1, "samples": [{"x": 1}]}')


def test_shards_cover_every_sample_once(dataset):
    plan = make_plan(dataset, {"car": 23, "person": 18}, None, seed=1)
    for size in (1, 7, 41, 100):
        shards = plan.shards(size)
        assert all(0 < len(s) <= size for s in shards)
        flat = [s.sample_id for shard in shards for s in shard]
        assert flat == [s.sample_id for s in plan.samples] and len(set(flat)) == 41
    assert [[s.sample_id for s in sh] for sh in plan.shards(7)] == [
        [s.sample_id for s in sh] for sh in make_plan(dataset, {"car": 23, "person": 18}, None, seed=1).shards(7)
    ]
    with pytest.raises(ValueError):
        plan.shards(0)


def test_planned_edits_are_valid_and_keep_the_target(dataset):
    plan = make_plan(dataset, {"person": 60, "car": 20}, None, seed=5, edit_options=EDITS)
    edited = [s for s in plan.samples if s.edits]
    assert any("paste" in s.edits for s in edited) and any(s.edits.get("flip") for s in edited)
    assert any("scale" in s.edits for s in edited)
    for s in plan.samples:
        for item in s.edits.get("paste", []):
            assert MAPS[item["from"]][MAPS[item["from"]] == s.target_class].size > 0
        if "scale" in s.edits:
            assert 1.0 <= s.edits["scale"] <= 2.0 and all(0 <= f <= 1 for f in s.edits["crop"])
        out = apply_edits(MAPS[s.source_id], s.edits, MAPS.__getitem__, s.target_class, IGNORE)
        assert out.shape == (H, W) and out.dtype == np.uint8
        assert (out == s.target_class).any(), s
        assert set(np.unique(out)) <= {ROAD, CAR, PERSON, IGNORE}


def test_edits_keep_shape_labels_and_are_deterministic():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (32, 48)).astype(np.uint8)
    mask[:4] = IGNORE
    edits = {"flip": True, "scale": 1.7, "crop": [0.3, 0.8], "paste": [{"from": "x", "dy": 0.1, "dx": -0.4}]}
    donor = np.zeros((64, 96), np.uint8)
    donor[20:40, 30:60] = SIGN
    a = apply_edits(mask, edits, {"x": donor}.__getitem__, SIGN, IGNORE)
    b = apply_edits(mask, edits, {"x": donor}.__getitem__, SIGN, IGNORE)
    assert np.array_equal(a, b) and a.shape == mask.shape and a.dtype == np.uint8
    assert set(np.unique(a)) <= {0, 1, 2, SIGN, IGNORE}
    assert np.array_equal(apply_edits(mask, {"flip": True}, None, 0, IGNORE), mask[:, ::-1])
    assert np.array_equal(apply_edits(mask, {}, None, 0, IGNORE), mask)
    with pytest.raises(ValueError, match="unknown edit"):
        apply_edits(mask, {"rotate": 1}, None, 0, IGNORE)


def test_paste_adds_target_pixels_where_shifted():
    mask = np.zeros((32, 32), np.uint8)
    donor = np.zeros((32, 32), np.uint8)
    donor[4:12, 4:8] = PERSON
    out = paste_regions(mask, donor, PERSON, dy=0.25, dx=0.5)
    assert (out == PERSON).sum() == 32
    assert (out[12:20, 20:24] == PERSON).all() and (out[out != PERSON] == 0).all()
    clipped = paste_regions(mask, donor, PERSON, dy=0.0, dx=0.8125)  # shifted 26 px: 2 columns remain
    assert (clipped == PERSON).sum() == 16
    flipped = paste_regions(mask, donor, PERSON, dy=0.0, dx=0.0, flip=True)
    assert (flipped[4:12, 24:28] == PERSON).all()


def test_scale_crop_keeps_the_target_and_pads_with_ignore():
    mask = np.zeros((32, 32), np.uint8)
    mask[28:31, 1:3] = PERSON  # near a corner: a centred 3x zoom would cut it off
    for fy in (0.0, 0.5, 1.0):
        for fx in (0.0, 1.0):
            out = scale_crop(mask, 3.0, (fy, fx), PERSON, IGNORE)
            assert out.shape == (32, 32) and (out == PERSON).any()
    small = scale_crop(mask, 0.5, (0.0, 1.0), PERSON, IGNORE)
    assert (small[16:, :] == IGNORE).all() and (small[:, :16] == IGNORE).all()
    assert (small[:16, 16:] != IGNORE).all() and (small == PERSON).any()
