"""Running an augmentation job: validate, fingerprint, plan, run the shards on Ray, verify, summarise.

`run_job` does, in order:
 1. validation, writing nothing: the dataset opens and has one image size; the generator and segmenter load (weights
    sha256-verified) and fit the dataset's classes, and the generator its image size; the filter is valid; the plan
    can be made (unknown classes, quotas no source map can serve -> refused).
 2. the output: it must belong to no job (new output, which must hold no other files) or to this job's
    fingerprint (resume); another job's is refused unless `overwrite`. The run then claims the output with a new
    run id (augment.runner.markers.claim_run: create-exclusive, so of two runs claiming it at once one is refused),
    which fences off every older run's writers; only then does `overwrite` remove the other job's files (only the
    names in augment.runner.markers' layout, listed on stdout). Temporary shard files of older runs are removed.
 3. `plan.json`; the resume check: every shard with a marker of this job is verified (file present, size and
    sha256 as the marker says), and every shard not complete and sound is run on an actor pool
    (augment.runner.shard) whose workers carry the run id. A shard found missing, truncated or corrupt is named
    ("shard-00003: checksum mismatch, remaking") and remade, only it.
 4. the final verify: size and sha256 of every shard again (a shard that fails is remade, up to
    MAX_SHARD_ROUNDS rounds), then a check that the shard files hold every planned sample exactly once (minus
    rejected ones unless keep_rejected, minus quarantined ones); then, if this run still owns the output, shard
    files beyond the plan left by a superseded writer and this run's temporary files are removed, and the contact
    sheets, `summary.json` and `dataset.json` (last) are written. A run superseded by a newer claim stops with an
    error naming the newer run.

The fingerprint is the sha256 of the job's canonical content: dataset identity (sha256 of its dataset.json),
generator and segmenter identity (weights sha256), seed, quotas, balance, edits, samples_per_shard (it fixes the
file layout) and the worker settings' `SynthesisSettings.fingerprint_fields()` (filter, keep_rejected, noise and the
resolved precision). Paths and resources (workers, GPUs, CPUs, batch size) are not part of it: moving the inputs or
running with other resources resumes the same job and writes the same rows.

Precision is resolved once, in `prepare_job`: "auto" becomes "bf16" or "fp32" by asking what the workers' device
computes natively (`run_job` asks one Ray task holding a worker's resources; without Ray, this process's device).
job.json, the fingerprint, every shard marker and summary.json record the resolved value, and the workers use it. A
resume whose "auto" resolves otherwise than the output records is refused, naming both; the recorded precision,
given explicitly, continues the output. An output whose job.json records "auto" itself (written before precision
was resolved) cannot tell which arithmetic its shards used: it is refused as another job, saying so.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import re
import sys
import time
from argparse import Namespace
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from PIL import Image

from augment import __version__
from augment.data import fs as afs
from augment.data.dataset import INFO_FILE, QUARANTINE_FILE, Dataset, DatasetInfo, PartStats, open_dataset
from augment.errors import AugmentError
from augment.device import native_bf16, pick_device, resolve_precision
from augment.models.segmenter import load_segmenter
from augment.report.sheets import render_sheet
from augment.runner.jobfile import JobConfig, Resources, job_schema, load_job
from augment.runner.markers import (
    JOB_FILE, PLAN_FILE, SHEETS_DIR, SUMMARY_FILE, OutputFolder, RunClaim, ShardStats, claim_run, is_run_claim,
    is_temporary, shard_file, shard_name,
)
from augment.runner.shard import ShardProcessor, ShardSettings, SynthesisSettings, read_examples
from augment.runner.verify import id_problem
from augment.synthesis.generate import load_generator
from augment.synthesis.plan import Plan, PlannedSample, make_plan
from augment.training.checkpoint import CheckpointError, ModelCard, check_compatible

FINGERPRINT_VERSION = 1
PROGRESS_INTERVAL_S = 10.0
MAX_SHARD_ROUNDS = 3

__all__ = [
    "Claim", "JobConfig", "PreparedJob", "claim_output", "job_fingerprint", "load_job", "prepare_job", "run_command",
    "run_job", "job_schema",
]


@dataclass
class PreparedJob:
    """A validated job: its inputs opened, its plan made and its fingerprint computed. Nothing written yet."""

    cfg: JobConfig
    dataset: Dataset
    generator_card: ModelCard
    segmenter_card: ModelCard
    plan: Plan
    synthesis: SynthesisSettings
    content: dict[str, Any]
    fingerprint: str

    @property
    def shards(self) -> list[list[PlannedSample]]:
        return self.plan.shards(self.cfg.resources.samples_per_shard)


def job_fingerprint(content: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `content`."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fingerprint_content(
    cfg: JobConfig, dataset: Dataset, gen: ModelCard, seg: ModelCard, plan: Plan, synthesis: SynthesisSettings
) -> dict[str, Any]:
    info_bytes = afs.read_bytes(dataset.fs, afs.join(dataset.path, INFO_FILE))
    return {
        "version": FINGERPRINT_VERSION,
        "data": {"dataset_json_sha256": hashlib.sha256(info_bytes).hexdigest(), "num_rows": dataset.info.num_rows},
        "generator": {"weights_sha256": gen.weights_sha256},
        "segmenter": {"weights_sha256": seg.weights_sha256},
        "seed": cfg.seed,
        "quotas": {str(c): q for c, q in sorted(plan.quotas.items())},
        "balance": None if cfg.balance_total is None else {"total": cfg.balance_total, "power": cfg.balance_power},
        "edits": plan.edit_options,
        **synthesis.fingerprint_fields(),
        "samples_per_shard": cfg.resources.samples_per_shard,
    }


def _check_size(card: ModelCard, info: DatasetInfo, what: str) -> None:
    size = info.image_size
    if size is None:
        shapes = ", ".join(f"{s['height']}x{s['width']}" for s in info.sizes[:4])
        raise AugmentError(f"the dataset's images have several sizes ({shapes}); ingest it with --size HxW")
    if tuple(card.size) != tuple(size):
        raise CheckpointError(
            f"{what} was trained at {card.size[0]}x{card.size[1]}, but the dataset's images are {size[0]}x{size[1]}"
        )


def local_native_bf16() -> bool:
    """Whether this process's device (CUDA when present, else the CPU) computes bf16 natively."""
    return native_bf16(pick_device())


