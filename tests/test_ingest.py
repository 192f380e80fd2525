"""`augment ingest` on tiny fixture trees of every format (and the real CamVid), and `augment example-data`."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.cli import main
from augment.data.codec import decode_image, decode_mask
from augment.data.dataset import open_dataset
from augment.data.layout import QUARANTINE_FILE
from augment.data.formats import camvid, cityscapes, folder, voc
from augment.data.formats.base import SourcePair
from augment.data.ingest import (
    chunk_rows, ingest, ingest_pair, pairs_per_sequence, select_pairs, write_example_data,
)
from augment.core.errors import AugmentError, BadSample, DatasetError

RNG = np.random.default_rng(0)


def save(path: Path, arr: np.ndarray, mode: str | None = None, palette: list[int] | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode)
    if palette is not None:
        im.putpalette(palette)
    im.save(path, **kw)
    return path


def rgb(h=24, w=32):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def labels(h=24, w=32, high=12):
    return RNG.integers(0, high, (h, w), dtype=np.uint8)


def rows_by_id(out) -> dict:
    ds = open_dataset(str(out))
    return {r["id"]: r for b in ds.iter_batches() for r in b.to_pylist()}


def quarantine(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / QUARANTINE_FILE).read_text().splitlines()]


def run_cli(capsys, *argv):
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------------------------------------------
# CamVid


def camvid_tree(root: Path, with_lists: bool = True) -> dict:
    masks = {}
    for split, n in (("train", 3), ("val", 2)):
        lines = []
        for i in range(n):
            name = f"0001TP_{split}{i:03d}.png"
            save(root / split / name, rgb())
            masks[f"{split}/0001TP_{split}{i:03d}"] = labels()
            save(root / f"{split}annot" / name, masks[f"{split}/0001TP_{split}{i:03d}"])
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        if with_lists:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return masks


def test_camvid_list_files_with_bogus_prefix(tmp_path, capsys, ray_session):
    src, out = tmp_path / "camvid", tmp_path / "out"
    masks = camvid_tree(src)
    rc, stdout, _ = run_cli(capsys, "ingest", str(src), "--format", "camvid", "--out", str(out))
    assert rc == 0 and "ingested 3 rows (0 quarantined)" in stdout
    rows = rows_by_id(out)
    assert sorted(rows) == [f"train/0001TP_train{i:03d}" for i in range(3)]
    for rid, row in rows.items():
        name = rid.split("/")[1] + ".png"
        assert row["image"]["bytes"] == (src / "train" / name).read_bytes()
        expected = masks[rid].copy()
        expected[expected == 11] = 255
        assert np.array_equal(decode_mask(row["mask"]["bytes"]), expected)
        assert row["source_image"] == f"train/{name}" and row["split"] == "train"
    info = open_dataset(str(out)).info
    assert info.classes == camvid.CLASSES and info.ignore_index == 255 and info.splits == {"train": 3}
    assert info.lineage["source"] == str(src) and info.lineage["format"] == "camvid"
    assert info.lineage["splits"] == ["train"] and info.lineage["size"] is None
    assert info.lineage["command"].startswith("augment ingest") and info.lineage["augment_version"]


def test_camvid_folders_without_lists_split_all_and_orphans(tmp_path, ray_session):
    src = tmp_path / "camvid"
    camvid_tree(src, with_lists=False)
    save(src / "val" / "lonely.png", rgb())
    save(src / "trainannot" / "nomask_image.png", labels())
    assert camvid.find_splits(src) == ["train", "val"]
    result = ingest(str(src), "camvid", str(tmp_path / "out"), split="all", size=(12, 16))
    assert (result.rows, result.quarantined) == (5, 2)
    info = open_dataset(str(tmp_path / "out")).info
    assert info.splits == {"train": 3, "val": 2} and info.quarantined == 2 and info.image_size == (12, 16)
    reasons = {Path(q["source"]).name: q["reason"] for q in quarantine(tmp_path / "out")}
    assert reasons == {"lonely.png": "image without a mask", "nomask_image.png": "mask without an image"}


def test_real_camvid_val(camvid_root, tmp_path, ray_session):
    result = ingest(str(camvid_root), "camvid", str(tmp_path / "val"), split="val", size=(90, 120))
    assert (result.rows, result.quarantined) == (101, 0)
    ds = open_dataset(str(tmp_path / "val"))
    assert ds.info.classes == camvid.CLASSES and ds.info.image_size == (90, 120) and ds.info.splits == {"val": 101}
    row = next(ds.iter_samples())
    assert row["image"].shape == (90, 120, 3) and set(np.unique(row["mask"])) <= set(range(11)) | {255}


# --------------------------------------------------------------------------------------------------------------
# Cityscapes


def test_cityscapes_label_ids_to_train_ids():
    lut = cityscapes.label_set(Path(".")).lut
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(34):
        assert lut[label_id] == official.get(label_id, 255), label_id
    assert lut[34] == -1 and lut[255] == 255
    assert cityscapes.CLASSES[:3] == ["road", "sidewalk", "building"] and len(cityscapes.CLASSES) == 19
    assert cityscapes.PALETTE[0] == [128, 64, 128] and cityscapes.PALETTE[18] == [119, 11, 32]


def test_cityscapes_ingest(tmp_path, ray_session):
    src = tmp_path / "cs"
    ids = np.arange(34, dtype=np.uint8).repeat(3)[:96].reshape(8, 12)
    for split, cities in (("train", ("aachen", "bonn")), ("val", ("lindau",))):
        for city in cities:
            stem = f"{city}_000000_000019"
            save(src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(8, 12))
            save(src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            save(src / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgb(8, 12))
    bad = ids.copy()
    bad[0, 0] = 40
    save(src / "leftImg8bit" / "train" / "bonn" / "bonn_000001_000019_leftImg8bit.png", rgb(8, 12))
    save(src / "gtFine" / "train" / "bonn" / "bonn_000001_000019_gtFine_labelIds.png", bad)
    result = ingest(str(src), "cityscapes", str(tmp_path / "out"))
    assert (result.rows, result.quarantined) == (2, 1)
    rows = rows_by_id(tmp_path / "out")
    assert sorted(rows) == ["train/aachen_000000_000019", "train/bonn_000000_000019"]
    lut = np.asarray(cityscapes.label_set(src).lut)
    assert np.array_equal(decode_mask(rows["train/aachen_000000_000019"]["mask"]["bytes"]), lut[ids])
    [record] = quarantine(tmp_path / "out")
    assert record["source"].endswith("bonn_000001_000019_gtFine_labelIds.png") and "[40]" in record["reason"]
    assert open_dataset(str(tmp_path / "out")).info.classes == cityscapes.CLASSES


# --------------------------------------------------------------------------------------------------------------
# Pascal VOC


def test_voc_jpeg_bytes_kept_and_split_all(tmp_path, ray_session):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    palette = [v for c in voc.PALETTE for v in c] + [224, 224, 192] * (256 - len(voc.PALETTE))
    stems = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000063"]}
    masks = {}
    for split, names in stems.items():
        for stem in names:
            save(base / "JPEGImages" / f"{stem}.jpg", rgb(20, 30), quality=90)
            m = RNG.integers(0, 21, (20, 30), dtype=np.uint8)
            m[0, :] = 255
            masks[stem] = m
            save(base / "SegmentationClass" / f"{stem}.png", m, "P", palette)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (base / "ImageSets" / "Segmentation" / "trainval.txt").write_text("\n".join(sum(stems.values(), [])) + "\n")
    assert voc.find_splits(tmp_path / "VOCdevkit") == ["train", "val", "trainval"]
    ingest(str(tmp_path / "VOCdevkit"), "voc", str(tmp_path / "out"), split="all")
    rows = rows_by_id(tmp_path / "out")
    assert sorted(rows) == ["train/2007_000032", "train/2007_000039", "val/2007_000063"]
    for rid, row in rows.items():
        stem = rid.split("/")[1]
        assert row["image"]["bytes"] == (base / "JPEGImages" / f"{stem}.jpg").read_bytes()
        assert row["image"]["path"].endswith(".jpg")
        assert np.array_equal(decode_mask(row["mask"]["bytes"]), masks[stem])
    info = open_dataset(str(tmp_path / "out")).info
    assert info.classes[0] == "background" and len(info.classes) == 21 and info.palette[1] == [128, 0, 0]


# --------------------------------------------------------------------------------------------------------------
# Folder


def test_folder_classes_json_and_resize(tmp_path, ray_session):
    src = tmp_path / "f"
    (src / "images").mkdir(parents=True)
    (src / "classes.json").write_text(json.dumps({"classes": ["bg", "cat", "dog"], "palette": [[0, 0, 0], [1, 2, 3],
                                                  [4, 5, 6]], "ignore_index": 9}))
    m = np.zeros((16, 20), np.uint8)
    m[:, 10:] = 2
    m[:4] = 9
    save(src / "images" / "a.png", rgb(16, 20))
    save(src / "images" / "b.bmp", rgb(16, 20))
    save(src / "masks" / "a.png", m)
    save(src / "masks" / "b.png", m)
    ingest(str(src), "folder", str(tmp_path / "out"), size=(8, 10))
    ds = open_dataset(str(tmp_path / "out"))
    assert ds.info.classes == ["bg", "cat", "dog"] and ds.info.palette[2] == [4, 5, 6] and ds.info.ignore_index == 9
    samples = {s["id"]: s for s in ds.iter_samples()}
    assert sorted(samples) == ["train/a", "train/b"]
    mask = samples["train/a"]["mask"]
    assert mask.shape == (8, 10) and samples["train/a"]["image"].shape == (8, 10, 3)
    assert set(np.unique(mask)) == {0, 2, 9} and (mask[:, 5:] != 0).all() and (mask[2:, :5] == 0).all()
    assert ds.info.class_pixels == [int((mask == 0).sum()) * 2, 0, int((mask == 2).sum()) * 2]


def test_folder_classes_option_default_palette_and_split_folders(tmp_path, ray_session):
    src = tmp_path / "f"
    for split in ("train", "val"):
        save(src / "images" / split / "x.png", rgb(8, 8))
        save(src / "masks" / split / "x.png", labels(8, 8, high=2))
    assert folder.find_splits(src) == ["train", "val"]
    ingest(str(src), "folder", str(tmp_path / "out"), split="val", classes="road, sky")
    info = open_dataset(str(tmp_path / "out")).info
    assert info.classes == ["road", "sky"] and info.palette == [[0, 0, 0], [128, 0, 0]] and info.splits == {"val": 1}
    with pytest.raises(DatasetError, match="no classes.json"):
        folder.label_set(src)


def test_bmp_and_grey_images_are_stored_as_rgb_png(tmp_path):
    grey = save(tmp_path / "g.png", RNG.integers(0, 256, (6, 7), dtype=np.uint8))
    mask = save(tmp_path / "m.png", np.zeros((6, 7), np.uint8))
    row = ingest_pair(SourcePair("train/g", "train", str(grey), str(mask)), folder._parse_classes(["a"], "x"), None)
    image = decode_image(row["image"]["bytes"])
    assert row["image"]["bytes"] != grey.read_bytes() and image.shape == (6, 7, 3)
    assert Image.open(__import__("io").BytesIO(row["image"]["bytes"])).mode == "RGB"


# --------------------------------------------------------------------------------------------------------------
# Bad input


def test_each_bad_sample_is_quarantined_and_the_run_goes_on(tmp_path, capsys, ray_session):
    src = tmp_path / "f"
    src.mkdir()
    (src / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    good = labels(10, 12, high=3)
    save(src / "images" / "good.png", rgb(10, 12))
    save(src / "masks" / "good.png", good)
    (src / "images" / "corrupt.png").write_bytes(b"not an image at all")
    save(src / "masks" / "corrupt.png", good)
    whole = save(tmp_path / "whole.png", rgb(10, 12)).read_bytes()
    (src / "images" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    save(src / "masks" / "truncated.png", good)
    save(src / "images" / "mismatch.png", rgb(10, 12))
    save(src / "masks" / "mismatch.png", labels(10, 11, high=3))
    save(src / "images" / "outside.png", rgb(10, 12))
    save(src / "masks" / "outside.png", np.full((10, 12), 7, np.uint8))
    save(src / "images" / "nomask.png", rgb(10, 12))
    save(src / "masks" / "noimage.png", good)
    rc, stdout, _ = run_cli(capsys, "ingest", str(src), "--format", "folder", "--out", str(tmp_path / "out"))
    assert rc == 0 and "ingested 1 rows (6 quarantined)" in stdout and QUARANTINE_FILE in stdout
    assert list(rows_by_id(tmp_path / "out")) == ["train/good"]
    reasons = {Path(q["source"]).parent.name + "/" + Path(q["source"]).name: q["reason"]
               for q in quarantine(tmp_path / "out")}
    assert set(reasons) == {"images/corrupt.png", "images/truncated.png", "masks/mismatch.png", "masks/outside.png",
                            "images/nomask.png", "masks/noimage.png"}
    assert "corrupt" in reasons["images/corrupt.png"] and "corrupt" in reasons["images/truncated.png"]
    assert "differs from image size" in reasons["masks/mismatch.png"]
    assert "[7] outside the 3 classes" in reasons["masks/outside.png"]
    assert reasons["images/nomask.png"] == "image without a mask"
    assert reasons["masks/noimage.png"] == "mask without an image"
    assert open_dataset(str(tmp_path / "out")).info.quarantined == 6


def test_ingest_pair_rejects_rgb_mask(tmp_path):
    image = save(tmp_path / "i.png", rgb(4, 4))
    with pytest.raises(BadSample, match="single-channel"):
        ingest_pair(SourcePair("train/i", "train", str(image), str(image)), camvid.label_set(tmp_path), None)


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_format", "does not look like Pascal VOC"),
        ("missing_folder", "no such folder"),
        ("missing_split", "no split 'test' (found: train, val)"),
        ("empty", "no image/mask pairs found"),
        ("all_bad", "no valid samples to write (1 quarantined; first:"),
        ("unwritable_out", "cannot write the dataset"),
    ],
)
def test_one_line_errors(tmp_path, capsys, ray_session, case, message):
    src = tmp_path / "camvid"
    camvid_tree(src)
    argv = ["ingest", str(src), "--format", "camvid", "--out", str(tmp_path / "out")]
    if case == "wrong_format":
        argv[3] = "voc"
    elif case == "missing_folder":
        argv[1] = str(tmp_path / "nowhere")
    elif case == "missing_split":
        argv += ["--split", "test"]
    elif case == "empty":
        (tmp_path / "e" / "images").mkdir(parents=True)
        (tmp_path / "e" / "masks").mkdir()
        argv = ["ingest", str(tmp_path / "e"), "--format", "folder", "--classes", "a,b", "--out", str(tmp_path / "out")]
    elif case == "all_bad":
        save(tmp_path / "b" / "images" / "x.png", rgb(4, 4))
        save(tmp_path / "b" / "masks" / "x.png", np.full((4, 4), 5, np.uint8))
        argv = ["ingest", str(tmp_path / "b"), "--format", "folder", "--classes", "a,b", "--out", str(tmp_path / "out")]
    elif case == "unwritable_out":
        (tmp_path / "file").write_text("x")
        argv[-1] = str(tmp_path / "file" / "out")
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("augment ingest: error: ") and message in last and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_existing_output_refused_unless_overwrite(tmp_path, capsys, ray_session):
    src, out = tmp_path / "camvid", tmp_path / "out"
    camvid_tree(src)
    argv = ["ingest", str(src), "--format", "camvid", "--out", str(out)]
    assert run_cli(capsys, *argv)[0] == 0
    rc, _, err = run_cli(capsys, *argv, "--split", "val")
    assert rc == 2 and "already holds a dataset; pass --overwrite" in err
    assert open_dataset(str(out)).info.splits == {"train": 3}
    assert run_cli(capsys, *argv, "--split", "val", "--overwrite")[0] == 0
    assert open_dataset(str(out)).info.splits == {"val": 2}


# --------------------------------------------------------------------------------------------------------------
# Chunking and example data


def test_chunk_rows_bounds():
    assert chunk_rows(5000, 2_600_000, 8) == 64
    assert chunk_rows(367, 270_000, 2) == 184
    assert chunk_rows(100_000, 10_000, 2) == 1024
    assert chunk_rows(10, 1000, 4, min_rows=1) == 3


def test_example_data_is_deterministic_across_workers(tmp_path, capsys, ray_session):
    write_example_data(str(tmp_path / "a"), 11, (32, 32), seed=3, workers=1, rows_per_chunk=5)
    write_example_data(str(tmp_path / "b"), 11, (32, 32), seed=3, workers=3, rows_per_chunk=3)
    a, b = open_dataset(str(tmp_path / "a")), open_dataset(str(tmp_path / "b"))
    assert (len(a.files), len(b.files)) == (3, 4)
    rows_a = [r for batch in a.iter_batches() for r in batch.to_pylist()]
    rows_b = [r for batch in b.iter_batches() for r in batch.to_pylist()]
    assert rows_a == rows_b and rows_a[0]["id"] == "train/example_000000" and len(rows_a) == 11
    rc, stdout, _ = run_cli(capsys, "example-data", str(tmp_path / "c"), "--n", "4", "--size", "32x32", "--seed", "4")
    assert rc == 0 and "wrote 4 rows" in stdout
    c = open_dataset(str(tmp_path / "c"))
    rows_c = [r for batch in c.iter_batches() for r in batch.to_pylist()]
    assert rows_c[0]["image"] != rows_a[0]["image"]
    assert c.info.lineage["seed"] == 4 and c.info.lineage["n"] == 4 and c.info.lineage["size"] == [32, 32]
    assert c.info.lineage["generator"] == "augment.data.example" and c.info.classes == camvid.CLASSES
    assert sum(c.info.class_pixels) <= 4 * 32 * 32 and c.info.image_size == (32, 32)


# --------------------------------------------------------------------------------------------------------------
# Selecting samples by file name (--match): sequence-disjoint CamVid splits


CAMVID_FRAMES = ["0001TP_006690", "0006R0_f00930", "0016E5_00390", "0016E5_00420", "Seq05VD_f00000"]


def test_camvid_sequence_of_real_frame_names():
    assert [camvid.sequence_of(f"{name}.png") for name in CAMVID_FRAMES] == [
        "0001TP", "0006R0", "0016E5", "0016E5", "Seq05VD"]
    assert camvid.sequence_of("/SegNet/CamVid/trainannot/0006R0_f02400.png") == "0006R0"
    assert camvid.sequence_of("0016E5_07959") == "0016E5"
    for bad in ("lonely.png", "_006690.png", "0001TP_.png", "train/"):
        with pytest.raises(AugmentError, match="not a CamVid frame name"):
            camvid.sequence_of(bad)


def test_real_camvid_train_sequences(camvid_root):
    pairs = camvid.discover(camvid_root, "train").pairs
    assert pairs_per_sequence(camvid, pairs) == {"0001TP": 62, "0006R0": 101, "0016E5": 204}
    assert {camvid.sequence_of(p.image) for p in camvid.discover(camvid_root, "val").pairs} == {"0016E5"}
    held_out = select_pairs(pairs, "^0001TP_")
    assert len(held_out) == 62 and len(select_pairs(pairs, "^(0006R0|0016E5)_")) == 305


def sequences_tree(root: Path) -> None:
    """A CamVid train split with one frame per name of CAMVID_FRAMES, listed, plus an unpaired 0006R0 image."""
    lines = []
    for name in CAMVID_FRAMES:
        save(root / "train" / f"{name}.png", rgb(8, 8))
        save(root / "trainannot" / f"{name}.png", labels(8, 8))
        lines.append(f"/SegNet/CamVid/train/{name}.png /SegNet/CamVid/trainannot/{name}.png")
    save(root / "train" / "0006R0_f09999.png", rgb(8, 8))
    lines.append("/SegNet/CamVid/train/0006R0_f09999.png /SegNet/CamVid/trainannot/0006R0_f09999.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def test_ingest_match_keeps_the_named_sequences_and_records_them(tmp_path, capsys, ray_session):
    src, out = tmp_path / "camvid", tmp_path / "train-disjoint"
    sequences_tree(src)
    rc, stdout, _ = run_cli(capsys, "ingest", str(src), "--format", "camvid", "--out", str(out),
                            "--match", "^(0006R0|0016E5)_")
    assert rc == 0 and "ingested 3 rows (1 quarantined)" in stdout
    assert sorted(rows_by_id(out)) == ["train/0006R0_f00930", "train/0016E5_00390", "train/0016E5_00420"]
    lineage = open_dataset(str(out)).info.lineage
    assert lineage["match"] == {"pattern": "^(0006R0|0016E5)_", "kept": 3, "left_out": 2}
    assert lineage["sequences"] == {"0006R0": 1, "0016E5": 2}
    assert "--match '^(0006R0|0016E5)_'" in lineage["command"]
    assert [q["source"] for q in quarantine(out)] == [str(src / "train" / "0006R0_f09999.png")]
    rc, stdout, _ = run_cli(capsys, "info", str(out))
    assert rc == 0 and 'lineage      sequences: {"0006R0": 1, "0016E5": 2}' in stdout

    held_out = ingest(str(src), "camvid", str(tmp_path / "eval-0001TP"), match="^0001TP_")
    assert held_out.rows == 1 and sorted(rows_by_id(tmp_path / "eval-0001TP")) == ["train/0001TP_006690"]
    whole = open_dataset(str(ingest(str(src), "camvid", str(tmp_path / "all")).out)).info.lineage
    assert "match" not in whole and whole["sequences"] == {"0001TP": 1, "0006R0": 1, "0016E5": 2, "Seq05VD": 1}


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("^(0006R0", "--match '^(0006R0' is not a regular expression (missing ), unterminated subpattern"),
        ("train", "no image file name of the 5 pairs in split(s) train matches --match 'train' (e.g. 0001TP_006690.png)"),
    ],
)
def test_ingest_match_errors_are_one_line(tmp_path, capsys, pattern, message):
    src = tmp_path / "camvid"
    sequences_tree(src)
    rc, _, err = run_cli(capsys, "ingest", str(src), "--format", "camvid", "--out", str(tmp_path / "out"),
                         "--match", pattern)
    assert rc == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_match_applies_to_every_format(tmp_path, ray_session):
    src = tmp_path / "f"
    for name in ("aachen_000001", "aachen_000002", "bochum_000001"):
        save(src / "images" / f"{name}.png", rgb(8, 8))
        save(src / "masks" / f"{name}.png", labels(8, 8, high=2))
    result = ingest(str(src), "folder", str(tmp_path / "out"), classes="a,b", match="^aachen_")
    info = open_dataset(str(tmp_path / "out")).info
    assert result.rows == 2 and info.lineage["match"] == {"pattern": "^aachen_", "kept": 2, "left_out": 1}
    assert "sequences" not in info.lineage
