"""Running an augmentation job: validate, fingerprint, plan, run the shards on Ray, verify, summarise.

`run_job` does, in order:
 1. validation, writing nothing: the dataset opens and has one image size; the generator and segmenter load (weights
    sha256-verified) and fit the dataset's classes, and the generator its image size; the filter is valid; the plan
    can be made (unknown classes, quotas no source map can serve -> refused).
 2. the output: workers that Ray could never place are refused first (augment.core.cluster.check_placeable), so
    nothing is written for them. The output must belong to no job (new output, which must hold no other files) or
    to this job's fingerprint (resume); another job's is refused unless `overwrite`, and a folder that only has
    job-file names but provably is no augment output (augment.runner.markers.OutputFolder.belongs_to_augment) is
    refused either way. The run then claims the output with a new run id (augment.runner.markers.claim_run:
    create-exclusive, so of two runs claiming it at once one is refused), which fences off every older run's
    writers; only then are files of superseded runs removed (see augment.runner.markers, "Removal"; listed on
    stdout), and _job.json is written if the run is still current.
 3. `_plan.json`; the resume check: the shards with a marker of this job (by any run) are verified (file present,
    size and sha256 as the marker says), and every shard not complete and sound is run on the worker pool
    (augment.runner.pool, augment.runner.shard) whose workers carry the run id and write names of their run. A
    shard found missing, truncated or corrupt is named ("shard-00003: checksum mismatch, remaking") and remade,
    only it.
 4. the final verify: size and sha256 of every shard again (a shard that fails is remade, up to
    MAX_SHARD_ROUNDS rounds); then, if this run still owns the output, a check that the shard files hold every
    planned sample exactly once (minus rejected ones unless keep_rejected, minus quarantined ones); files of this
    and older runs that the output does not use are removed, and the contact sheets, `_summary.json`, the dataset
    card and `_dataset.json` (last, listing the shard files with size and sha256) are written, ownership checked before
    each.
    A run superseded by a newer claim stops with an error naming the newer run.

The fingerprint is the sha256 of the job's canonical content: dataset identity (sha256 of its info file),
generator and segmenter identity (weights sha256), seed, quotas, balance, edits, samples_per_shard (it fixes the
file layout) and the worker settings' `SynthesisSettings.fingerprint_fields()` (filter, keep_rejected, noise and the
resolved precision). Paths and resources (workers, GPUs, CPUs, batch size) are not part of it: moving the inputs or
running with other resources resumes the same job and writes the same rows.

Precision is resolved once, in `prepare_job`: "auto" becomes "bf16" or "fp32" by asking what the workers' device
computes natively (`run_job` asks one Ray task holding a worker's resources; without Ray, this process's device).
_job.json, the fingerprint, every shard marker and _summary.json record the resolved value, and the workers use it. A
resume whose "auto" resolves otherwise than the output records is refused, naming both; the recorded precision,
given explicitly, continues the output. An output whose _job.json records "auto" itself (written before precision
was resolved) cannot tell which arithmetic its shards used: it is refused as another job, saying so.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from augment import __version__
from augment.data import fs as afs
from augment.data.dataset import (
    INFO_FILE, QUARANTINE_FILE, Dataset, DatasetInfo, PartStats, open_dataset, write_card,
)
from augment.core.device import local_native_bf16, resolve_precision
from augment.core.errors import AugmentError
from augment.data.drawing import png_bytes, render_sheet
from augment.runner.jobfile import JobConfig, job_schema, load_job
from augment.runner.markers import (
    JOB_FILE, PLAN_FILE, SHEETS_DIR, SUMMARY_FILE, OutputFolder, RunClaim, ShardStats, claim_run, examples_file,
    is_temporary, marker_file, run_number, shard_name,
)
from augment.runner.pool import Progress, run_shards, worker_resources, workers_native_bf16
from augment.runner.shard import ShardSettings, SynthesisSettings, read_examples
from augment.runner.verify import id_problem
from augment.synthesis.insert_plan import InsertionPlan, make_insertion_plan
from augment.synthesis.insertion_sheets import InsertionRow, render_insertion_sheet
from augment.synthesis.plan import Plan, PlannedSample, make_plan
from augment.training.crops import DEFAULT_DILATION
from augment.models.store import CheckpointError, ModelCard, check_compatible, load_generator, load_segmenter

FINGERPRINT_VERSION = 1
MAX_SHARD_ROUNDS = 3

__all__ = [
    "Claim", "JobConfig", "PreparedJob", "claim_output", "job_fingerprint", "load_job", "prepare_job",
    "run_job", "job_schema",
]


@dataclass
class PreparedJob:
    """A validated job: its inputs opened, its plan made and its fingerprint computed. Nothing written yet."""

    cfg: JobConfig
    dataset: Dataset
    generator_card: ModelCard | None
    segmenter_card: ModelCard
    plan: Plan | InsertionPlan
    synthesis: SynthesisSettings
    content: dict[str, Any]
    fingerprint: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Insertion plans: source maps left out for not decoding (quarantined with the job's bad rows)."""

    @property
    def shards(self) -> list[list[PlannedSample]]:
        return self.plan.shards(self.cfg.resources.samples_per_shard)


