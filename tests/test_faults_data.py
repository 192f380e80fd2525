"""Fault injection on the data side (issue #12): --overwrite that must not delete what augment did not write,
outputs that are the input or the working folder, staging folders of killed ingests, decompression bombs and list
entries that climb out of the dataset root. CI-sized: tiny images, refusals that stop before Ray starts."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augment.cli import main
from augment.data import fs as afs
from augment.data.codec import MAX_PIXELS, decode_image, decode_mask, encode_mask
from augment.data.dataset import StagedOutput, _host_tag, open_dataset, parquet_write_options, remove_stale_staging
from augment.data.layout import CARD_FILE, HF_YAML_FILE, INFO_FILE, QUARANTINE_FILE
from augment.data.schema import arrow_schema
from augment.core.errors import AugmentError, BadSample, DatasetError
from augment.runner.job import load_job, run_job
from helpers import make_dataset
from job_helpers import write_job

RNG = np.random.default_rng(0)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """The exit code and stderr of one CLI call; argparse's own refusals exit 2 through SystemExit."""
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def folder_source(root: Path, n: int = 2, size: tuple[int, int] = (12, 16)) -> Path:
    """A `--format folder` tree of `n` pairs with classes a, b."""
    for i in range(n):
        save(root / "images" / f"s{i}.png", RNG.integers(0, 256, (*size, 3), dtype=np.uint8))
        save(root / "masks" / f"s{i}.png", RNG.integers(0, 2, size, dtype=np.uint8))
    (root / "classes.json").write_text('["a", "b"]')
    return root


