"""Fault injection on job outputs (issue #12, part 2): damaged shards are found and remade, stale writers are fenced
off, two jobs racing for one output, `augment verify`, and the removal of dead writers' temporary files.

CI-sized: the built-in example data at 32x32, tiny untrained models, a few shards of a few samples.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from augment.cli import main
from augment.data.dataset import open_dataset, open_parquet
from augment.core.errors import AugmentError
from augment.runner.job import claim_output, load_job, prepare_job, run_job, shard_settings
from augment.runner.markers import (
    INFO_FILE, JOB_FILE, LEGACY_NAMES, PLAN_FILE, SHEETS_DIR, SUMMARY_FILE, OutputFolder, claim_run, marker_file,
    read_marker, shard_file, temporary_shard_file,
)
from job_helpers import make_example_dataset, make_job_env, write_job

QUOTAS = {"car": 4, "pedestrian": 4}
RESOURCES = {"workers": 1, "batch_size": 2, "samples_per_shard": 2}
NO_FILTER = {"min_miou": 0.0, "min_target_iou": 0.0}
SHARDS = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_job_env(tmp_path_factory.mktemp("faultenv"), n=8)


def job_path(env, path: Path, output: Path, **fields) -> Path:
    fields = {"classes": QUOTAS, "filter": NO_FILTER, "sheets": 1, "resources": RESOURCES, **fields}
    return write_job(path, data=env["data"], generator=env["gan"], segmenter=env["seg"], output=str(output), **fields)


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    """A finished job output; tests damage copies of it."""
    from conftest import ensure_local_ray

    ensure_local_ray()
    root = tmp_path_factory.mktemp("finished")
    summary = run_job(load_job(str(job_path(env, root / "job.yaml", root / "out"))))
    assert summary["shards"] == SHARDS
    return root / "out"


def copy_of(finished: Path, env, tmp_path: Path) -> tuple[Path, Path]:
    """(output, job file) of a copy of the finished output: the same job, at another path."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out, job_path(env, tmp_path / "job.yaml", out)


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in list((out / "data").glob("*.parquet")) + list((out / "_markers").glob("*.json"))}


def sfile(out: Path, k: int) -> Path:
    """The file of shard `k` in a finished output (its marker names it: per-run names)."""
    return out / read_marker(OutputFolder(str(out)), k).file


def assert_remade_only(out: Path, before: dict[str, int], shard: int) -> None:
    """Shard `shard` was remade under the new run's names and its damaged files removed; nothing else changed."""
    after = mtimes(out)
    run_id = OutputFolder(str(out)).current_run().run_id
    assert set(after) - set(before) == {shard_file(shard, run_id), marker_file(shard, run_id)}
    assert not [name for name in after if f"shard-{shard:05d}." in name and run_id not in name]  # old ones removed
    assert all(after[name] == before[name] for name in set(before) & set(after))