def synthesis_settings(cfg: JobConfig, native: Callable[[], bool] = local_native_bf16) -> SynthesisSettings:
    """The job's worker settings, precision resolved: `native` (asked only for "auto") says whether the workers'
    device computes bf16 natively."""
    precision = resolve_precision(cfg.precision, cfg.precision == "auto" and native())
    return SynthesisSettings(filter=cfg.filter, keep_rejected=cfg.keep_rejected, noise=cfg.noise, precision=precision,
                             batch_size=cfg.resources.batch_size, sheets=cfg.sheets)


def prepare_job(cfg: JobConfig, native: Callable[[], bool] = local_native_bf16) -> PreparedJob:
    """Validate everything the job needs, make its plan and resolve its precision (`native`: whether the workers'
    device computes bf16 natively, asked last and only for "auto"); raises AugmentError, writes nothing."""
    afs.check_apart(cfg.output, cfg.data, "the job's data")  # --overwrite there would delete the input
    dataset = open_dataset(cfg.data)
    info = dataset.info
    if not info.num_rows:
        raise AugmentError(f"{cfg.data}: the dataset has no rows")
    generator, gen_card = load_generator(cfg.generator, "cpu")
    del generator
    check_compatible(gen_card, info, f"generator {cfg.generator}")
    _check_size(gen_card, info, f"generator {cfg.generator}")
    segmenter, seg_card = load_segmenter(cfg.segmenter, "cpu")
    del segmenter
    check_compatible(seg_card, info, f"segmenter {cfg.segmenter}")
    try:
        plan = make_plan(dataset, cfg.classes, cfg.balance_total, cfg.seed, cfg.edits, balance_power=cfg.balance_power)
    except AugmentError as exc:
        raise AugmentError(f"{cfg.source}: {exc}") from None
    if not len(plan):
        raise AugmentError(f"{cfg.source}: the job plans no samples (every quota is 0)")
    synthesis = synthesis_settings(cfg, native)
    content = _fingerprint_content(cfg, dataset, gen_card, seg_card, plan, synthesis)
    return PreparedJob(cfg, dataset, gen_card, seg_card, plan, synthesis, content, job_fingerprint(content))


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