def job_fingerprint(content: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `content`."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fingerprint_content(
    cfg: JobConfig, dataset: Dataset, gen: ModelCard | None, seg: ModelCard, plan: Plan | InsertionPlan,
    synthesis: SynthesisSettings,
) -> dict[str, Any]:
    """What the fingerprint hashes (module docstring). Mode scene: exactly version 1's keys, so version 1 outputs
    resume; paste and insert: no edits, the placement options instead, and no generator for paste."""
    info_bytes = dataset.info_bytes()
    content: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "data": {"dataset_json_sha256": hashlib.sha256(info_bytes).hexdigest(), "num_rows": dataset.info.num_rows},
        "generator": None if gen is None else {"weights_sha256": gen.weights_sha256},
        "segmenter": {"weights_sha256": seg.weights_sha256},
        "seed": cfg.seed,
        "quotas": {str(c): q for c, q in sorted(plan.quotas.items())},
        "balance": None if cfg.balance_total is None else {"total": cfg.balance_total, "power": cfg.balance_power},
        **synthesis.fingerprint_fields(),
        "samples_per_shard": cfg.resources.samples_per_shard,
    }
    if synthesis.inserts:
        content["placement"] = cfg.synthesis.placement
        if synthesis.class_means is not None:
            content["class_means"] = list(synthesis.class_means)
    else:
        content["edits"] = plan.edit_options
    return content


def _one_size(info: DatasetInfo) -> tuple[int, int]:
    """The dataset's one image size; AugmentError when its images have several."""
    size = info.image_size
    if size is None:
        shapes = ", ".join(f"{s['height']}x{s['width']}" for s in info.sizes[:4])
        raise AugmentError(f"the dataset's images have several sizes ({shapes}); ingest it with --size HxW")
    return tuple(size)


def _check_size(card: ModelCard, info: DatasetInfo, what: str) -> None:
    size = _one_size(info)
    if tuple(card.size) != tuple(size):
        raise CheckpointError(
            f"{what} was trained at {card.size[0]}x{card.size[1]}, but the dataset's images are {size[0]}x{size[1]}"
        )



def synthesis_settings(cfg: JobConfig, native: Callable[[], bool] = local_native_bf16,
                       gen_card: ModelCard | None = None,
                       means: list[float | None] | None = None) -> SynthesisSettings:
    """The job's worker settings, precision resolved: `native` (asked only for "auto") says whether the workers'
    device computes bf16 natively; mode insert's hole dilation, when the job file gives none, is the one the
    generator (`gen_card`) was trained with; `means` are the pixel rule's class means (`class_means`)."""
    precision = resolve_precision(cfg.precision, cfg.precision == "auto" and native())
    syn = cfg.synthesis
    extra: dict[str, Any] = {}
    if syn.inserts:
        extra = {"mode": syn.mode, "band": syn.band, "dilation": hole_dilation(cfg, gen_card), "region": cfg.region_filter,
                 "class_means": None if means is None else tuple(means)}
    return SynthesisSettings(filter=cfg.filter, keep_rejected=cfg.keep_rejected, noise=cfg.noise, precision=precision,
                             batch_size=cfg.resources.batch_size, sheets=cfg.sheets, **extra)


