"""Running an augmentation job: validate, fingerprint, plan, run the shards on Ray, verify, summarise.

`run_job` does, in order:
 1. validation, writing nothing: the dataset opens and has one image size; the generator and segmenter load (weights
    sha256-verified) and fit the dataset's classes, and the generator its image size; the filter is valid; the plan
    can be made (unknown classes, quotas no source map can serve -> refused).
 2. the output: its `job.json` must be absent (new output, which must hold no other files) or carry this job's
    fingerprint (resume); another fingerprint is refused unless `overwrite`, which removes that job's files (only
    the names in augment.runner.markers' layout, listed on stdout) before starting.
 3. `plan.json`, then every shard without a completion marker on an actor pool (augment.runner.shard).
 4. a check that the shard files hold every planned sample exactly once (minus rejected ones unless
    keep_rejected, minus quarantined ones), contact sheets, `summary.json`, and `dataset.json` last.

The fingerprint is the sha256 of the job's canonical content: dataset identity (sha256 of its dataset.json),
generator and segmenter identity (weights sha256), seed, quotas, balance, filter, keep_rejected, noise, edits and
samples_per_shard (it fixes the file layout). Paths and resources (workers, GPUs, CPUs, batch size) are not part of
it: moving the inputs or running with other resources resumes the same job and writes the same rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import re
import sys
import time
from argparse import Namespace
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.dataset as pads
from PIL import Image

from augment import __version__
from augment.data import fs as afs
from augment.data.dataset import INFO_FILE, QUARANTINE_FILE, Dataset, DatasetInfo, PartStats, open_dataset
from augment.errors import AugmentError
from augment.filtering.quality import FilterConfig
from augment.models.segmenter import load_segmenter
from augment.report.sheets import render_sheet
from augment.runner.jobfile import JobConfig, Resources, job_schema, load_job
from augment.runner.markers import (
    JOB_FILE, PLAN_FILE, SHEETS_DIR, SUMMARY_FILE, OutputFolder, ShardStats, is_temporary, shard_file,
)
from augment.runner.shard import ShardProcessor, ShardSettings, read_examples
from augment.synthesis.generate import load_generator
from augment.synthesis.plan import Plan, PlannedSample, make_plan
from augment.training.checkpoint import CheckpointError, ModelCard, check_compatible

FINGERPRINT_VERSION = 1
PROGRESS_INTERVAL_S = 10.0

__all__ = [
    "JobConfig", "PreparedJob", "job_fingerprint", "load_job", "prepare_job", "run_command", "run_job", "job_schema",
]


@dataclass
class PreparedJob:
    """A validated job: its inputs opened, its plan made and its fingerprint computed. Nothing written yet."""

    cfg: JobConfig
    dataset: Dataset
    generator_card: ModelCard
    segmenter_card: ModelCard
    plan: Plan
    content: dict[str, Any]
    fingerprint: str

    @property
    def shards(self) -> list[list[PlannedSample]]:
        return self.plan.shards(self.cfg.resources.samples_per_shard)


def job_fingerprint(content: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `content`."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fingerprint_content(
    cfg: JobConfig, dataset: Dataset, gen: ModelCard, seg: ModelCard, plan: Plan, filter_cfg: FilterConfig
) -> dict[str, Any]:
    info_bytes = afs.read_bytes(dataset.fs, afs.join(dataset.path, INFO_FILE))
    filt = asdict(filter_cfg)
    filt.pop("keep_rejected")
    return {
        "version": FINGERPRINT_VERSION,
        "data": {"dataset_json_sha256": hashlib.sha256(info_bytes).hexdigest(), "num_rows": dataset.info.num_rows},
        "generator": {"weights_sha256": gen.weights_sha256},
        "segmenter": {"weights_sha256": seg.weights_sha256},
        "seed": cfg.seed,
        "quotas": {str(c): q for c, q in sorted(plan.quotas.items())},
        "balance": None if cfg.balance_total is None else {"total": cfg.balance_total, "power": cfg.balance_power},
        "edits": plan.edit_options,
        "filter": filt,
        "keep_rejected": cfg.keep_rejected,
        "noise": cfg.noise,
        "precision": cfg.precision,
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


def prepare_job(cfg: JobConfig) -> PreparedJob:
    """Validate everything the job needs and make its plan; raises AugmentError, writes nothing."""
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
    filter_cfg = FilterConfig.from_dict(cfg.filter, source=f"{cfg.source}: filter")
    try:
        plan = make_plan(dataset, cfg.classes, cfg.balance_total, cfg.seed, cfg.edits, balance_power=cfg.balance_power)
    except AugmentError as exc:
        raise AugmentError(f"{cfg.source}: {exc}") from None
    if not len(plan):
        raise AugmentError(f"{cfg.source}: the job plans no samples (every quota is 0)")
    content = _fingerprint_content(cfg, dataset, gen_card, seg_card, plan, filter_cfg)
    return PreparedJob(cfg, dataset, gen_card, seg_card, plan, content, job_fingerprint(content))


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def claim_output(out: OutputFolder, job: PreparedJob, overwrite: bool) -> str:
    """Make the output this job's; returns "new", "resume" or "overwrite" (see the module docstring)."""
    ours, other = out.classify()
    settled = [rel for rel in ours if not is_temporary(rel)]
    try:
        record = out.read_json(JOB_FILE)  # after listing: a driver starting beside us may write it in between
    except ValueError:
        raise AugmentError(f"{out.uri}/{JOB_FILE} is not valid JSON; remove it or choose another output") from None
    if other:
        listed = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise AugmentError(
            f"{out.uri} holds files that are not an augmentation job's output ({listed}); choose an empty or new "
            f"output location"
        )
    if record is not None and record.get("fingerprint") == job.fingerprint:
        return "resume"
    if settled and not overwrite:
        if record is None:
            raise AugmentError(f"{out.uri} holds job files but no {JOB_FILE}; pass --overwrite to replace them")
        changed = _changed_keys(record.get("content", {}), job.content)
        raise AugmentError(
            f"{out.uri} holds the output of another job (fingerprint {str(record.get('fingerprint'))[:12]}, this job "
            f"{job.fingerprint[:12]}; differs in: {', '.join(changed) or 'unknown'}); pass --overwrite to replace it "
            f"or choose another output"
        )
    mode = "new"
    if settled:
        print(f"augment run: --overwrite: removing {len(ours)} files of the previous job in {out.uri}:", flush=True)
        for rel in ours:
            print(f"  {rel}", flush=True)
        out.remove_job_files(ours)
        mode = "overwrite"
    out.write_json(JOB_FILE, {"fingerprint": job.fingerprint, "content": job.content, "augment_version": __version__})
    return mode


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