@dataclass
class Claim:
    """This run's hold on the output: how it took it ("new", "resume" or "overwrite") and its run claim."""

    mode: str
    run: RunClaim


def claim_output(out: OutputFolder, job: PreparedJob, overwrite: bool) -> Claim:
    """Make the output this job's and claim it for this run (see the module docstring, step 2)."""
    ours, other = out.classify()
    settled = [rel for rel in ours if not is_temporary(rel) and not is_run_claim(rel)]
    current = out.current_run()  # after listing: a run claiming beside us makes our claim below fail
    try:
        record = out.read_json(JOB_FILE)
    except ValueError:
        raise AugmentError(f"{out.uri}/{JOB_FILE} is not valid JSON; remove it or choose another output") from None
    if other:
        listed = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise AugmentError(
            f"{out.uri} holds files that are not an augmentation job's output ({listed}); choose an empty or new "
            f"output location"
        )
    owner = current.fingerprint if current is not None else (record or {}).get("fingerprint")
    if owner == job.fingerprint:
        mode = "resume"
    elif owner is None and not settled:
        mode = "new"
    elif not overwrite:
        if owner is None:
            raise AugmentError(f"{out.uri} holds job files but no {JOB_FILE}; pass --overwrite to replace them")
        content = record.get("content", {}) if record and record.get("fingerprint") == owner else {}
        changed = _changed_keys(content, job.content) if content else []
        if changed == ["precision"]:
            raise AugmentError(_precision_refusal(out, str(content["precision"]), job))
        raise AugmentError(
            f"{out.uri} holds the output of another job (fingerprint {str(owner)[:12]}, this job "
            f"{job.fingerprint[:12]}; differs in: {', '.join(changed) or 'unknown'}); pass --overwrite to replace it "
            f"or choose another output"
        )
    else:
        mode = "overwrite"
    claim = claim_run(out, job.fingerprint, current)
    swept = set(out.sweep_temporaries(claim.run - 1))
    doomed = [rel for rel in ours if not is_run_claim(rel) and rel not in swept] if mode == "overwrite" else []
    if doomed:
        print(f"augment run: --overwrite: removing {len(doomed)} files of the previous job in {out.uri}:", flush=True)
        for rel in doomed:
            print(f"  {rel}", flush=True)
        out.remove_job_files(doomed)
    _write_job_record(out, job)
    return Claim(mode, claim)


def _precision_refusal(out: OutputFolder, recorded: str, job: PreparedJob) -> str:
    """The one line refusing an output that is this job but for its precision (see the module docstring)."""
    asked, resolved = job.cfg.precision, job.synthesis.precision
    where = f"{out.uri}/{JOB_FILE}"
    if recorded == "auto":
        return (f"{where} records precision auto unresolved (written by an earlier augment), so its shards may be "
                f"bf16 or fp32; this job resolves {asked} to {resolved}; pass --overwrite to remake the output, or "
                f"choose a new output")
    if asked == "auto":
        return (f"{where} records precision {recorded}, this cluster resolves auto to {resolved}; rerun with "
                f"precision: {recorded} to continue as recorded, or a new output")
    return (f"{where} records precision {recorded}, this job asks for {resolved}; rerun with precision: {recorded} "
            f"to continue as recorded, pass --overwrite to replace it, or choose a new output")


def _write_job_record(out: OutputFolder, job: PreparedJob) -> None:
    """job.json: the job's fingerprint and the content it hashes."""
    out.write_json(JOB_FILE, {"fingerprint": job.fingerprint, "content": job.content, "augment_version": __version__})


def _write_plan(out: OutputFolder, plan: Plan) -> None:
    text = plan.to_json()
    path = out.full(PLAN_FILE)
    if out.exists(PLAN_FILE):
        if afs.read_bytes(out.fs, path).decode() == text:
            return
        raise AugmentError(
            f"{out.uri}/{PLAN_FILE} differs from the plan this job makes now (another augment version?); "
            f"rerun with --overwrite into a new output"
        )
    out.write_bytes(PLAN_FILE, text.encode())