def hole_dilation(cfg: JobConfig, gen_card: ModelCard | None) -> int:
    """Mode insert's hole dilation: the job file's, else the one the generator was trained with (0 for paste)."""
    dilation = cfg.synthesis.dilation
    if dilation is None and gen_card is not None:
        dilation = int((gen_card.metrics.get("training") or {}).get("hole_dilation", DEFAULT_DILATION))
    return int(dilation or 0)


def class_means(segmenter: str, dataset: Dataset, batch: int = 8) -> list[float | None]:
    """The pixel rule's per-class mean loss of the segmenter run `segmenter` over every real row of `dataset`
    (augment.filtering.region.class_mean_losses), computed in fp32 on this process's CPU so that every run of a job
    gets the same numbers; they are part of the job's fingerprint."""
    import torch

    from augment.filtering.region import class_mean_losses
    from augment.training.data import iter_eval_batches
    from augment.training.transforms import normalize

    model, card = load_segmenter(segmenter, "cpu")
    norm = card.model_config.get("normalize", "imagenet")
    size = (int(card.size[0]), int(card.size[1]))
    with torch.inference_mode():
        return class_mean_losses(model, ((normalize(b.images, norm), b.masks)
                                         for b in iter_eval_batches(dataset, batch, size)),
                                 dataset.info.num_classes, dataset.info.ignore_index)


def _load_checked(cfg: JobConfig, info: DatasetInfo) -> tuple[ModelCard | None, ModelCard]:
    """The generator's card (None in mode paste) and the segmenter's, each checked against the dataset and the
    mode: a whole-scene generator of the dataset's image size for scene, a crop-mode one for insert."""
    gen_card = None
    if cfg.generator is not None:
        generator, gen_card = load_generator(cfg.generator, "cpu")
        crop_mode = bool(getattr(generator, "context_channels", 0))
        del generator
        what = f"generator {cfg.generator}"
        check_compatible(gen_card, info, what)
        if cfg.synthesis.mode == "insert" and not crop_mode:
            raise CheckpointError(f"{what} is a whole-scene generator; synthesis mode insert paints objects with a "
                                  f"crop-mode one (augment train-gan --crop SIZE)")
        if cfg.synthesis.mode == "scene":
            if crop_mode:
                raise CheckpointError(f"{what} is a crop-mode generator (train-gan --crop); synthesis mode scene needs "
                                      f"a whole-scene one (or use synthesis mode insert)")
            _check_size(gen_card, info, what)
    segmenter, seg_card = load_segmenter(cfg.segmenter, "cpu")
    del segmenter
    check_compatible(seg_card, info, f"segmenter {cfg.segmenter}")
    return gen_card, seg_card


def _make_plan(cfg: JobConfig, dataset: Dataset,
               gen_card: ModelCard | None = None) -> tuple[Plan | InsertionPlan, list[dict[str, str]]]:
    """The job's plan (mode scene: `make_plan`; paste and insert: `make_insertion_plan`) and the source maps left
    out of an insertion plan for not decoding (quarantine records). Mode insert places only objects whose hole (the
    object grown by the hole dilation) fits the square window the generator paints (`hole_margin`)."""
    try:
        if cfg.synthesis.inserts:
            options = dict(cfg.synthesis.placement)
            if cfg.synthesis.mode == "insert":
                options["hole_margin"] = hole_dilation(cfg, gen_card)
            return make_insertion_plan(dataset, cfg.classes, cfg.balance_total, cfg.seed, options,
                                       balance_power=cfg.balance_power)
        return make_plan(dataset, cfg.classes, cfg.balance_total, cfg.seed, cfg.edits,
                         balance_power=cfg.balance_power), []
    except AugmentError as exc:
        raise AugmentError(f"{cfg.source}: {exc}") from None


