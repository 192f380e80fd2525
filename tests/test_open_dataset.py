"""Dataset folders every tool opens (issue #13, item 2): pyarrow, Hugging Face `datasets`, DuckDB and Ray Data read an
ingested dataset and a job output whole, as written, with exactly their rows; folders with the old names still
open; the dataset card; --overwrite and a user's README.md; the Python API (`augment.open_dataset`).

CI-sized: 16x16 images, a few rows, one tiny job of 3 shards.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

import augment
from augment.cli import main
from augment.core.errors import AugmentError, DatasetError
from augment.data.card import hf_split_names
from augment.data.codec import class_pixels, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row, open_dataset
from augment.data.layout import (
    CARD_FILE, HF_YAML_FILE, INFO_FILE, LEGACY_INFO_FILE, LEGACY_QUARANTINE_FILE, QUARANTINE_FILE,
)
from augment.data.schema import arrow_schema
from augment.runner.job import load_job, run_job
from augment.runner.markers import JOB_FILE, LEGACY_NAMES, MARKER_DIR, PLAN_FILE, SHEETS_DIR, SUMMARY_FILE
from conftest import PROJECT_ROOT
from helpers import blob_sample, make_dataset
from job_helpers import make_job_env, write_job

SPLITS = {"train": 5, "val": 3}
QUOTAS = {"car": 3, "pedestrian": 2}


def folder_source(root: Path) -> Path:
    """A `--format folder` tree with a train and a val split of blob scenes (classes a, b, c)."""
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        for i in range(n):
            image, mask = blob_sample(rng, (16, 16), 3)
            for kind, array in (("images", image), ("masks", mask)):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / kind / split / f"{split}{i}.png")
    (root / "classes.json").write_text('["a", "b", "c"]')
    return root


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """`augment ingest --split all` of a two-split folder tree, in one task (so one writer meets both splits)."""
    from conftest import ensure_local_ray

    ensure_local_ray()
    root = tmp_path_factory.mktemp("ingested")
    out = root / "ds"
    assert main(["ingest", str(folder_source(root / "src")), "--format", "folder", "--split", "all",
                 "--workers", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def job_output(tmp_path_factory) -> Path:
    """A finished job output of 5 rows in 3 shards, with contact sheets and their examples."""
    from conftest import ensure_local_ray

    ensure_local_ray()
    env = make_job_env(tmp_path_factory.mktemp("jobenv"), n=8)
    path = write_job(env["root"] / "job.yaml", data=env["data"], generator=env["gan"], segmenter=env["seg"],
                     output=str(env["root"] / "out"), classes=QUOTAS, filter={"min_miou": 0.0, "min_target_iou": 0.0},
                     sheets=1, resources={"workers": 1, "batch_size": 2, "samples_per_shard": 2})
    assert run_job(load_job(str(path)))["rows"] == sum(QUOTAS.values())
    return env["root"] / "out"


def expected_ids(folder: Path) -> list[str]:
    return sorted(open_dataset(str(folder)).arrow.to_table(columns=["id"]).column("id").to_pylist())


def hf_load(folder: Path, tmp_path: Path, **kwargs):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The four tools


@pytest.mark.parametrize("which", ["ingested", "job_output"])
def test_every_tool_opens_the_folder_whole_with_exactly_its_rows(which, request, tmp_path, ray_session):
    duckdb = pytest.importorskip("duckdb")
    import ray.data

    folder = request.getfixturevalue(which)
    ids = expected_ids(folder)
    rows = sum(SPLITS.values()) if which == "ingested" else sum(QUOTAS.values())
    assert len(ids) == len(set(ids)) == rows
    if which == "job_output":  # what used to get in the way is there: examples (Parquet), sheets, JSON sidecars
        assert list((folder / MARKER_DIR).glob("*.examples.pq")) and list((folder / SHEETS_DIR).glob("*.png"))
        assert all((folder / name).is_file() for name in (JOB_FILE, PLAN_FILE, SUMMARY_FILE))
    assert all((folder / name).is_file() for name in (INFO_FILE, CARD_FILE, HF_YAML_FILE))

    assert sorted(pads.dataset(str(folder)).to_table(columns=["id"]).column("id").to_pylist()) == ids

    glob = f"'{folder}/**/*.parquet'"
    assert duckdb.sql(f"SELECT count(*) FROM {glob}").fetchall() == [(rows,)]
    assert sorted(r[0] for r in duckdb.sql(f"SELECT id FROM {glob}").fetchall()) == ids

    assert sorted(r["id"] for r in ray.data.read_parquet(str(folder)).select_columns(["id"]).take_all()) == ids

    loaded = hf_load(folder, tmp_path)
    splits = SPLITS if which == "ingested" else {"train": rows}
    assert {name: part.num_rows for name, part in loaded.items()} == splits
    assert sorted(i for part in loaded.values() for i in part["id"]) == ids
    for name, part in loaded.items():
        assert set(part["split"]) == {name}
    train = hf_load(folder, tmp_path, split="train")
    side = 16 if which == "ingested" else 32
    assert train.num_rows == splits["train"] and train[0]["image"].size == train[0]["mask"].size == (side, side)
    assert type(train.features["image"]).__name__ == "Image" and type(train.features["mask"]).__name__ == "Image"


def test_a_writer_starts_a_new_file_where_the_split_changes(tmp_path):
    rng = np.random.default_rng(1)
    with StagedOutput(str(tmp_path / "ds")) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", 3)
        for i, split in enumerate(["train", "train", "val", "train"]):
            image, mask = blob_sample(rng, (8, 8), 3)
            writer.write(make_row(f"{split}/{i}", encode_image(image), encode_mask(mask), 8, 8, split,
                                  class_pixels(mask, 3, 255)))
        stats = writer.close()
        info = DatasetInfo(classes=["a", "b", "c"], palette=[[0, 0, 0]] * 3)
        info.apply_stats(stats)
        staged.commit(info, [])
    ds = open_dataset(str(tmp_path / "ds"))
    held = [sorted(set(pq.read_table(f, columns=["split"]).column(0).to_pylist())) for f in ds.files]
    assert ds.info.files == [f"part-00000-000{k}.parquet" for k in range(3)] and held == [["train"], ["val"], ["train"]]
    header = yaml.safe_load((tmp_path / "ds" / HF_YAML_FILE).read_text())
    assert header["configs"][0]["data_files"] == [
        {"split": "train", "path": ["part-00000-0000.parquet", "part-00000-0002.parquet"]},
        {"split": "val", "path": ["part-00000-0001.parquet"]}]


# ----------------------------------------------------------------------------------------------------------------
# The dataset card


def card_parts(folder: Path) -> tuple[dict, str]:
    """(the YAML header of the card, parsed; its Markdown part)."""
    text = (folder / CARD_FILE).read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


@pytest.mark.parametrize("which", ["ingested", "job_output"])
def test_the_card_header_lists_each_splits_files_and_the_body_says_what_the_data_is(which, request):
    folder = request.getfixturevalue(which)
    ds = open_dataset(str(folder))
    header, body = card_parts(folder)
    assert header == yaml.safe_load((folder / HF_YAML_FILE).read_text())
    [config] = header["configs"]
    assert config["config_name"] == "default"
    listed = {entry["split"]: entry["path"] for entry in config["data_files"]}
    assert sorted(p for paths in listed.values() for p in paths) == sorted(ds.info.files)
    for split, paths in listed.items():
        for path in paths:
            assert set(pq.read_table(folder / path, columns=["split"]).column(0).to_pylist()) == {split}
    schema = arrow_schema(ds.info.kind)
    assert [f["name"] for f in header["dataset_info"]["features"]] == schema.names
    assert {"name": "image", "dtype": "image"} in header["dataset_info"]["features"]
    assert "image-segmentation" in header["task_categories"]
    for i, name in enumerate(ds.info.classes):
        colour = ", ".join(map(str, ds.info.palette[i]))
        assert f"| {i} | {name} | {colour} |" in body
    for split, rows in ds.info.splits.items():
        assert f"| {split} | {rows} |" in body
    for value in ds.info.lineage.values():
        if isinstance(value, str):
            assert f"`{value}`" in body
    for line in (f'pyarrow.dataset.dataset("{folder.name}")', f'datasets.load_dataset("{folder.name}", split="train")',
                 f"SELECT count(*) FROM '{folder.name}/**/*.parquet'", f'ray.data.read_parquet("{folder.name}")',
                 f'augment.open_dataset("{folder.name}").to_torch()'):
        assert line in body
    if which == "job_output":
        assert {"generator_sha256", "segmenter_sha256", "job_fingerprint"} <= set(ds.info.lineage)
        assert "synthetic" in header["tags"] and "| accepted | rejected |" in body
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
               for name in (CARD_FILE, HF_YAML_FILE)}
    assert ds.info.card == digests


def test_split_names_hugging_face_refuses_are_renamed_apart():
    assert hf_split_names(["train", "val"]) == {"train": "train", "val": "val"}
    names = hf_split_names(["my-val", "my_val", "city night"])
    assert names["my_val"] == "my_val" and names["my-val"] == "my_val_2" and names["city night"] == "city_night"


# ----------------------------------------------------------------------------------------------------------------
# --overwrite and a user's README.md


def test_overwrite_refuses_a_users_readme_and_an_edited_card_and_replaces_its_own(tmp_path, capsys):
    out = tmp_path / "ds"
    make_dataset(out, 2)
    (out / "README.md").write_text("# my notes\n")
    assert main(["example-data", str(out), "--n", "2", "--size", "32x32", "--overwrite"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"files its {INFO_FILE} does not list (README.md)" in error
    assert (out / "README.md").read_text() == "# my notes\n" and len(open_dataset(str(out))) == 2
    (out / "README.md").unlink()
    card = (out / CARD_FILE).read_text()
    (out / CARD_FILE).write_text(card + "\nMy own notes on this data.\n")
    with pytest.raises(DatasetError, match=rf"files its {INFO_FILE} does not list \({CARD_FILE}\)"):
        make_dataset(out, 3, overwrite=True)
    assert (out / CARD_FILE).read_text().endswith("My own notes on this data.\n")
    (out / CARD_FILE).write_text(card)
    make_dataset(out, 3, overwrite=True)
    assert len(open_dataset(str(out))) == 3 and "| train | 3 |" in (out / CARD_FILE).read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [HF_YAML_FILE, CARD_FILE, INFO_FILE, QUARANTINE_FILE, "part-00000-0000.parquet"])


def test_a_users_readme_or_edited_card_in_a_job_output_is_refused_with_or_without_overwrite(job_output, tmp_path,
                                                                                           ray_session):
    out = tmp_path / "out"
    shutil.copytree(job_output, out)
    (out / "README.md").write_text("mine")
    job = yaml.safe_load((job_output.parent / "job.yaml").read_text())
    path = write_job(tmp_path / "job.yaml", **{**job, "output": str(out)})
    for overwrite in (False, True):
        with pytest.raises(AugmentError, match=r"not an augmentation job's output \(README.md\)"):
            run_job(load_job(str(path)), overwrite=overwrite)
    assert (out / "README.md").read_text() == "mine"
    (out / "README.md").unlink()
    card = (out / CARD_FILE).read_text()
    (out / CARD_FILE).write_text(card + "My notes.\n")
    for overwrite in (False, True):
        with pytest.raises(AugmentError, match=rf"not an augmentation job's output \({CARD_FILE}\)"):
            run_job(load_job(str(path)), overwrite=overwrite)
    assert (out / CARD_FILE).read_text() == card + "My notes.\n"
    (out / CARD_FILE).write_text(card)
    assert run_job(load_job(str(path)))["shards_run"] == 0  # the card it wrote is its own again: resumed


# ----------------------------------------------------------------------------------------------------------------
# Folders written with the old names


def to_old_layout(folder: Path) -> None:
    """Rename what augment wrote to the names before this layout; drop the card (there was none)."""
    for new, old in LEGACY_NAMES.items():
        if (folder / new).exists():
            (folder / new).rename(folder / old)
    for examples in (folder / MARKER_DIR).glob("*.examples.pq"):
        examples.rename(examples.with_name(examples.name.replace(".examples.pq", ".examples.parquet")))
    for name in (CARD_FILE, HF_YAML_FILE):
        (folder / name).unlink()
    info = json.loads((folder / LEGACY_INFO_FILE).read_text())
    del info["card"]
    (folder / LEGACY_INFO_FILE).write_text(json.dumps(info, indent=2))


def test_a_dataset_with_the_old_names_opens_verifies_and_is_replaced_in_the_new_layout(tmp_path, capsys):
    out = Path(make_dataset(tmp_path / "ds", 3))
    to_old_layout(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LEGACY_INFO_FILE, LEGACY_QUARANTINE_FILE, "part-00000-0000.parquet"])
    ds = augment.open_dataset(str(out))
    assert len(ds) == 3 and ds.info_name == LEGACY_INFO_FILE and len(ds.to_torch()) == 3
    assert main(["verify", str(out)]) == 0 and f"rows: 3 as {LEGACY_INFO_FILE} says" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / LEGACY_INFO_FILE).read_text())
    make_dataset(out, 2, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [HF_YAML_FILE, CARD_FILE, INFO_FILE, QUARANTINE_FILE, "part-00000-0000.parquet"])
    assert len(open_dataset(str(out))) == 2


def test_a_job_output_with_the_old_names_verifies_and_a_rerun_moves_it_to_the_new_layout(job_output, tmp_path,
                                                                                        capsys, ray_session):
    out = tmp_path / "out"
    shutil.copytree(job_output, out)
    to_old_layout(out)
    assert (out / "job.json").is_file() and (out / "sheets").is_dir() and not (out / JOB_FILE).exists()
    assert len(open_dataset(str(out))) == sum(QUOTAS.values())
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "job output" in capsys.readouterr().out
    job = yaml.safe_load((job_output.parent / "job.yaml").read_text())
    summary = run_job(load_job(str(write_job(tmp_path / "job.yaml", **{**job, "output": str(out)}))))
    assert summary["mode"] == "resume" and summary["shards_run"] == 0 and summary["rows"] == sum(QUOTAS.values())
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not names & {*LEGACY_NAMES.values(), "job.json"} and not any(n.startswith("sheets/") for n in names)
    assert not any(n.endswith(".examples.parquet") for n in names)
    assert {INFO_FILE, JOB_FILE, PLAN_FILE, SUMMARY_FILE, CARD_FILE, HF_YAML_FILE} <= names
    assert expected_ids(out) == expected_ids(job_output)
    assert sorted(pads.dataset(str(out)).to_table(columns=["id"]).column("id").to_pylist()) == expected_ids(out)


# ----------------------------------------------------------------------------------------------------------------
# The Python API


def test_open_dataset_gives_arrow_torch_and_hugging_face_views(ingested, tmp_path):
    ds = augment.open_dataset(str(ingested))
    assert len(ds) == 8 and ds.classes == ["a", "b", "c"] and ds.splits == SPLITS and ds.ignore_index == 255
    assert len(ds.palette) == 3 and ds.to_arrow(["id"]).num_rows == 8
    first = next(ds.iter_samples())
    samples = ds.to_torch()
    assert len(samples) == 8
    image, mask = samples[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and mask.dtype == torch.int64
    assert mask.shape == (16, 16)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), first["image"])
    assert np.array_equal(mask.numpy(), first["mask"])
    assert torch.equal(samples[-1][1], samples[7][1])
    with pytest.raises(IndexError):
        samples[8]
    floats, _ = ds.to_torch(normalization="imagenet")[0]
    assert floats.dtype == torch.float32 and floats.shape == (3, 16, 16)
    images, masks = next(iter(torch.utils.data.DataLoader(pickle.loads(pickle.dumps(samples)), batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and masks.shape == (4, 16, 16)
    with pytest.raises(AugmentError, match="normalization must be None or one of"):
        ds.to_torch(normalization="zscore")
    hf = ds.to_hf(cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == 8 and hf[0]["image"].size == (16, 16)
    assert sorted(ds.to_hf(split="val", cache_dir=str(tmp_path / "hf"))["id"]) == [f"val/val{i}" for i in range(3)]
    with pytest.raises(AugmentError, match="no split 'test'"):
        ds.to_hf(split="test")


def test_to_hf_without_datasets_is_one_line(ingested, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(AugmentError, match=r"to_hf\(\) needs the Hugging Face `datasets` package") as info:
        augment.open_dataset(str(ingested)).to_hf()
    assert "\n" not in str(info.value)


def test_import_augment_stays_light_until_the_api_is_used():
    code = ("import sys, augment\nassert 'pyarrow' not in sys.modules\naugment.open_dataset\n"
            "print(sorted(m for m in ('torch', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    assert out.stdout.strip() == "[]"
