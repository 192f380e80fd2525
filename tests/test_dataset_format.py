import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from augment.data.codec import class_pixels, decode_image, decode_mask, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row, open_dataset
from augment.data.layout import INFO_FILE, QUARANTINE_FILE
from augment.data.schema import arrow_schema
from augment.core.errors import BadSample, DatasetError

CLASSES = ["a", "b", "c"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def write_tiny(out, n=5, rows_per_group=2, overwrite=False):
    rng = np.random.default_rng(0)
    with StagedOutput(str(out), overwrite=overwrite) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", 3, row_group_rows=rows_per_group)
        expected = []
        for i in range(n):
            img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
            mask = rng.integers(0, 3, (8, 12), dtype=np.uint8)
            mask[0, 0] = 255
            writer.write(make_row(f"train/{i}", encode_image(img), encode_mask(mask), 8, 12, "train",
                                  class_pixels(mask, 3, 255)))
            expected.append((img, mask))
        writer.quarantine("bad.png", "corrupt")
        stats = writer.close()
        info = DatasetInfo(classes=CLASSES, palette=PALETTE, lineage={"source": "test"})
        info.apply_stats(stats)
        staged.commit(info, stats.quarantine)
    return expected


def test_round_trip_and_info(tmp_path):
    expected = write_tiny(tmp_path / "ds")
    ds = open_dataset(str(tmp_path / "ds"))
    assert len(ds) == 5 and ds.info.quarantined == 1 and ds.info.image_size == (8, 12)
    rows = list(ds.iter_samples())
    for row, (img, mask) in zip(rows, expected):
        assert np.array_equal(row["image"], img) and np.array_equal(row["mask"], mask)
    assert sum(ds.info.class_pixels) == 5 * (8 * 12 - 1)
    pf = pq.ParquetFile(ds.files[0])
    assert pf.metadata.num_row_groups == 3
    assert b"huggingface" in pf.schema_arrow.metadata
    assert json.loads((tmp_path / "ds" / QUARANTINE_FILE).read_text())["reason"] == "corrupt"
    assert not list(tmp_path.glob("ds.tmp-*"))


def test_refuses_existing_dataset_unless_overwrite(tmp_path):
    write_tiny(tmp_path / "ds")
    with pytest.raises(DatasetError, match="already holds a dataset"):
        write_tiny(tmp_path / "ds")
    write_tiny(tmp_path / "ds", n=2, overwrite=True)
    assert len(open_dataset(str(tmp_path / "ds"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StagedOutput(str(tmp_path / "ds")) as staged:
            PartWriter(staged.fs, staged.staging, "p", "sample", 3).close()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_codec_errors():
    with pytest.raises(BadSample, match="corrupt"):
        decode_image(encode_image(np.zeros((4, 4, 3), np.uint8))[:30], "x.png")
    with pytest.raises(BadSample, match="single-channel"):
        decode_mask(encode_image(np.zeros((4, 4, 3), np.uint8)), "m.png")
    with pytest.raises(BadSample, match=r"label value\(s\) \[7\]"):
        class_pixels(np.full((2, 2), 7, np.uint8), 3, 255, "m.png")


def test_bad_dataset_json(tmp_path):
    write_tiny(tmp_path / "ds")
    info = json.loads((tmp_path / "ds" / INFO_FILE).read_text())
    info["schema_version"] = 99
    (tmp_path / "ds" / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="schema_version 99"):
        open_dataset(str(tmp_path / "ds"))
    with pytest.raises(DatasetError, match="no such dataset"):
        open_dataset(str(tmp_path / "nope"))


def test_schemas_share_layout():
    sample, synthetic = arrow_schema("sample"), arrow_schema("synthetic")
    assert synthetic.names[: len(sample.names)] == sample.names
    assert "accepted" in synthetic.names