def shard_settings(job: PreparedJob) -> ShardSettings:
    """What every worker of this job gets."""
    cfg, info = job.cfg, job.dataset.info
    return ShardSettings(
        data=cfg.data, generator=cfg.generator, segmenter=cfg.segmenter, output=cfg.output,
        fingerprint=job.fingerprint, classes=list(info.classes), ignore_index=info.ignore_index,
        generator_sha256=job.generator_card.weights_sha256, segmenter_sha256=job.segmenter_card.weights_sha256,
        filter=dict(cfg.filter), keep_rejected=cfg.keep_rejected, noise=cfg.noise,
        precision=cfg.precision,
        batch_size=cfg.resources.batch_size, sheets=cfg.sheets,
    )


def gpu_worker_cpus(nodes: list[dict[str, Any]], gpus_per_worker: float) -> float:
    """CPUs for a worker holding `gpus_per_worker` GPUs: its share of the CPUs of the GPU node with the fewest CPUs
    per GPU (so it fits on every GPU node), at least 1; 1 when no GPU node is up yet (an autoscaling cluster).

    A GPU worker encodes its images and masks to PNG on a thread pool sized by its CPUs: at 256x512 one thread
    encodes well under the ~hundreds of images/s a GPU generates, so one CPU per worker would starve the GPU.
    """
    ratios = [n["Resources"].get("CPU", 0.0) / n["Resources"]["GPU"] for n in nodes
              if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    return max(1.0, float(math.floor(min(ratios) * gpus_per_worker))) if ratios else 1.0


def _worker_resources(res: Resources, pending: int, local: bool) -> tuple[int, float, float]:
    """(workers, gpus_per_worker, cpus_per_worker) for the cluster Ray is connected to."""
    import ray

    total = ray.cluster_resources()
    cluster_gpus = float(total.get("GPU", 0))
    gpus = res.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    elif gpus > 0 and cluster_gpus == 0:
        if local:
            print(f"augment run: no GPU in this Ray instance; running {res.gpus_per_worker} GPU(s)/worker on CPU",
                  flush=True)
            gpus = 0.0
        else:
            print("augment run: the cluster has no GPU yet; waiting for the autoscaler to add GPU workers", flush=True)
    cpus = res.cpus_per_worker
    if cpus is None:
        cpus = gpu_worker_cpus(ray.nodes(), gpus) if gpus > 0 else 1.0
    workers = res.workers
    if workers is None:
        by_gpu = int(cluster_gpus // gpus) if gpus > 0 else 0
        workers = max(1, by_gpu if gpus > 0 else int(float(total.get("CPU", 1)) // cpus))
    return max(1, min(workers, pending)), gpus, cpus


def _run_shards(job: PreparedJob, settings: ShardSettings, todo: list[int], progress: Progress, local: bool) -> int:
    """Run the shards `todo` on an actor pool; returns how many were made here (not found done by a worker)."""
    import ray
    from ray.exceptions import RayActorError, RayError

    from augment.runner.cluster import JOB_RESOURCE_NAMES, check_placeable

    res = job.cfg.resources
    shards = job.shards
    n_workers, gpus, cpus = _worker_resources(res, len(todo), local)
    check_placeable({"CPU": cpus, "GPU": gpus}, n_workers, JOB_RESOURCE_NAMES, local)
    settings.threads = max(1, int(cpus))
    actor_cls = ray.remote(ShardProcessor).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=res.max_shard_attempts, max_task_retries=res.max_shard_attempts,
    )
    settings_dict = asdict(settings)
    actors = [actor_cls.remote(settings_dict) for _ in range(n_workers)]
    depth = 2
    queue = deque(todo)
    attempts: dict[int, int] = {}
    in_flight: dict[Any, tuple[int, int]] = {}
    made = 0
    print(f"augment run: {len(todo)} shards on {n_workers} workers ({gpus:g} GPU, {cpus:g} CPU each)", flush=True)
    try:
        while queue or in_flight:
            for slot in range(n_workers):
                while queue and sum(1 for a, _ in in_flight.values() if a == slot) < depth:
                    k = queue.popleft()
                    payload = [asdict(p) for p in shards[k]]
                    in_flight[actors[slot].run.remote(k, payload)] = (slot, k)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_INTERVAL_S)
            if not ready:
                if progress.bar is None:
                    print(f"augment run: {progress.line()}", flush=True)
                continue
            ref = ready[0]
            slot, k = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayError as exc:
                attempts[k] = attempts.get(k, 0) + 1
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                if attempts[k] >= res.max_shard_attempts:
                    raise AugmentError(f"shard {k} failed {attempts[k]} times; last error: {reason}") from None
                print(f"augment run: shard {k} failed ({reason}); trying again", flush=True)
                if isinstance(exc, RayActorError):
                    ray.kill(actors[slot], no_restart=True)
                    actors[slot] = actor_cls.remote(settings_dict)
                queue.appendleft(k)
                continue
            skipped = result.pop("skipped", False)
            made += not skipped
            progress.update(ShardStats(**result), len(shards[k]))
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return made


def _verify(out: OutputFolder, job: PreparedJob, done: dict[int, ShardStats]) -> list[str]:
    """Check the shard files hold exactly the expected ids, once each; returns the files (relative)."""
    files = [shard_file(k) for k in range(len(job.shards))]
    missing = [f for k, f in enumerate(files) if k not in done]
    if missing:
        raise AugmentError(f"{out.uri}: shards without a completion marker: {', '.join(missing[:5])}")
    dropped = {q["id"] for s in done.values() for q in s.quarantined}
    if not job.cfg.keep_rejected:
        dropped |= {i for s in done.values() for i in s.rejected_ids}
    expected = {p.sample_id for p in job.plan.samples} - dropped
    table = pads.dataset([out.full(f) for f in files], filesystem=out.fs, format="parquet").to_table(columns=["id"])
    ids = table.column("id").to_pylist()
    rows = sum(s.rows for s in done.values())
    if len(ids) != rows or len(set(ids)) != len(ids) or set(ids) != expected:
        dup = len(ids) - len(set(ids))
        raise AugmentError(
            f"{out.uri}: the shards hold {len(ids)} rows ({dup} duplicate ids), the markers say {rows}, the plan "
            f"expects {len(expected)}; {len(expected - set(ids))} planned ids missing, {len(set(ids) - expected)} "
            f"unexpected; rerun with --overwrite"
        )
    return files


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


def _finish(out: OutputFolder, job: PreparedJob, summary: dict[str, Any]) -> dict[str, Any]:
    done = {k: s for k, s in out.completed(job.fingerprint).items() if k < len(job.shards)}
    files = _verify(out, job, done)
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
    for rel in out.stale_temporaries():
        out.fs.delete_file(out.full(rel))
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
    new_info.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_bytes(INFO_FILE, new_info.to_json().encode())
    return summary


def run_job(cfg: JobConfig, overwrite: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the summary also written to `summary.json` (see the module docstring)."""
    start = time.perf_counter()
    job = prepare_job(cfg)
    out = OutputFolder(cfg.output)
    mode = claim_output(out, job, overwrite)
    _write_plan(out, job.plan)
    shards = job.shards
    done = {k for k in out.completed(job.fingerprint) if k < len(shards)}
    todo = [k for k in range(len(shards)) if k not in done]
    print(f"augment run: {len(job.plan)} samples in {len(shards)} shards, {len(done)} already done "
          f"({mode}) -> {cfg.output}", flush=True)
    progress = Progress(len(shards), len(done), len(job.plan), sum(len(shards[k]) for k in done))
    made = 0
    run_start = time.perf_counter()
    if todo:
        from augment.runner.cluster import init_ray

        init_ray(address)
        try:
            local = address in (None, "local") and not _ray_address()
            made = _run_shards(job, shard_settings(job), todo, progress, local=local)
        finally:
            progress.close()
    run_seconds = time.perf_counter() - run_start
    summary: dict[str, Any] = {
        "output": cfg.output, "fingerprint": job.fingerprint, "mode": mode, "samples_planned": len(job.plan),
        "shards": len(shards), "shards_run": made, "shards_skipped": len(shards) - made,
        "generated_this_run": progress.generated,
        "images_per_second": round(progress.generated / run_seconds, 3) if progress.generated else 0.0,
        "_start": start,
    }
    return _finish(out, job, summary)


def _ray_address() -> str | None:
    return os.environ.get("RAY_ADDRESS")


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
