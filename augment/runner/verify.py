"""`augment verify OUTPUT`: check a finished job output or an ingested dataset without running anything.

A dataset (any folder with `_dataset.json`, or `dataset.json` as written before that name) is checked by
augment.data.verify: its listed files exist, their rows, image sizes and splits add up to what the info says, ids
are unique, and a full read verifies every Parquet page checksum. A job output (a folder with `_job.json` or
`job.json`, see augment.runner.markers) is also checked against its own layout: the job it belongs to (the current
run's fingerprint), every planned shard has a marker of that job (by any run) and a file of the marker's size and
sha256, the shard files hold exactly the planned ids (minus rejected and quarantined ones) once each, and the info
file (written last) is there and lists exactly those shard files, with their sizes and sha256. Temporary files left
by dead writers are reported but are not problems (the next run removes them).

Each check prints one line ("ok: ..."), each problem one line ("problem: ..."); the command exits 0 when the folder
is sound, else raises AugmentError with a one-line summary (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.dataset as pads

from augment.data.dataset import INFO_FILE, parquet_format
from augment.data.verify import Findings, verify_dataset
from augment.core.errors import AugmentError
from augment.runner.markers import (
    JOB_FILE, PLAN_FILE, OutputFolder, ShardStats, is_temporary, run_file, shard_name,
)
from augment.synthesis.plan import Plan


def id_problem(out: OutputFolder, planned_ids: set[str], keep_rejected: bool, done: dict[int, ShardStats],
               files: list[str]) -> str | None:
    """Why the shard `files` do not hold exactly the planned ids once each (rejected ids left out unless
    `keep_rejected`, quarantined ones always), as one line; None when they do. Reads only the `id` column."""
    dropped = {q["id"] for s in done.values() for q in s.quarantined}
    if not keep_rejected:
        dropped |= {i for s in done.values() for i in s.rejected_ids}
    expected = planned_ids - dropped
    table = pads.dataset([out.full(f) for f in files], filesystem=out.fs, format=parquet_format()).to_table(
        columns=["id"])
    ids = table.column("id").to_pylist()
    rows = sum(s.rows for s in done.values())
    if len(ids) == rows and len(set(ids)) == len(ids) and set(ids) == expected:
        return None
    return (f"the shards hold {len(ids)} rows ({len(ids) - len(set(ids))} duplicate ids), the markers say {rows}, "
            f"the plan expects {len(expected)}; {len(expected - set(ids))} planned ids missing, "
            f"{len(set(ids) - expected)} unexpected")


@dataclass
class JobRecord:
    """What a job output says about itself: the job it belongs to and its plan."""

    fingerprint: str
    samples_per_shard: int
    keep_rejected: bool
    plan: Plan = field(repr=False)


def _read_job_record(out: OutputFolder, found: Findings) -> JobRecord | None:
    try:
        record = out.job_record() or {}
        current = out.current_run()
        plan_name = out.locate(PLAN_FILE)
        plan_bytes = out.read_bytes(plan_name) if plan_name is not None else None
    except (ValueError, AugmentError) as exc:
        found.problem(f"{JOB_FILE}: {exc}")
        return None
    fingerprint = current.fingerprint if current is not None else record.get("fingerprint")
    content = record.get("content") if record.get("fingerprint") == fingerprint else None
    if not fingerprint or not isinstance(content, dict) or "samples_per_shard" not in content:
        if current is not None and record.get("fingerprint") not in (None, fingerprint):
            found.problem(f"{JOB_FILE}: records job {str(record['fingerprint'])[:12]}, but the current run "
                          f"{current.run_id} ({run_file(current.run)}) is of job {fingerprint[:12]}, which has not "
                          f"written its record; rerun that job to finish the output")
        elif current is not None and not record:
            found.problem(f"{JOB_FILE}: missing; the current run {current.run_id} ({run_file(current.run)}) of job "
                          f"{fingerprint[:12]} has not written it; rerun that job to finish the output")
        else:
            found.problem(f"{JOB_FILE}: no job fingerprint and content to check the output against")
        return None
    if plan_bytes is None:
        found.problem(f"{PLAN_FILE}: missing")
        return None
    try:
        plan = Plan.from_json(plan_bytes, source=out.full(plan_name))
    except AugmentError as exc:
        found.problem(str(exc))
        return None
    run = f", run {current.run_id}" if current is not None else ""
    found.ok(f"{JOB_FILE}: job {fingerprint[:12]}{run}, {len(plan)} planned samples")
    return JobRecord(fingerprint, int(content["samples_per_shard"]), bool(content.get("keep_rejected")), plan)


def verify_job_output(out: OutputFolder, found: Findings) -> None:
    """Check a job output against its layout (see the module docstring); adds to `found`."""
    job = _read_job_record(out, found)
    if job is None:
        return
    shards = job.plan.shards(job.samples_per_shard)
    sound, problems = out.verified(job.fingerprint, len(shards))
    others = {shard for shard, _, _ in out.markers()}
    for k in range(len(shards)):
        if k in problems:
            found.problem(f"{shard_name(k)}: {problems[k]}")
        elif k not in sound:
            found.problem(f"{shard_name(k)}: " + ("its markers belong to another job" if k in others
                                                   else "no completion marker"))
    done = sound
    if len(done) == len(shards):
        found.ok(f"{len(shards)} shards: markers of this job, sizes and sha256 match")
        files = [done[k].file for k in range(len(shards))]
        problem = id_problem(out, {p.sample_id for p in job.plan.samples}, job.keep_rejected, done, files)
        if problem is None:
            found.ok(f"ids: {sum(s.rows for s in done.values())} rows, every planned sample once")
        else:
            found.problem(f"ids: {problem}")
    temporaries = [rel for rel in out.relative_files() if is_temporary(rel)]
    if temporaries:
        found.note(f"{len(temporaries)} temporary files left by writers that died ({temporaries[0]}, ...); the next "
                   f"run of the job removes them")
    info_name = out.locate(INFO_FILE) or INFO_FILE
    info = out.read_json(info_name)
    if not isinstance(info, dict):
        found.problem(f"{INFO_FILE}: missing, the job has not finished (rerun it to finish)")
        return
    listed = info.get("files")
    if len(done) == len(shards) and listed != [done[k].file for k in range(len(shards))]:
        found.problem(f"{info_name}: lists {len(listed or [])} files, not the {len(shards)} sound shard files")
    checksums = (info.get("extra") or {}).get("file_checksums") or {}
    for k, st in sorted(done.items()):
        if checksums.get(st.file) != {"size": st.size, "sha256": st.sha256}:
            found.problem(f"{info_name}: its size and sha256 of {st.file} differ from the shard's marker")
            break
    lineage = info.get("lineage", {}).get("job_fingerprint")
    if lineage != job.fingerprint:
        found.problem(f"{info_name}: written for job {str(lineage)[:12]}, the output belongs to "
                      f"{job.fingerprint[:12]}")


def verify_output(uri: str) -> Findings:
    """Check the job output or dataset at `uri` (see the module docstring); prints each finding as it goes."""
    out = OutputFolder(uri)
    if not out.exists():
        raise AugmentError(f"{uri}: no such folder")
    is_job = out.locate(JOB_FILE) is not None
    if not is_job and out.locate(INFO_FILE) is None:
        raise AugmentError(f"{uri}: neither a dataset ({INFO_FILE}) nor a job output ({JOB_FILE})")
    found = Findings(prefix="  ")
    print(f"augment verify: {uri}: {'job output' if is_job else 'dataset'}", flush=True)
    if is_job:
        verify_job_output(out, found)
    if out.locate(INFO_FILE) is not None:
        verify_dataset(uri, found)
    return found


__all__ = ["JobRecord", "id_problem", "verify_job_output", "verify_output"]