def prepare_job(cfg: JobConfig, native: Callable[[], bool] = local_native_bf16) -> PreparedJob:
    """Validate everything the job needs, make its plan and resolve its precision (`native`: whether the workers'
    device computes bf16 natively, asked last and only for "auto"); raises AugmentError, writes nothing."""
    afs.check_apart(cfg.output, cfg.data, "the job's data")  # --overwrite there would delete the input
    dataset = open_dataset(cfg.data)
    info = dataset.info
    if not info.num_rows:
        raise AugmentError(f"{cfg.data}: the dataset has no rows")
    if cfg.synthesis.inserts:
        _one_size(info)
    gen_card, seg_card = _load_checked(cfg, info)
    plan, skipped = _make_plan(cfg, dataset, gen_card)
    if not len(plan):
        unplaced = getattr(plan, "unplaced", {})
        if any(unplaced.values()):
            raise AugmentError(f"{cfg.source}: no planned object found a place in any host "
                               f"({', '.join(f'{info.classes[c]} {n}' for c, n in unplaced.items() if n)} unplaced); "
                               f"loosen synthesis.placement (scale_range, min_ground, min_contact, max_hosts)")
        raise AugmentError(f"{cfg.source}: the job plans no samples (every quota is 0)")
    rule = cfg.synthesis.inserts and cfg.region_filter.pixel_rule
    synthesis = synthesis_settings(cfg, native, gen_card, class_means(cfg.segmenter, dataset) if rule else None)
    content = _fingerprint_content(cfg, dataset, gen_card, seg_card, plan, synthesis)
    return PreparedJob(cfg, dataset, gen_card, seg_card, plan, synthesis, content, job_fingerprint(content), skipped)


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
    current = out.current_run()  # after listing: a run claiming beside us makes our claim below fail
    record = out.job_record()
    if other:
        raise AugmentError(
            f"{out.uri} holds files that are not an augmentation job's output ({_listed(other)}); choose an empty or "
            f"new output location"
        )
    settled = [rel for rel in ours if not is_temporary(rel)]
    if settled and not out.belongs_to_augment():
        what = (f"a {out.locate(JOB_FILE)} augment did not write" if record is not None
                else f"no {JOB_FILE} and no run claims")
        raise AugmentError(f"{out.uri} is not an augment job's output ({what}) but holds {_listed(settled)}; "
                           f"refusing to write there, with or without --overwrite; choose another output")
    owner = current.fingerprint if current is not None else (record or {}).get("fingerprint")
    if owner == job.fingerprint:
        mode = "resume"
    elif owner is None and not settled:
        mode = "new"
    elif not overwrite:
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
    if mode == "overwrite":  # every file of the runs before this claim, and the job-wide files they wrote
        doomed = [rel for rel in ours if rel not in swept and (run_number(rel) or 0) <= claim.run
                  and claim.run_id not in rel]
    else:  # files of older runs of other jobs (a resume adopts this job's)
        doomed = [rel for rel in out.orphans(claim.run - 1, set(), job.fingerprint) if rel not in swept]
    if doomed:
        print(f"augment run: {mode}: removing {len(doomed)} files of superseded runs in {out.uri}:", flush=True)
        for rel in doomed:
            print(f"  {rel}", flush=True)
        out.remove_job_files(doomed)
    if out.is_current(claim.run_id):
        _write_job_record(out, job)
    return Claim(mode, claim)


def _listed(files: list[str]) -> str:
    """A few of `files` for a one-line message."""
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


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


def _write_plan(out: OutputFolder, plan: Plan | InsertionPlan) -> None:
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


def shard_settings(job: PreparedJob, run_id: str) -> ShardSettings:
    """What every worker of this job gets; `run_id` is the run's claim on the output (Claim.run.run_id)."""
    cfg, info = job.cfg, job.dataset.info
    return ShardSettings(
        data=cfg.data, generator=cfg.generator, segmenter=cfg.segmenter, output=cfg.output,
        fingerprint=job.fingerprint, classes=list(info.classes), ignore_index=info.ignore_index,
        generator_sha256=None if job.generator_card is None else job.generator_card.weights_sha256,
        segmenter_sha256=job.segmenter_card.weights_sha256,
        run_id=run_id, synthesis=job.synthesis,
    )