def assert_sound(out: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "is sound" in capsys.readouterr().out


def flip_bytes(path: Path) -> None:
    """Flip 8 bytes in the middle of the PNG values of the first row group's image column: inside its (compressed)
    data page, past the small page header (the bytes columns carry no statistics and no dictionary page)."""
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)
    assert chunk.path_in_schema == "image.bytes" and not chunk.has_dictionary_page and not chunk.is_stats_set
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    for i in range(at, at + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_markers_record_size_and_sha256_and_parquet_has_page_checksums(finished):
    import hashlib

    out = OutputFolder(str(finished))
    for k in range(SHARDS):
        stats = read_marker(out, k)
        data = sfile(finished, k).read_bytes()
        assert stats.size == len(data) and stats.sha256 == hashlib.sha256(data).hexdigest()
        assert stats.run_id == out.current_run().run_id
    assert open_dataset(str(finished)).arrow.to_table().num_rows == 8
    assert all(pq.ParquetFile(sfile(finished, k)).metadata.num_row_groups for k in range(SHARDS))
    # Flipped bytes in a page are caught by its CRC when augment reads the file.
    damaged = finished.parent / "damaged.parquet"
    shutil.copy(sfile(finished, 0), damaged)
    flip_bytes(damaged)
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        open_parquet(str(damaged)).read()


def test_corrupt_shard_is_found_and_only_it_remade(env, finished, tmp_path, capsys, ray_session):
    out, path = copy_of(finished, env, tmp_path)
    sound = sfile(out, 2).read_bytes()
    flip_bytes(sfile(out, 2))
    before = mtimes(out)
    assert main(["run", str(path)]) == 0
    assert "shard-00002: checksum mismatch, remaking" in capsys.readouterr().out
    assert_remade_only(out, before, 2)
    assert sfile(out, 2).read_bytes() == sound  # deterministic remake
    assert_sound(out, capsys)


def test_truncated_shard_is_found_and_only_it_remade(env, finished, tmp_path, capsys, ray_session):
    out, path = copy_of(finished, env, tmp_path)
    data = sfile(out, 1).read_bytes()
    sfile(out, 1).write_bytes(data[: len(data) // 2])
    before = mtimes(out)
    assert main(["run", str(path)]) == 0
    assert f"shard-00001: {len(data) // 2} bytes, its marker says {len(data)}" in capsys.readouterr().out
    assert_remade_only(out, before, 1)
    assert_sound(out, capsys)


def test_deleted_shard_is_found_and_only_it_remade(env, finished, tmp_path, capsys, ray_session):
    out, path = copy_of(finished, env, tmp_path)
    sfile(out, 3).unlink()
    before = mtimes(out)
    assert main(["run", str(path)]) == 0
    assert "shard-00003: file missing, remaking" in capsys.readouterr().out
    assert_remade_only(out, before, 3)
    assert_sound(out, capsys)


def test_verify_reports_each_problem_of_a_job_output(finished, tmp_path, capsys):
    assert_sound(finished, capsys)
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    name0 = read_marker(OutputFolder(str(out)), 0).file
    flip_bytes(sfile(out, 0))
    sfile(out, 3).unlink()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 2
    captured = capsys.readouterr()
    assert "problem: shard-00000: checksum mismatch" in captured.out
    assert "problem: shard-00003: file missing" in captured.out
    assert f"{name0}: unreadable (could not verify page integrity" in captured.out
    error = captured.err.strip()
    assert len(error.splitlines()) == 1 and error.startswith(f"augment verify: error: {out}: ")
    assert "problems" in error and "Traceback" not in captured.err


def test_verify_checks_an_ingested_dataset(env, tmp_path, capsys):
    data = Path(make_example_dataset(tmp_path / "data", n=6, size=(32, 32)))
    capsys.readouterr()
    assert main(["verify", str(data)]) == 0
    assert "every page checksum verified" in capsys.readouterr().out
    info = json.loads((data / INFO_FILE).read_text())
    part = data / info["files"][0]
    sound = part.read_bytes()
    flip_bytes(part)
    assert main(["verify", str(data)]) == 2
    assert f"{info['files'][0]}: unreadable (could not verify page integrity" in capsys.readouterr().out
    part.write_bytes(sound)
    (data / INFO_FILE).write_text(json.dumps({**info, "num_rows": 7}))
    assert main(["verify", str(data)]) == 2
    assert f"problem: rows: the files hold 6, {INFO_FILE} says 7" in capsys.readouterr().out
    (data / INFO_FILE).write_text(json.dumps(info))
    part.unlink()
    assert main(["verify", str(data)]) == 2
    assert f"{info['files'][0]}: listed in {INFO_FILE} but missing" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing")]) == 2


def test_stale_writer_is_fenced_off_by_a_newer_overwrite(env, tmp_path, capsys, ray_session):
    from augment.runner.shard import ShardProcessor

    out = tmp_path / "out"
    job_a = prepare_job(load_job(str(job_path(env, tmp_path / "a.yaml", out, seed=0))))
    job_b_cfg = load_job(str(job_path(env, tmp_path / "b.yaml", out, seed=1, classes={"car": 4})))
    job_b = prepare_job(job_b_cfg)
    claim_a = claim_output(OutputFolder(str(out)), job_a, overwrite=False)
    writer_a = ShardProcessor(shard_settings(job_a, claim_a.run.run_id), "cpu")
    folder = OutputFolder(str(out))
    assert writer_a.run(0, [vars(p) for p in job_a.shards[0]])["skipped"] is False  # A commits while it owns it
    inner = writer_a._write_rows

    def stall_then_lose_the_output(*args):
        inner(*args)  # A has written shard 1 under its temporary name, then stalls while B takes the output
        claim_output(folder, job_b, overwrite=True)

    writer_a._write_rows = stall_then_lose_the_output
    report = writer_a.run(1, [vars(p) for p in job_a.shards[1]])
    writer_a.pool.shutdown()
    assert report["stale"] and "shard-00001" in report["message"] and "no longer owns" in report["message"]
    assert not (out / shard_file(1, claim_a.run.run_id)).exists() and read_marker(folder, 1) is None
    assert not list((out / "data").glob(".shard-*"))  # its temporary file was removed, nothing renamed
    assert writer_a.run(2, [vars(p) for p in job_a.shards[2]])["stale"]  # A resumed again: refused up front
    summary = run_job(job_b_cfg)  # B resumes its own output
    assert summary["fingerprint"] == job_b.fingerprint and summary["rows"] == 4
    markers = [read_marker(folder, k) for k in range(2)]
    assert all(m.fingerprint == job_b.fingerprint for m in markers)
    run_b = summary["run_id"]
    assert sorted(p.name for p in (out / "_markers").glob("*.json")) == [f"shard-0000{k}.{run_b}.json" for k in range(2)]
    ids = pq.read_table(out / "data").column("id").to_pylist()
    assert sorted(ids) == [f"syn/car/{k:06d}" for k in range(4)]
    assert open_dataset(str(out)).info.lineage["job_fingerprint"] == job_b.fingerprint
    assert_sound(out, capsys)


def test_superseded_driver_stops_before_writing_dataset_json(env, tmp_path):
    from augment.runner.job import _check_owner

    out = tmp_path / "out"
    job = prepare_job(load_job(str(job_path(env, tmp_path / "job.yaml", out))))
    first = claim_output(OutputFolder(str(out)), job, overwrite=False)
    second = claim_output(OutputFolder(str(out)), job, overwrite=False)
    assert (first.mode, second.mode) == ("new", "resume") and second.run.run == first.run.run + 1
    _check_owner(OutputFolder(str(out)), second)
    with pytest.raises(AugmentError, match=f"this run \\({first.run.run_id}\\) was taken over by run "
                                           f"{second.run.run_id}"):
        _check_owner(OutputFolder(str(out)), first)


def test_two_new_jobs_claiming_one_empty_output_at_once_one_wins(env, tmp_path):
    out = tmp_path / "out"
    jobs = [prepare_job(load_job(str(job_path(env, tmp_path / f"{s}.yaml", out, seed=s)))) for s in (0, 1)]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def claim(i: int) -> None:
        barrier.wait()
        try:
            results[i] = claim_output(OutputFolder(str(out)), jobs[i], overwrite=False)
        except AugmentError as exc:
            results[i] = exc

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in enumerate(results) if not isinstance(r, AugmentError)]
    assert len(winners) == 1, results
    loser = results[1 - winners[0]]
    assert "\n" not in str(loser)
    assert "at the same moment" in str(loser) or "holds the output of another job" in str(loser)
    record = json.loads((out / JOB_FILE).read_text())
    assert record["fingerprint"] == jobs[winners[0]].fingerprint
    assert OutputFolder(str(out)).current_run().fingerprint == jobs[winners[0]].fingerprint


def test_claims_of_one_run_number_are_exclusive(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    barrier = threading.Barrier(8)
    outcomes: list = []

    def claim(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(claim_run(folder, f"{i:064x}", None))
        except AugmentError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [o for o in outcomes if not isinstance(o, AugmentError)]
    assert len(won) == 1 and folder.runs() == [1]
    assert folder.current_run() == won[0]
    assert all("another run claimed this output at the same moment (_runs/run-000001.json" in str(o)
               for o in outcomes if o is not won[0])


def test_resume_takes_over_with_a_new_run_and_keeps_sound_shards(env, finished, tmp_path, ray_session):
    out, path = copy_of(finished, env, tmp_path)
    old = OutputFolder(str(out)).current_run()
    before = mtimes(out)
    summary = run_job(load_job(str(path)))
    assert summary["mode"] == "resume" and summary["shards_run"] == 0
    current = OutputFolder(str(out)).current_run()
    assert current.run == old.run + 1 and summary["run_id"] == current.run_id != old.run_id
    assert mtimes(out) == before


def test_temporary_files_are_removed_only_when_their_writer_is_fenced_or_done(env, finished, tmp_path, ray_session):
    out, path = copy_of(finished, env, tmp_path)
    folder = OutputFolder(str(out))
    older = folder.current_run()
    dead = out / temporary_shard_file(0, older.run_id)
    dead.write_bytes(b"left by a writer of an older run")
    legacy = out / "data" / f".shard-00001.{'a' * 32}.tmp"  # a name from before run claims
    legacy.write_bytes(b"left by an older augment")
    summary = run_job(load_job(str(path)))  # the resume claims run older+1: both writers are fenced off
    assert summary["shards_run"] == 0
    assert not dead.exists() and not legacy.exists()
    current = folder.current_run()
    newer = claim_run(folder, current.fingerprint, current)  # another driver takes over...
    alive = out / temporary_shard_file(2, newer.run_id)
    alive.write_bytes(b"being written by the newer run")
    assert folder.sweep_temporaries(current.run) == []  # ...so the superseded run must leave its file alone
    assert alive.exists()
    assert folder.sweep_temporaries(newer.run) == [str(alive.relative_to(out))]


# Review findings on #12: ownership before --overwrite, commits after the last check, placement before the claim,
# claims' temporary files, verify's path and messages.


def user_folder(root: Path, record: object, legacy: bool = False) -> Path:
    """A user's folder with files named like a job output's (the job record, the summary, a sheet; with `legacy`
    the names from before the "_" names, job.json, ...), none written by augment."""
    name = (lambda n: LEGACY_NAMES[n]) if legacy else (lambda n: n)
    folder = root / "o2"
    (folder / name(SHEETS_DIR)).mkdir(parents=True)
    (folder / name(JOB_FILE)).write_text(json.dumps(record))
    (folder / name(SUMMARY_FILE)).write_text('{"trip": "summer"}')
    (folder / name(SHEETS_DIR) / "holiday.png").write_bytes(b"\x89PNG not really")
    return folder


@pytest.mark.parametrize("legacy", [False, True])
def test_overwrite_refuses_a_folder_that_only_has_job_file_names(env, tmp_path, capsys, ray_session, legacy):
    folder = user_folder(tmp_path, {"my": "config"}, legacy)
    name = (lambda n: LEGACY_NAMES[n]) if legacy else (lambda n: n)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    path = job_path(env, tmp_path / "job.yaml", folder)
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(["run", str(path), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "Traceback" not in error
        assert f"is not an augment job's output (a {name(JOB_FILE)} augment did not write)" in error
        assert f"{name(SHEETS_DIR)}/holiday.png" in error and name(SUMMARY_FILE) in error
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not (folder / "_runs").exists()


def test_a_job_json_that_is_a_list_is_one_line_in_run_and_verify(env, tmp_path, capsys, ray_session):
    folder = user_folder(tmp_path, ["not", "a", "record"])
    path = job_path(env, tmp_path / "job.yaml", folder)
    for argv in (["run", str(path), "--overwrite"], ["verify", str(folder)]):
        capsys.readouterr()
        assert main(argv) == 2
        captured = capsys.readouterr()
        error = captured.err.strip()
        assert len(error.splitlines()) == 1 and "Traceback" not in captured.err
        assert f"{JOB_FILE} is a JSON list, not a job record" in captured.out + error
    assert (folder / SHEETS_DIR / "holiday.png").exists()


def test_overwrite_of_a_job_output_needs_no_claims_when_job_json_is_augments(env, finished, tmp_path, capsys,
                                                                            ray_session):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "_runs")  # an output written before run claims: its job record proves it is augment's
    job = prepare_job(load_job(str(job_path(env, tmp_path / "b.yaml", out, seed=1, classes={"car": 2}))))
    claim = claim_output(OutputFolder(str(out)), job, overwrite=True)
    assert claim.mode == "overwrite" and not list((out / "data").glob("*.parquet"))


def test_writer_that_passed_its_last_check_cannot_replace_a_newer_runs_shard(env, tmp_path, capsys, ray_session):
    from augment.runner.shard import ShardProcessor

    out = tmp_path / "out"
    job_a = prepare_job(load_job(str(job_path(env, tmp_path / "a.yaml", out, seed=0))))
    job_b_cfg = load_job(str(job_path(env, tmp_path / "b.yaml", out, seed=1)))
    claim_a = claim_output(OutputFolder(str(out)), job_a, overwrite=False)
    writer_a = ShardProcessor(shard_settings(job_a, claim_a.run.run_id), "cpu")
    inner = writer_a._write_examples

    def stall_while_b_finishes(*args):  # A has passed its last check and renamed its shard, then stalls
        run_job(job_b_cfg, overwrite=True)  # B takes the output and finishes it
        inner(*args)

    writer_a._write_examples = stall_while_b_finishes
    report = writer_a.run(0, [vars(p) for p in job_a.shards[0]])  # A resumes: renames, writes its marker
    writer_a.pool.shutdown()
    assert report["stale"] and "its files were removed" in report["message"]
    run_a = claim_a.run.run_id
    assert not [p for p in out.rglob("*") if run_a in p.name]  # A's uniquely named files are gone again
    folder = OutputFolder(str(out))
    job_b = prepare_job(job_b_cfg)
    assert all(read_marker(folder, k).fingerprint == job_b.fingerprint for k in range(SHARDS))
    assert_sound(out, capsys)


def test_superseded_driver_removes_and_writes_nothing_of_the_newer_run(env, finished, tmp_path, capsys):
    from augment.runner.job import _finish, _sound_shards

    out, path = copy_of(finished, env, tmp_path)
    folder = OutputFolder(str(out))
    job_a = prepare_job(load_job(str(path)))
    claim_a = claim_output(folder, job_a, overwrite=False)
    done = _sound_shards(folder, job_a)
    job_b = prepare_job(load_job(str(job_path(env, tmp_path / "b.yaml", out, seed=1))))
    newer: dict = {}
    orphans = folder.orphans

    def taken_over_after_the_check(upto_run, keep, fingerprint=None):
        newer["claim"] = claim_output(OutputFolder(str(out)), job_b, overwrite=True).run
        newer["file"] = out / shard_file(0, newer["claim"].run_id)
        newer["file"].parent.mkdir(exist_ok=True)
        newer["file"].write_bytes(b"PAR1 being committed by the newer run")
        return orphans(upto_run, keep, fingerprint)

    folder.orphans = taken_over_after_the_check
    with pytest.raises(AugmentError, match="was taken over by run"):
        _finish(folder, job_a, claim_a, done, {"_start": 0.0})
    assert newer["file"].exists()
    assert not (out / INFO_FILE).exists() and not (out / SUMMARY_FILE).exists()
    assert json.loads((out / JOB_FILE).read_text())["fingerprint"] == job_b.fingerprint
    assert folder.orphans(claim_a.run.run, set()) == []  # nothing of A's run or older is left to sweep
    capsys.readouterr()
    assert main(["verify", str(out)]) == 2
    assert f"problem: {PLAN_FILE}: missing" in capsys.readouterr().out  # the newer run has not started its shards


def test_unplaceable_workers_are_refused_before_the_output_is_claimed(env, tmp_path, ray_session):
    out = tmp_path / "out"
    path = job_path(env, tmp_path / "job.yaml", out, resources={**RESOURCES, "cpus_per_worker": 1000})
    with pytest.raises(AugmentError, match="resources.cpus_per_worker 1000: no node"):
        run_job(load_job(str(path)))
    assert not out.exists()


def test_overwrite_keeps_claims_and_their_temporary_files(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    claim_run(folder, "0" * 64, None)
    pending = tmp_path / "out" / "_runs" / "run-000002.json.tmp-123-0a1b2c3d"
    pending.write_text("a concurrent claimer's")
    ours, other = folder.classify()
    assert ours == [] and other == []
    folder.remove_job_files([f"_runs/{pending.name}", "_runs/run-000001.json"])
    assert pending.exists() and (tmp_path / "out" / "_runs" / "run-000001.json").exists()


def test_claimer_whose_temporary_file_vanished_gets_one_line(tmp_path, monkeypatch):
    import os

    from augment.runner import markers

    link = os.link

    def removed_before_the_link(src, dst):
        os.unlink(src)
        return link(src, dst)

    monkeypatch.setattr(markers.os, "link", removed_before_the_link)
    with pytest.raises(AugmentError, match="the claim _runs/run-000001.json being created vanished") as caught:
        claim_run(OutputFolder(str(tmp_path / "out")), "0" * 64, None)
    assert "\n" not in str(caught.value)


def test_verify_resolves_a_relative_path_and_names_a_superseded_run(env, finished, tmp_path, capsys, monkeypatch):
    out, _ = copy_of(finished, env, tmp_path)
    folder = OutputFolder(str(out))
    claim_run(folder, "f" * 64, folder.current_run())  # a driver of another job claimed, then died before job.json
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["verify", "out"]) == 2
    captured = capsys.readouterr()
    assert f"augment verify: {out}: job output" in captured.out
    assert "but the current run r000002-" in captured.out and f"is of job {'f' * 12}" in captured.out
    assert "no job fingerprint and content" not in captured.out
