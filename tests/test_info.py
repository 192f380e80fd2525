"""`augment info`: the table of rows, sizes, splits and class shares, and --json."""

import json

import numpy as np

from augment.cli import main
from augment.data.codec import class_pixels, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row
from augment.data.layout import INFO_FILE

CLASSES = ["road", "car", "person"]


def write(out, kind="sample", extra=None):
    """Two 4x5 rows in split train, one 2x5 row in split val, a quarantined sample."""
    masks = [np.zeros((4, 5), np.uint8), np.ones((4, 5), np.uint8), np.full((2, 5), 255, np.uint8)]
    masks[1][0, :] = 0
    masks[2][0, 0] = 2
    with StagedOutput(str(out)) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", kind, len(CLASSES))
        for i, (mask, split) in enumerate(zip(masks, ["train", "train", "val"])):
            synthetic = dict(target_class=1, source_id="train/x", seed=i, miou=0.5, target_iou=0.5,
                             pixel_accuracy=0.9, accepted=i != 1, generator_sha256="g", segmenter_sha256="s")
            writer.write(make_row(f"{split}/{i}", encode_image(np.zeros(mask.shape + (3,), np.uint8)),
                                  encode_mask(mask), *mask.shape, split, class_pixels(mask, 3, 255),
                                  **(synthetic if kind == "synthetic" else {})))
        writer.quarantine("bad.png", "corrupt")
        stats = writer.close()
        info = DatasetInfo(classes=CLASSES, palette=[[0, 0, 0]] * 3, kind=kind, extra=extra or {},
                           lineage={"format": "folder", "source": "/data/x", "command": "augment ingest x"})
        info.apply_stats(stats)
        staged.commit(info, stats.quarantine)


def table_line(out, name):
    return next(line.split() for line in out.splitlines() if line.split()[1:2] == [name])


def test_info_table(tmp_path, capsys):
    write(tmp_path / "ds")
    assert main(["info", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "rows         3" in out and "splits       train 2, val 1" in out and "quarantined  1" in out
    assert "4x5 (2 rows), 2x5 (1 rows) (HxW)" in out
    assert "lineage      format: folder" in out and "lineage      command: augment ingest x" in out
    # 50 pixels in all: road 20 + 5 + 0, car 15, person 1, ignore 9.
    assert table_line(out, "road") == ["0", "road", "50.0%", "66.7%"]
    assert table_line(out, "car") == ["1", "car", "30.0%", "33.3%"]
    assert table_line(out, "person") == ["2", "person", "2.0%", "33.3%"]
    assert table_line(out, "(ignore)") == ["255", "(ignore)", "18.0%"]
    assert "accepted" not in out


def test_info_synthetic_accept_counts(tmp_path, capsys):
    counts = {"car": {"accepted": 2, "rejected": 1}}
    write(tmp_path / "syn", kind="synthetic", extra={"counts": counts})
    assert main(["info", str(tmp_path / "syn")]) == 0
    out = capsys.readouterr().out
    assert "kind         synthetic" in out and "accepted  rejected" in out
    assert table_line(out, "car")[-2:] == ["2", "1"] and table_line(out, "road")[-2:] == ["0", "0"]


def test_info_json_and_errors(tmp_path, capsys):
    write(tmp_path / "ds")
    assert main(["info", str(tmp_path / "ds"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "ds" / INFO_FILE).read_text())
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"augment info: error: {tmp_path / 'missing'}: no such dataset folder"