def _sound_shards(out: OutputFolder, job: PreparedJob) -> dict[int, ShardStats]:
    """The shards complete for this job whose files match their markers (size and sha256); each shard with a marker
    of this job that fails is named on stdout (it is then remade)."""
    sound, problems = out.verified(job.fingerprint, len(job.shards))
    for k, problem in problems.items():
        print(f"augment run: {shard_name(k)}: {problem}, remaking", flush=True)
    return sound


def _verify(out: OutputFolder, job: PreparedJob, done: dict[int, ShardStats]) -> list[str]:
    """Check the shard files hold exactly the expected ids, once each; returns the files (relative)."""
    missing = [shard_name(k) for k in range(len(job.shards)) if k not in done]
    if missing:
        raise AugmentError(f"{out.uri}: shards without a completion marker: {', '.join(missing[:5])}")
    files = [done[k].file for k in range(len(job.shards))]
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
        for ex in read_examples(out, k, done[k].run_id):
            bucket = rows.get(ex["target_class"], {}).get(ex["accepted"])
            if bucket is not None and len(bucket) < per:
                bucket.append(ex)
    written = []
    for c in sorted(wanted):
        sheet_rows = rows[c][True] + rows[c][False]
        if not sheet_rows:
            continue
        rel = f"{SHEETS_DIR}/{_safe_name(info.classes[c])}.png"
        if job.synthesis.inserts:
            sheet = render_insertion_sheet([
                InsertionRow(ex["host"], ex["object"], ex["object_shape"].astype(bool), ex["image"], ex["pred"],
                             ex["accepted"], ex["caption"], None if ex["box"] is None else tuple(ex["box"]))
                for ex in sheet_rows], info.palette)
        else:
            sheet = render_sheet([(ex["mask"], ex["image"], ex["pred"], ex["accepted"], ex["caption"])
                                  for ex in sheet_rows], info.palette)
        out.write_bytes(rel, png_bytes(sheet))
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
    _check_owner(out, claim)  # a superseded driver stops here: a newer overwrite may have removed its shards
    files = _verify(out, job, done)
    own = claim.run.run
    _check_owner(out, claim)
    keep = {rel for k, st in done.items()
            for rel in (st.file, marker_file(k, st.run_id), examples_file(k, st.run_id))}
    orphans = out.orphans(own, keep)  # only names of this run or older ones: never a newer run's
    if orphans:
        print(f"augment run: removing {len(orphans)} files of superseded runs not in this output: "
              f"{', '.join(orphans[:3])}{' ...' if len(orphans) > 3 else ''}", flush=True)
        out.remove_job_files(orphans)
    info = job.dataset.info
    merged = PartStats(info.num_classes)
    for k in sorted(done):
        merged.merge(done[k].part_stats())
    quarantined = job.skipped + [q for k in sorted(done) for q in done[k].quarantined]
    counts = {info.classes[c]: {"accepted": 0, "rejected": 0} for c, q in job.plan.quotas.items() if q > 0}
    for s in done.values():
        for name, n in s.accepted.items():
            counts[name]["accepted"] += n
        for name, n in s.rejected.items():
            counts[name]["rejected"] += n
    _check_owner(out, claim)
    sheets = _write_sheets(out, job, done)
    accepted = sum(c["accepted"] for c in counts.values())
    rejected = sum(c["rejected"] for c in counts.values())
    summary.update({
        "counts": counts, "accepted": accepted, "rejected": rejected, "quarantined": len(quarantined),
        "generated": accepted + rejected, "rows": merged.rows, "sheets": sheets,
        "below_threshold": _below_threshold(done),
    })
    syn = job.synthesis
    if syn.inserts:
        plan_summary = job.plan.summary()
        summary["synthesis"] = {"mode": syn.mode, "band": syn.band, "dilation": syn.dilation,
                                "region_filter": asdict(syn.region), "unplaced": plan_summary["unplaced"],
                                "candidates": plan_summary["candidates"]}
        if syn.class_means is not None:
            summary["synthesis"]["class_mean_losses"] = dict(zip(info.classes, syn.class_means))
    new_info = DatasetInfo(classes=list(info.classes), palette=info.palette, ignore_index=info.ignore_index,
                           kind="synthetic")
    new_info.apply_stats(merged)
    new_info.quarantined = len(quarantined)
    new_info.files = files
    new_info.lineage = {
        "source": job.cfg.data, "dataset_json_sha256": job.content["data"]["dataset_json_sha256"],
        "generator": job.cfg.generator,
        "generator_sha256": None if job.generator_card is None else job.generator_card.weights_sha256,
        "segmenter": job.cfg.segmenter, "segmenter_sha256": job.segmenter_card.weights_sha256,
        "job_fingerprint": job.fingerprint,
    }
    new_info.extra = {"counts": counts, "job": job.cfg.document, "plan": job.plan.summary(), "versions": _versions()}
    new_info.extra["file_checksums"] = {done[k].file: {"size": done[k].size, "sha256": done[k].sha256}
                                        for k in sorted(done)}
    new_info.lineage["run_id"] = claim.run.run_id
    summary["wall_seconds"] = round(time.perf_counter() - summary.pop("_start"), 3)
    _check_owner(out, claim)
    if quarantined:
        out.write_bytes(QUARANTINE_FILE, "".join(json.dumps(q) + "\n" for q in quarantined).encode())
    out.write_json(SUMMARY_FILE, summary)
    new_info.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _check_owner(out, claim)
    write_card(out.fs, out.path, new_info)
    out.write_bytes(INFO_FILE, new_info.to_json().encode())
    if not out.is_current(claim.run.run_id):  # superseded as it wrote: take back a _dataset.json that is still ours
        if ((out.read_json(INFO_FILE) or {}).get("lineage") or {}).get("run_id") == claim.run.run_id:
            afs.delete_quietly(out.fs, out.full(INFO_FILE))
        _check_owner(out, claim)
    return summary


