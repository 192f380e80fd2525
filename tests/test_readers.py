"""An augment dataset reads back unchanged with pyarrow, Ray Data, DuckDB and HuggingFace datasets."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from augment.data.dataset import open_dataset
from augment.data.ingest import write_example_data


@pytest.fixture
def dataset(tmp_path, ray_session):
    write_example_data(str(tmp_path / "ds"), 6, (32, 40), seed=1, rows_per_chunk=4)
    ds = open_dataset(str(tmp_path / "ds"))
    assert len(ds.files) == 2
    expected = {r["id"]: r for b in ds.iter_batches() for r in b.to_pylist()}
    return ds, expected


def test_pyarrow(dataset):
    ds, expected = dataset
    table = pq.read_table(ds.files)
    assert table.num_rows == 6 and table.schema.equals(ds.arrow.schema)
    assert b"huggingface" in table.schema.metadata
    assert {r["id"]: r for r in table.to_pylist()} == expected
    samples = {s["id"]: s for s in ds.iter_samples()}
    assert samples["train/example_000005"]["image"].shape == (32, 40, 3)


def test_ray_data(dataset):
    import ray.data

    ds, expected = dataset
    rows = ray.data.read_parquet(ds.uris).take_all()
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        want = expected[row["id"]]
        assert row["image"]["bytes"] == want["image"]["bytes"] and row["mask"]["bytes"] == want["mask"]["bytes"]
        assert list(row["class_pixels"]) == want["class_pixels"] and row["split"] == "train"


def test_duckdb(dataset):
    import duckdb

    ds, expected = dataset
    files = ", ".join(f"'{f}'" for f in ds.files)
    rows = duckdb.sql(
        f"select id, height, width, class_pixels, image.bytes as img, mask.bytes as msk from read_parquet([{files}])"
    ).fetchall()
    assert len(rows) == 6
    for rid, height, width, pixels, img, msk in rows:
        want = expected[rid]
        assert (height, width, pixels) == (32, 40, want["class_pixels"])
        assert bytes(img) == want["image"]["bytes"] and bytes(msk) == want["mask"]["bytes"]
    [(total,)] = duckdb.sql(f"select sum(list_sum(class_pixels)) from read_parquet([{files}])").fetchall()
    assert total == sum(ds.info.class_pixels)


def test_huggingface_datasets(dataset, tmp_path):
    import datasets

    ds, expected = dataset
    samples = {s["id"]: s for s in ds.iter_samples()}
    hf = datasets.Dataset.from_parquet(ds.files, cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(hf.features["image"], datasets.Image) and isinstance(hf.features["mask"], datasets.Image)
    assert isinstance(hf.features["class_pixels"], datasets.List)
    assert len(hf) == 6
    for row in hf:
        assert row["mask"].mode == "L"
        assert np.array_equal(np.asarray(row["image"]), samples[row["id"]]["image"])
        assert np.array_equal(np.asarray(row["mask"]), samples[row["id"]]["mask"])
    loaded = datasets.load_dataset("parquet", data_files=ds.files, split="train", cache_dir=str(tmp_path / "hf2"))
    assert sorted(loaded["id"]) == sorted(expected)