class Progress:
    """Shards done, images generated and accepted, images/s and ETA: a tqdm bar on a terminal, else log lines."""

    def __init__(self, total_shards: int, done_shards: int, total_samples: int, done_samples: int) -> None:
        self.total_shards, self.done_shards = total_shards, done_shards
        self.total_samples, self.done_samples = total_samples, done_samples
        self.generated = self.accepted = 0
        self.start = self.last_print = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_shards, initial=done_shards, unit="shard", desc="augment run")

    def rate(self) -> float:
        return self.generated / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        remaining = self.total_samples - self.done_samples
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        return (f"shards {self.done_shards}/{self.total_shards}, generated {self.generated}, accepted "
                f"{self.accepted}, {rate:.1f} images/s, ETA {eta}")

    def update(self, stats: ShardStats, planned: int) -> None:
        self.done_shards += 1
        self.done_samples += planned
        self.generated += stats.generated
        self.accepted += sum(stats.accepted.values())
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"gen {self.generated} acc {self.accepted} {self.rate():.1f} img/s")
        elif now - self.last_print >= PROGRESS_INTERVAL_S or self.done_shards == self.total_shards:
            print(f"augment run: {self.line()}", flush=True)
            self.last_print = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shard_settings(job: PreparedJob, run_id: str) -> ShardSettings:
    """What every worker of this job gets; `run_id` is the run's claim on the output (Claim.run.run_id)."""
    cfg, info = job.cfg, job.dataset.info
    return ShardSettings(
        data=cfg.data, generator=cfg.generator, segmenter=cfg.segmenter, output=cfg.output,
        fingerprint=job.fingerprint, classes=list(info.classes), ignore_index=info.ignore_index,
        generator_sha256=job.generator_card.weights_sha256, segmenter_sha256=job.segmenter_card.weights_sha256,
        run_id=run_id, synthesis=job.synthesis,
    )