def _below_threshold(done: dict[int, ShardStats]) -> dict[str, int] | None:
    """{filter key: samples scoring below it} over the shards; None when a shard (of an earlier version) did not
    count them."""
    totals: dict[str, int] = {}
    for k in sorted(done):
        if done[k].below is None:
            return None
        for key, n in done[k].below.items():
            totals[key] = totals.get(key, 0) + n
    return totals


def run_job(cfg: JobConfig, overwrite: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the summary also written to `_summary.json` (see the module docstring)."""
    start = time.perf_counter()
    job = prepare_job(cfg, lambda: workers_native_bf16(cfg.resources, _placeable(cfg, address)))
    out = OutputFolder(cfg.output)
    _placeable(cfg, address)  # refused before the output is claimed
    claim = claim_output(out, job, overwrite)
    _check_owner(out, claim)
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
                made |= run_shards(shards, settings, todo, cfg.resources, progress, local=local)
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


def _placeable(cfg: JobConfig, address: str | None) -> bool:
    """Start or join Ray and refuse (AugmentError) workers it could never place; returns whether Ray is local."""
    from augment.core.cluster import JOB_RESOURCE_NAMES, check_placeable

    local = _start_ray(address)
    workers, gpus, cpus = worker_resources(cfg.resources, cfg.resources.workers or 1, local, quiet=True)
    check_placeable({"CPU": cpus, "GPU": gpus}, workers, JOB_RESOURCE_NAMES, local)
    return local


def _start_ray(address: str | None) -> bool:
    """Start or join Ray (augment.core.cluster.init_ray); returns whether it is a local instance."""
    from augment.core.cluster import init_ray, is_local

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
    syn = summary.get("synthesis")
    if syn:
        unplaced = {k: v for k, v in syn["unplaced"].items() if v}
        lines.append(f"synthesis mode {syn['mode']}: objects put into real images (band {syn['band']} px)"
                     + (f"; unplaced (no host gave them a place): "
                        f"{', '.join(f'{k} {v}' for k, v in unplaced.items())}" if unplaced else ""))
    if summary["quarantined"]:
        lines.append(f"quarantined (unreadable source maps): {summary['quarantined']}, see {QUARANTINE_FILE}")
    lines.append(
        f"{summary['rows']} rows in {summary['shards']} shards ({summary['shards_run']} made now, "
        f"{summary['shards_skipped']} already done); {summary['images_per_second']:.1f} images/s, wall "
        f"{summary['wall_seconds']:.1f} s"
    )
    lines.append(f"output: {summary['output']}")
    return "\n".join(lines)