def bomb_png(width: int, height: int, mode: str = "L") -> bytes:
    """A 1x1 PNG whose IHDR claims `width` x `height` (CRC fixed, so only the size is a lie)."""
    out = io.BytesIO()
    Image.new(mode, (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --------------------------------------------------------------------------------------------------------------
# --overwrite deletes only what augment wrote


def test_overwrite_refuses_an_unrecognised_folder(tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("x")
    before = snapshot(victim)
    rc, err = run_cli(capsys, "example-data", str(victim), "--n", "8", "--size", "48x64", "--overwrite")
    line = one_line_error(err)
    assert rc == 2 and f"victim: not an augment dataset (no {INFO_FILE}; holds notes.txt, sub/)" in line
    assert line.endswith("refusing to overwrite")
    assert snapshot(victim) == before and sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
    rc, err = run_cli(capsys, "example-data", str(victim), "--n", "8", "--size", "48x64")
    line = one_line_error(err)
    assert rc == 2 and "exists and is not empty (holds notes.txt, sub/)" in line and "--overwrite" not in line
    assert snapshot(victim) == before


def test_overwrite_refuses_a_folder_with_an_invalid_dataset_json(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "dataset.json").write_text('{"schema_version": 1}')  # the name before _dataset.json: read as one too
    (out / "keep.bin").write_bytes(b"\0")
    before = snapshot(out)
    with pytest.raises(DatasetError, match=r"not an augment dataset \(dataset.json: invalid .*holds dataset.json, "
                                           r"keep.bin\); refusing to overwrite"):
        make_dataset(out, 2, overwrite=True)
    assert snapshot(out) == before


def test_overwrite_refuses_a_dataset_holding_files_it_does_not_list(tmp_path):
    out = tmp_path / "ds"
    make_dataset(out, 2)
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    before = snapshot(out)
    with pytest.raises(DatasetError, match=rf"files its {INFO_FILE} does not list \(notes.txt, extra/\); refusing "
                                           r"to overwrite"):
        make_dataset(out, 3, overwrite=True)
    assert snapshot(out) == before and len(open_dataset(str(out))) == 2


def test_overwrite_refuses_a_dataset_json_listing_paths_outside_its_folder(tmp_path):
    outside = tmp_path / "precious.parquet"
    outside.write_bytes(b"keep")
    out = tmp_path / "ds"
    make_dataset(out, 2)
    info = json.loads((out / INFO_FILE).read_text())
    info["files"].append("../precious.parquet")
    (out / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"lists '../precious.parquet', which is not a file inside the folder"):
        make_dataset(out, 3, overwrite=True)
    assert outside.read_bytes() == b"keep" and (out / INFO_FILE).is_file()


def forged_dataset(tmp_path: Path, out: Path, files: dict[str, bytes]) -> Path:
    """`out` holding `files` and a valid info file (a real one's) that lists them."""
    info = json.loads((Path(make_dataset(tmp_path / "real", 2)) / INFO_FILE).read_text())
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / INFO_FILE).write_text(json.dumps({**info, "files": sorted(files)}))
    return out


def test_overwrite_refuses_a_dataset_json_listing_a_file_augment_never_writes(tmp_path, capsys):
    victim = forged_dataset(tmp_path, tmp_path / "v2", {"notes.txt": b"my notes"})
    before = snapshot(victim)
    rc, err = run_cli(capsys, "example-data", str(victim), "--n", "2", "--size", "32x32", "--overwrite")
    line = one_line_error(err)
    assert rc == 2 and f"v2: not an augment dataset ({INFO_FILE} lists 'notes.txt', which is not a name augment " \
                       "gives its Parquet files" in line and line.endswith("refusing to overwrite")
    assert snapshot(victim) == before


@pytest.mark.parametrize("name", ["part-00000-0000.parquet", "data/shard-00003.parquet"])
def test_overwrite_refuses_a_listed_file_that_is_not_parquet(tmp_path, name):
    victim = forged_dataset(tmp_path, tmp_path / "v2", {name: b"not parquet, but named like it"})
    before = snapshot(victim)
    with pytest.raises(DatasetError, match=f"{INFO_FILE} lists '{name}', which is not a Parquet file \\(no PAR1"):
        make_dataset(victim, 2, overwrite=True)
    assert snapshot(victim) == before


def test_overwrite_replaces_a_dataset_whose_files_are_shards(tmp_path):
    parquet = (Path(make_dataset(tmp_path / "src", 2)) / "part-00000-0000.parquet").read_bytes()
    out = forged_dataset(tmp_path, tmp_path / "ds", {"data/shard-00000.parquet": parquet})
    make_dataset(out, 3, overwrite=True)
    assert len(open_dataset(str(out))) == 3 and sorted(p.name for p in out.iterdir()) == sorted([
        HF_YAML_FILE, CARD_FILE, INFO_FILE, "part-00000-0000.parquet", QUARANTINE_FILE])


def test_overwrite_replaces_a_dataset_deleting_only_its_files(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()  # an empty folder takes a dataset without --overwrite
    make_dataset(out, 2, seed=1)
    old_part = (out / "part-00000-0000.parquet").read_bytes()
    make_dataset(out, 3, seed=2, overwrite=True)
    assert len(open_dataset(str(out))) == 3 and (out / "part-00000-0000.parquet").read_bytes() != old_part
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging or set-aside folder left


def test_file_appearing_before_commit_stops_the_overwrite(tmp_path):
    out = tmp_path / "ds"
    make_dataset(out, 2)
    with pytest.raises(DatasetError, match=r"does not list \(late.txt\)"):
        with StagedOutput(str(out), overwrite=True) as staged:
            (out / "late.txt").write_text("written while the ingest ran")
            info = open_dataset(str(out)).info
            staged.commit(info, [])
    assert (out / "late.txt").is_file() and len(open_dataset(str(out))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("case", ["same", "out_inside_src", "src_inside_out"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_ingest_refuses_an_output_that_is_its_input(tmp_path, capsys, case, overwrite):
    if case == "src_inside_out":
        src, out = folder_source(tmp_path / "out" / "src"), tmp_path / "out"
    else:
        src = folder_source(tmp_path / "src")
        out = src if case == "same" else src / "ds"
    before = snapshot(tmp_path)
    argv = ["ingest", str(src), "--format", "folder", "--out", str(out)] + (["--overwrite"] if overwrite else [])
    rc, err = run_cli(capsys, *argv)
    assert rc == 2 and "are the same folder or one holds the other" in one_line_error(err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_output_may_not_be_the_working_folder_or_above(tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("x")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    rc, err = run_cli(capsys, "example-data", out, "--n", "2", "--size", "32x32", "--overwrite")
    line = one_line_error(err)
    assert rc == 2 and ("empty path" in line if out == "" else "the current folder or a folder above" in line)
    assert snapshot(tmp_path) == before


def test_same_or_nested(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert afs.same_or_nested(str(tmp_path / "a"), str(tmp_path / "a" / "b" / ".."))
    assert afs.same_or_nested(str(tmp_path / "a" / "b"), str(tmp_path / "a"))
    assert afs.same_or_nested(str(tmp_path / "link" / "b"), str(tmp_path / "a"))
    assert not afs.same_or_nested(str(tmp_path / "a"), str(tmp_path / "ab"))
    assert not afs.same_or_nested(str(tmp_path / "a"), "s3://bucket" + str(tmp_path / "a"))


@pytest.mark.parametrize("where", ["same", "inside"])
def test_run_refuses_an_output_that_is_the_jobs_data(tmp_path, where):
    data = make_dataset(tmp_path / "ds", 2)
    output = data if where == "same" else f"{data}/synth"
    job = write_job(tmp_path / "job.yaml", data=data, generator=str(tmp_path / "gan"),
                    segmenter=str(tmp_path / "seg"), output=output, classes={"class1": 1})
    before = snapshot(tmp_path / "ds")
    with pytest.raises(AugmentError, match="the job's data .* are the same folder or one holds the other"):
        run_job(load_job(str(job)), overwrite=True)
    assert snapshot(tmp_path / "ds") == before


# --------------------------------------------------------------------------------------------------------------
# Staging folders of killed ingests


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def staging(parent: Path, out: str, host: str, pid: int, tag: str, files: dict[str, bytes]) -> Path:
    folder = parent / f"{out}.tmp-{host}-{pid}-{tag}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_stale_staging_of_a_dead_writer_is_removed_and_nothing_else(tmp_path, capsys):
    host, dead, part = _host_tag(), dead_pid(), {"part-00000-0000.parquet": b"half", f"{INFO_FILE}.tmp-1-ab": b"{"}
    stale = staging(tmp_path, "out", host, dead, "0000dead", part)
    live = staging(tmp_path, "out", host, os.getpid(), "0000beef", part)
    other_host = staging(tmp_path, "out", "ffffffff" if host != "ffffffff" else "eeeeeeee", dead, "00000001", part)
    other_out = staging(tmp_path, "out2", host, dead, "00000002", part)
    foreign = staging(tmp_path, "out", host, dead, "00000003", {"notes.txt": b"mine"})
    legacy = tmp_path / "out.tmp-0badf00d"
    legacy.mkdir()
    make_dataset(tmp_path / "out", 2)
    assert not stale.exists() and "staging folder of an earlier run" in capsys.readouterr().err
    assert all(p.is_dir() and any(p.iterdir()) for p in (live, other_host, other_out, foreign))
    assert legacy.is_dir() and len(open_dataset(str(tmp_path / "out"))) == 2
    assert remove_stale_staging(afs.resolve(str(tmp_path / "out"))[0], str(tmp_path / "out")) == []


def killed_mid_commit(tmp_path: Path, out: Path, lock_file: bool = True) -> str:
    """What a writer killed between `move(out, old)` and `move(staging, out)` leaves: `out` missing, the dataset it
    replaced (2 rows) in `out.old-<suffix>`, its complete new one (3 rows) in `out.tmp-<suffix>` and, where it
    flocked one, its lock file (free now). Returns the suffix."""
    make_dataset(out, 2, seed=1)
    suffix = f"{_host_tag()}-{dead_pid()}-0000dead"
    make_dataset(tmp_path / "new", 3, seed=2)
    out.rename(tmp_path / f"{out.name}.old-{suffix}")
    (tmp_path / "new").rename(tmp_path / f"{out.name}.tmp-{suffix}")
    if lock_file:
        (tmp_path / f"{out.name}.lock-{suffix}").touch()
    return suffix


@pytest.mark.parametrize("lock_file", [True, False])
def test_writer_killed_between_its_two_moves_gets_the_old_dataset_back(tmp_path, capsys, lock_file):
    out = tmp_path / "ds"
    make_dataset(tmp_path / "ref", 2, seed=1)
    suffix = killed_mid_commit(tmp_path, out, lock_file)
    with pytest.raises(DatasetError, match="already holds a dataset; pass --overwrite"):
        make_dataset(out, 4)  # the restored dataset is there again: replacing it needs --overwrite
    err = capsys.readouterr().err
    assert f"restored {out} from {out}.old-{suffix}: an earlier run (pid" in err and "was killed" in err
    assert f"removed {out}.tmp-{suffix}: staging folder of an earlier run" in err
    assert len(open_dataset(str(out))) == 2
    assert (out / "part-00000-0000.parquet").read_bytes() == (tmp_path / "ref" / "part-00000-0000.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ref"]
    killed_mid_commit(tmp_path, tmp_path / "ds2", lock_file)
    make_dataset(tmp_path / "ds2", 4, overwrite=True)
    assert len(open_dataset(str(tmp_path / "ds2"))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds2", "ref"]


def test_two_killed_replacements_are_not_guessed_between(tmp_path):
    import shutil

    out = tmp_path / "ds"
    suffix = killed_mid_commit(tmp_path, out)
    shutil.copytree(tmp_path / f"ds.old-{suffix}", tmp_path / f"ds.old-{_host_tag()}-{dead_pid()}-0000beef")
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=rf"{out} is missing and 2 earlier runs killed while replacing it left "
                                           rf".*ds.old-.*, .*ds.old-.*; move the right one back to {out} by hand"):
        make_dataset(out, 2, overwrite=True)
    assert snapshot(tmp_path) == before


def test_replaced_dataset_left_half_deleted_is_removed_unless_it_holds_other_files(tmp_path, capsys):
    out = Path(make_dataset(tmp_path / "ds", 2))
    prefix = f"ds.old-{_host_tag()}-{dead_pid()}"
    half = Path(make_dataset(tmp_path / "half", 2, seed=3)).rename(tmp_path / f"{prefix}-00000001")
    (half / QUARANTINE_FILE).unlink()  # killed while deleting the replaced files: its info still lists the rest
    emptied = tmp_path / f"{prefix}-00000002" / "data"  # killed after the last file, before the folder went
    emptied.mkdir(parents=True)
    foreign = tmp_path / f"{prefix}-00000003"
    foreign.mkdir()
    (foreign / "part-00009-0000.parquet").write_bytes(b"PAR1 not listed by any dataset info: not augment's")
    make_dataset(out, 3, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", foreign.name]
    assert f"kept {foreign}: it holds files that appeared in" in capsys.readouterr().err
    assert (foreign / "part-00009-0000.parquet").is_file() and len(open_dataset(str(out))) == 3


def test_liveness_goes_by_the_writers_flock_not_its_pid(tmp_path, monkeypatch):
    import fcntl

    from augment.data import dataset as dataset_module

    host, dead, part = _host_tag(), dead_pid(), {"part-00000-0000.parquet": b"PAR1"}
    out = str(tmp_path / "out")
    fs = afs.resolve(out)[0]
    reused = staging(tmp_path, "out", host, os.getpid(), "0000aaaa", part)  # its pid is someone else's now
    lock_reused = tmp_path / f"out.lock-{host}-{os.getpid()}-0000aaaa"
    lock_reused.touch()
    hidden = staging(tmp_path, "out", host, dead, "0000bbbb", part)  # a live writer whose pid this container lacks
    lock_hidden = tmp_path / f"out.lock-{host}-{dead}-0000bbbb"
    with open(lock_hidden, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_stale_staging(fs, out) == [str(reused)]
    assert hidden.is_dir() and lock_hidden.is_file() and not lock_reused.exists()
    alive = staging(tmp_path, "out", host, os.getpid(), "0000cccc", part)
    (tmp_path / f"out.lock-{host}-{os.getpid()}-0000cccc").touch()
    monkeypatch.setattr(dataset_module, "fcntl", None)  # no flock here: host and pid decide
    assert remove_stale_staging(fs, out) == [str(hidden)] and alive.is_dir()
    assert not lock_hidden.exists()


def test_staged_output_holds_its_lock_while_it_runs(tmp_path, monkeypatch):
    from augment.data import dataset as dataset_module

    out = str(tmp_path / "deep" / "ds")  # the lock file's folder is made too
    with StagedOutput(out) as staged:
        lock = Path(f"{out}.lock-{staged.suffix}")
        assert lock.is_file() and Path(staged.staging).is_dir()
        monkeypatch.setattr(dataset_module, "_pid_alive", lambda pid: False)  # as seen from another container
        assert remove_stale_staging(staged.fs, out) == [] and Path(staged.staging).is_dir()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == []  # staging and lock file gone
    monkeypatch.setattr(dataset_module, "fcntl", None)  # where flock is not available: no lock file
    with StagedOutput(out) as staged:
        assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == [Path(staged.staging).name]
        monkeypatch.setattr(dataset_module, "_pid_alive", lambda pid: True)
        assert remove_stale_staging(staged.fs, out) == []


# --------------------------------------------------------------------------------------------------------------
# Decompression bombs


def test_decode_caps_pixels_before_decoding():
    with pytest.raises(BadSample, match=r"image is 8001x8000 \(64008000 pixels\), over the cap of 64000000"):
        decode_image(bomb_png(8001, 8000, "RGB"), "big.png")
    with pytest.raises(BadSample, match=r"mask is 12000x12000 \(144000000 pixels\), over the cap"):
        decode_mask(bomb_png(12_000, 12_000), "big.png")
    for cap in (MAX_PIXELS, None):  # past PIL's own limit, which holds even without our cap
        with pytest.raises(BadSample, match="mask is too large to decode safely"):
            decode_mask(bomb_png(100_000, 100_000), "huge.png", max_pixels=cap)
    assert decode_mask(encode_mask(np.ones((4, 5), np.uint8)), max_pixels=20).shape == (4, 5)
    with pytest.raises(BadSample, match="over the cap of 19 pixels"):
        decode_mask(encode_mask(np.ones((4, 5), np.uint8)), max_pixels=19)
    assert MAX_PIXELS >= 4 * 3840 * 2160


def test_bomb_files_are_quarantined_and_ingest_goes_on(tmp_path, capsys, ray_session):
    src = folder_source(tmp_path / "src", n=1)
    (src / "images" / "bomb.png").write_bytes(bomb_png(100_000, 100_000, "RGB"))
    save(src / "masks" / "bomb.png", np.zeros((4, 4), np.uint8))
    save(src / "images" / "bigmask.png", np.zeros((4, 4, 3), np.uint8))
    (src / "masks" / "bigmask.png").write_bytes(bomb_png(12_000, 12_000))
    out = tmp_path / "out"
    assert main(["ingest", str(src), "--format", "folder", "--out", str(out)]) == 0
    info = open_dataset(str(out)).info
    assert info.num_rows == 1 and info.quarantined == 2 and info.lineage["max_pixels"] == MAX_PIXELS
    reasons = {Path(q["source"]).parent.name + "/" + Path(q["source"]).name: q["reason"]
               for q in map(json.loads, (out / QUARANTINE_FILE).read_text().splitlines())}
    assert "too large to decode safely" in reasons["images/bomb.png"]
    assert "mask is 12000x12000 (144000000 pixels), over the cap" in reasons["masks/bigmask.png"]


def test_max_pixels_option(tmp_path, capsys, ray_session):
    src = folder_source(tmp_path / "src", n=1, size=(12, 16))
    save(src / "images" / "wide.png", RNG.integers(0, 256, (12, 40, 3), dtype=np.uint8))
    save(src / "masks" / "wide.png", np.zeros((12, 40), np.uint8))
    out = tmp_path / "out"
    assert main(["ingest", str(src), "--format", "folder", "--out", str(out), "--max-pixels", "200"]) == 0
    info = open_dataset(str(out)).info
    assert info.num_rows == 1 and info.quarantined == 1 and "--max-pixels 200" in info.lineage["command"]
    assert "image is 40x12 (480 pixels), over the cap of 200" in (out / QUARANTINE_FILE).read_text()


# --------------------------------------------------------------------------------------------------------------
# List entries outside the dataset root


def test_camvid_list_line_leaving_the_root_is_quarantined(tmp_path, ray_session):
    outside = tmp_path / "outside"
    save(outside / "secret.png", np.zeros((12, 16, 3), np.uint8))
    save(outside / "secret_mask.png", np.zeros((12, 16), np.uint8))
    root = tmp_path / "data" / "camvid"
    save(root / "train" / "a.png", np.zeros((12, 16, 3), np.uint8))
    save(root / "trainannot" / "a.png", np.ones((12, 16), np.uint8))
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n"
        "../../outside/secret.png ../../outside/secret_mask.png\n"
        f"{outside}/secret.png {outside}/secret_mask.png\n"
        "/SegNet/../../../outside/secret.png /SegNet/CamVid/trainannot/a.png\n"
    )
    out = tmp_path / "out"
    assert main(["ingest", str(root), "--format", "camvid", "--out", str(out)]) == 0
    ds = open_dataset(str(out))
    assert ds.info.num_rows == 1 and ds.info.quarantined == 3
    records = [json.loads(x) for x in (out / QUARANTINE_FILE).read_text().splitlines()]
    by_line = {r["source"].rsplit(":", 1)[-1] if "train.txt:" in r["source"] else r["source"]: r for r in records}
    assert "'../../outside/secret.png' leaves the dataset root; not read" in by_line["2"]["reason"]
    assert "leaves the dataset root" in by_line["4"]["reason"] and by_line["4"]["source"].endswith("train.txt:4")
    absolute = [r for r in records if "train.txt:3" in r["reason"]]
    assert absolute and "not found under the dataset root" in absolute[0]["reason"]
    assert all(r["source_image"] != str(outside / "secret.png") for b in ds.iter_batches() for r in b.to_pylist())


def test_voc_list_entry_leaving_the_root_is_quarantined(tmp_path):
    from augment.data.formats import voc

    base = tmp_path / "VOC2012"
    save(base / "JPEGImages" / "ok.jpg", np.zeros((8, 8, 3), np.uint8))
    save(base / "SegmentationClass" / "ok.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "secret.jpg", np.zeros((8, 8, 3), np.uint8))
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text(f"ok\n../../secret\n{tmp_path}/secret\n")
    found = voc.discover(tmp_path, "train")
    assert [p.id for p in found.pairs] == ["train/ok"]
    assert [(o["source"].rsplit(":", 1)[-1], "leaves the dataset root; not read" in o["reason"])
            for o in found.orphans] == [("2", True), ("3", True)]


# --------------------------------------------------------------------------------------------------------------
# Parquet layout: no whole PNGs in statistics, no dictionaries of unique bytes, page checksums on


BYTES_COLUMNS = {"image.bytes", "mask.bytes"}


def column_chunks(path) -> dict[str, list]:
    """Every column chunk's metadata of a Parquet file, by column path."""
    meta = pq.ParquetFile(path).metadata
    chunks: dict[str, list] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            chunks.setdefault(chunk.path_in_schema, []).append(chunk)
    return chunks


def test_dataset_parquet_has_no_statistics_or_dictionary_for_the_png_bytes(tmp_path):
    out = make_dataset(tmp_path / "ds", 6)
    chunks = column_chunks(open_dataset(out).files[0])
    assert BYTES_COLUMNS <= set(chunks)
    for path, per_group in chunks.items():
        for chunk in per_group:
            if path in BYTES_COLUMNS:
                assert not chunk.is_stats_set and not chunk.has_dictionary_page, path
                assert "RLE_DICTIONARY" not in chunk.encodings and "PLAIN_DICTIONARY" not in chunk.encodings
            else:
                assert chunk.is_stats_set, path
    assert chunks["id"][0].statistics.min == "train/0-0" and chunks["split"][0].has_dictionary_page
    rows = open_dataset(out).arrow.to_table()  # read back with page checksum verification
    assert rows.num_rows == 6 and rows.column("image").combine_chunks().field("bytes")[0].as_py()[:4] == b"\x89PNG"


def test_every_schema_augment_writes_gets_statistics_and_dictionaries_only_for_scalar_columns(tmp_path):
    from augment.runner.shard import EXAMPLE_SCHEMA

    png = {"bytes": b"\x89PNG" + os.urandom(64), "path": "a.png"}
    cases = ((arrow_schema("synthetic"), {"id": "a", "image": png, "mask": png, "class_pixels": [1, 2]}, BYTES_COLUMNS),
             (EXAMPLE_SCHEMA, {"id": "a", "image": png["bytes"], "mask": png["bytes"], "pred": png["bytes"],
                               "host": png["bytes"], "object": png["bytes"], "object_shape": png["bytes"],
                               "box": [1, 2, 3, 4]},
              {"image", "mask", "pred", "host", "object", "object_shape"}))
    for schema, row, binary in cases:
        options = parquet_write_options(schema)
        assert options["write_page_checksum"] and options["compression"] == "zstd"
        path = tmp_path / "t.parquet"
        pq.write_table(pa.Table.from_pylist([row, row], schema=schema), path, **options)
        written = {name: chunks[0] for name, chunks in column_chunks(path).items()}
        assert set(written) - set(options["write_statistics"]) == binary  # every other leaf, nested too, is listed
        for name, chunk in written.items():
            assert chunk.is_stats_set == (name not in binary), name
            assert not (name in binary and chunk.has_dictionary_page), name
        back = pq.ParquetFile(path, page_checksum_verification=True).read().to_pylist()
        assert len(back) == 2 and all(back[1][key] == value for key, value in row.items())