def gpu_worker_cpus(nodes: list[dict[str, Any]], gpus_per_worker: float) -> float:
    """CPUs for a worker holding `gpus_per_worker` GPUs: its share of the CPUs of the GPU node with the fewest CPUs
    per GPU (so it fits on every GPU node), at least 1; 1 when no GPU node is up yet (an autoscaling cluster).

    A GPU worker encodes its images and masks to PNG on a thread pool sized by its CPUs, and one thread encodes
    far fewer images per second than a GPU generates, so one CPU per worker would starve the GPU.
    """
    ratios = [n["Resources"].get("CPU", 0.0) / n["Resources"]["GPU"] for n in nodes
              if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    return max(1.0, float(math.floor(min(ratios) * gpus_per_worker))) if ratios else 1.0


def _worker_resources(res: Resources, pending: int, local: bool, quiet: bool = False) -> tuple[int, float, float]:
    """(workers, gpus_per_worker, cpus_per_worker) for the cluster Ray is connected to (`quiet`: print nothing)."""
    import ray

    total = ray.cluster_resources()
    cluster_gpus = float(total.get("GPU", 0))
    gpus = res.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    elif gpus > 0 and cluster_gpus == 0:
        if local:
            note = f"no GPU in this Ray instance; running {res.gpus_per_worker} GPU(s)/worker on CPU"
            gpus = 0.0
        else:
            note = "the cluster has no GPU yet; waiting for the autoscaler to add GPU workers"
        if not quiet:
            print(f"augment run: {note}", flush=True)
    cpus = res.cpus_per_worker
    if cpus is None:
        cpus = gpu_worker_cpus(ray.nodes(), gpus) if gpus > 0 else 1.0
    workers = res.workers
    if workers is None:
        by_gpu = int(cluster_gpus // gpus) if gpus > 0 else 0
        workers = max(1, by_gpu if gpus > 0 else int(float(total.get("CPU", 1)) // cpus))
    return max(1, min(workers, pending)), gpus, cpus


def workers_native_bf16(res: Resources, local: bool) -> bool:
    """Whether the job's workers' device computes bf16 natively, asked of one Ray task holding a worker's resources
    (so it runs where a worker would: on a GPU when the workers get GPUs). Ray must be initialised."""
    import ray

    _, gpus, cpus = _worker_resources(res, 1, local, quiet=True)
    probe = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(local_native_bf16)
    return bool(ray.get(probe.remote()))


def _run_shards(
    job: PreparedJob, settings: ShardSettings, todo: list[int], progress: Progress, local: bool
) -> set[int]:
    """Run the shards `todo` on an actor pool; returns those made here (not found done by a worker).

    A shard is attempted at most `resources.max_shard_attempts` times, counted here alone: Ray restarts no actor
    and retries no task itself, so a failed attempt (the shard raised, or its worker was lost) comes back here,
    is counted, and the shard is queued again on a live worker (a lost worker is replaced); the last failure stops
    the run with AugmentError naming the shard, its attempts and its last error. A worker reporting its run stale
    (a newer run claimed the output) stops the run with AugmentError."""
    import ray
    from ray.exceptions import RayActorError, RayError

    from augment.runner.cluster import JOB_RESOURCE_NAMES, check_placeable

    res = job.cfg.resources
    shards = job.shards
    n_workers, gpus, cpus = _worker_resources(res, len(todo), local)
    check_placeable({"CPU": cpus, "GPU": gpus}, n_workers, JOB_RESOURCE_NAMES, local)
    settings = replace(settings, threads=max(1, int(cpus)))
    actor_cls = ray.remote(ShardProcessor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)
    actors = [actor_cls.remote(settings) for _ in range(n_workers)]
    depth = 2
    queue = deque(todo)
    attempts: dict[int, int] = {}
    in_flight: dict[Any, tuple[int, int, Any]] = {}
    made: set[int] = set()
    print(f"augment run: {len(todo)} shards on {n_workers} workers ({gpus:g} GPU, {cpus:g} CPU each)", flush=True)
    try:
        while queue or in_flight:
            for slot in range(n_workers):
                while queue and sum(1 for a, _, _ in in_flight.values() if a == slot) < depth:
                    k = queue.popleft()
                    payload = [asdict(p) for p in shards[k]]
                    in_flight[actors[slot].run.remote(k, payload)] = (slot, k, actors[slot])
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_INTERVAL_S)
            if not ready:
                if progress.bar is None:
                    print(f"augment run: {progress.line()}", flush=True)
                continue
            ref = ready[0]
            slot, k, actor = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayError as exc:
                attempts[k] = attempts.get(k, 0) + 1
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                if attempts[k] >= res.max_shard_attempts:
                    raise AugmentError(f"shard {k} failed {attempts[k]} times; last error: {reason}") from None
                print(f"augment run: shard {k} failed ({reason}); trying again", flush=True)
                if isinstance(exc, RayActorError) and actors[slot] is actor:  # not yet replaced for another shard
                    ray.kill(actor, no_restart=True)
                    actors[slot] = actor_cls.remote(settings)
                queue.appendleft(k)
                continue
            if result.get("stale"):
                raise AugmentError(f"{settings.output}: this run was taken over by a newer run and stopped "
                                   f"(a worker reports {result['message']})")
            skipped = result.pop("skipped", False)
            if not skipped:
                made.add(k)
            progress.update(ShardStats(**result), len(shards[k]))
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return made


def _sound_shards(out: OutputFolder, job: PreparedJob) -> dict[int, ShardStats]:
    """The shards complete for this job whose files match their markers (size and sha256); each shard with a marker
    of this job that fails is named on stdout (it is then remade)."""
    sound, problems = out.verified(job.fingerprint, len(job.shards))
    for k, problem in problems.items():
        print(f"augment run: {shard_name(k)}: {problem}, remaking", flush=True)
    return sound


def _verify(out: OutputFolder, job: PreparedJob, done: dict[int, ShardStats]) -> list[str]:
    """Check the shard files hold exactly the expected ids, once each; returns the files (relative)."""
    files = [shard_file(k) for k in range(len(job.shards))]
    missing = [f for k, f in enumerate(files) if k not in done]
    if missing:
        raise AugmentError(f"{out.uri}: shards without a completion marker: {', '.join(missing[:5])}")
    problem = id_problem(out, {p.sample_id for p in job.plan.samples}, job.synthesis.keep_rejected, done, files)
    if problem is not None:
        raise AugmentError(f"{out.uri}: {problem}; rerun with --overwrite")
    return files


def _check_owner(out: OutputFolder, claim: Claim) -> None:
    """Raise AugmentError when a newer run has claimed the output since `claim`."""
    if out.is_current(claim.run.run_id):
        return
    current = out.current_run()
    whose = f"run {current.run_id} of job {current.fingerprint[:12]}" if current is not None else "no run"
    raise AugmentError(f"{out.uri}: this run ({claim.run.run_id}) was taken over by {whose} and stopped; that run "
                       f"finishes the output")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_sheets(out: OutputFolder, job: PreparedJob, done: dict[int, ShardStats]) -> list[str]:
    """One sheet per planned class from the examples the shards stored, taken in shard order (deterministic)."""
    per = job.cfg.sheets
    info = job.dataset.info
    if not per:
        return []
    wanted = {c for c, q in job.plan.quotas.items() if q > 0}
    rows: dict[int, dict[bool, list[Any]]] = {c: {True: [], False: []} for c in wanted}
    for k in sorted(done):
        if all(len(v) >= per for r in rows.values() for v in r.values()):
            break
        if not done[k].examples:
            continue
        for ex in read_examples(out, k):
            bucket = rows.get(ex["target_class"], {}).get(ex["accepted"])
            if bucket is not None and len(bucket) < per:
                bucket.append((ex["mask"], ex["image"], ex["pred"], ex["accepted"], ex["caption"]))
    written = []
    for c in sorted(wanted):
        sheet_rows = rows[c][True] + rows[c][False]
        if not sheet_rows:
            continue
        buf = io.BytesIO()
        Image.fromarray(render_sheet(sheet_rows, info.palette)).save(buf, format="PNG")
        rel = f"{SHEETS_DIR}/{_safe_name(info.classes[c])}.png"
        out.write_bytes(rel, buf.getvalue())
        written.append(rel)
    return written


def _versions() -> dict[str, str]:
    import pyarrow
    import ray
    import torch
    import torchvision

    return {"augment": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ray": ray.__version__, "pyarrow": pyarrow.__version__, "python": platform.python_version()}


def _finish(out: OutputFolder, job: PreparedJob, claim: Claim, done: dict[int, ShardStats],
            summary: dict[str, Any]) -> dict[str, Any]:
    """Steps 4's checks and writes (see the module docstring), given the verified complete shards `done`."""
    files = _verify(out, job, done)
    _check_owner(out, claim)
    strays = out.strays(len(job.shards))
    if strays:
        print(f"augment run: removing {len(strays)} shard files beyond this job's plan, left by a superseded run: "
              f"{', '.join(strays[:3])}{' ...' if len(strays) > 3 else ''}", flush=True)
        out.remove_job_files(strays)
    out.sweep_temporaries(claim.run.run)
    info = job.dataset.info
    merged = PartStats(info.num_classes)
    for k in sorted(done):
        merged.merge(done[k].part_stats())
    quarantined = [q for k in sorted(done) for q in done[k].quarantined]
    counts = {info.classes[c]: {"accepted": 0, "rejected": 0} for c, q in job.plan.quotas.items() if q > 0}
    for s in done.values():
        for name, n in s.accepted.items():
            counts[name]["accepted"] += n
        for name, n in s.rejected.items():
            counts[name]["rejected"] += n
    sheets = _write_sheets(out, job, done)
    accepted = sum(c["accepted"] for c in counts.values())
    rejected = sum(c["rejected"] for c in counts.values())
    summary.update({
        "counts": counts, "accepted": accepted, "rejected": rejected, "quarantined": len(quarantined),
        "generated": accepted + rejected, "rows": merged.rows, "sheets": sheets,
    })
    new_info = DatasetInfo(classes=list(info.classes), palette=info.palette, ignore_index=info.ignore_index,
                           kind="synthetic")
    new_info.apply_stats(merged)
    new_info.quarantined = len(quarantined)
    new_info.files = files
    new_info.lineage = {
        "source": job.cfg.data, "dataset_json_sha256": job.content["data"]["dataset_json_sha256"],
        "generator": job.cfg.generator, "generator_sha256": job.generator_card.weights_sha256,
        "segmenter": job.cfg.segmenter, "segmenter_sha256": job.segmenter_card.weights_sha256,
        "job_fingerprint": job.fingerprint,
    }
    new_info.extra = {"counts": counts, "job": job.cfg.document, "plan": job.plan.summary(), "versions": _versions()}
    if quarantined:
        out.write_bytes(QUARANTINE_FILE, "".join(json.dumps(q) + "\n" for q in quarantined).encode())
    summary["wall_seconds"] = round(time.perf_counter() - summary.pop("_start"), 3)
    out.write_json(SUMMARY_FILE, summary)
    if (out.read_json(JOB_FILE) or {}).get("fingerprint") != job.fingerprint:
        _write_job_record(out, job)  # a run that lost the claim race on S3 may have written its own
    new_info.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_bytes(INFO_FILE, new_info.to_json().encode())
    return summary


def run_job(cfg: JobConfig, overwrite: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the summary also written to `summary.json` (see the module docstring)."""
    start = time.perf_counter()
    job = prepare_job(cfg, lambda: workers_native_bf16(cfg.resources, _start_ray(address)))
    out = OutputFolder(cfg.output)
    claim = claim_output(out, job, overwrite)
    _write_plan(out, job.plan)
    shards = job.shards
    done = _sound_shards(out, job)
    todo = [k for k in range(len(shards)) if k not in done]
    print(f"augment run: {len(job.plan)} samples in {len(shards)} shards, {len(done)} already done "
          f"({claim.mode}, run {claim.run.run_id}) -> {cfg.output}", flush=True)
    progress = Progress(len(shards), len(done), len(job.plan), sum(len(shards[k]) for k in done))
    made: set[int] = set()
    run_start = time.perf_counter()
    if todo:
        local = _start_ray(address)
        settings = shard_settings(job, claim.run.run_id)
        try:
            for _ in range(MAX_SHARD_ROUNDS):
                made |= _run_shards(job, settings, todo, progress, local=local)
                done = _sound_shards(out, job)  # the final verify (again after a remake)
                todo = [k for k in range(len(shards)) if k not in done]
                if not todo:
                    break
                _check_owner(out, claim)
                progress.done_shards -= len(todo)
                progress.done_samples -= sum(len(shards[k]) for k in todo)
            else:
                raise AugmentError(
                    f"{cfg.output}: {', '.join(shard_name(k) for k in todo[:5])} still not sound after "
                    f"{MAX_SHARD_ROUNDS} rounds of remaking; check the storage"
                )
        finally:
            progress.close()
    run_seconds = time.perf_counter() - run_start
    summary: dict[str, Any] = {
        "output": cfg.output, "fingerprint": job.fingerprint, "mode": claim.mode, "run_id": claim.run.run_id,
        "precision": job.synthesis.precision,
        "samples_planned": len(job.plan), "shards": len(shards), "shards_run": len(made),
        "shards_skipped": len(shards) - len(made), "generated_this_run": progress.generated,
        "images_per_second": round(progress.generated / run_seconds, 3) if progress.generated else 0.0,
        "_start": start,
    }
    return _finish(out, job, claim, done, summary)


def _start_ray(address: str | None) -> bool:
    """Start or join Ray (augment.runner.cluster.init_ray); returns whether it is a local instance."""
    from augment.runner.cluster import init_ray, is_local

    init_ray(address)
    return is_local(address)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table: per-class accepted/rejected, totals, images/s, wall time, output."""
    lines = [f"{'class':<20} {'accepted':>9} {'rejected':>9} {'rate':>6}"]
    for name, c in summary["counts"].items():
        total = c["accepted"] + c["rejected"]
        rate = f"{100 * c['accepted'] / total:.0f}%" if total else "-"
        lines.append(f"{name:<20} {c['accepted']:>9} {c['rejected']:>9} {rate:>6}")
    lines.append(f"{'total':<20} {summary['accepted']:>9} {summary['rejected']:>9}")
    if summary["quarantined"]:
        lines.append(f"quarantined (unreadable source maps): {summary['quarantined']}, see quarantine.jsonl")
    lines.append(
        f"{summary['rows']} rows in {summary['shards']} shards ({summary['shards_run']} made now, "
        f"{summary['shards_skipped']} already done); {summary['images_per_second']:.1f} images/s, wall "
        f"{summary['wall_seconds']:.1f} s"
    )
    lines.append(f"output: {summary['output']}")
    return "\n".join(lines)


def run_command(args: Namespace) -> int:
    """`augment run JOB [--overwrite] [--address]`."""
    cfg = load_job(args.job)
    summary = run_job(cfg, overwrite=args.overwrite, address=args.address)
    print(format_summary(summary), flush=True)
    return 0
