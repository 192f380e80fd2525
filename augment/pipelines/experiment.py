"""The augmentation experiment on CamVid: does filtered synthetic data help the rare classes when labels are scarce?
Its entry point is jobs/experiment.py (the options named below are its command line).

For each training fraction F (--fractions, default 0.25 and 1.0; F < 1 is a fixed subset of CamVid's train split,
drawn once with --subset-seed) and each seed (--seeds, at least two for a spread), four settings are compared on
CamVid's val split with one segmenter recipe and one step budget (--seg-steps):
  (a) real only: the segmenter trained on the F subset alone (the baseline of the others)
  (b) real + synthetic, no filter: every generated sample is kept
  (c) real + synthetic, filter: only samples the baseline segmenter agrees with (--min-miou, --min-target-iou)
  (d) as (c), with pixel-level ignore: pixels where the segmenter confidently disagrees become ignore pixels
The GAN is trained once per fraction on the same subset (--gan-steps; --gan-widths and --gan-l1 size it down for a
CPU). Every segmenter uses --class-weights (default median-frequency: without it the rare classes stay at 0 IoU and
there is nothing to compare on them). (b)-(d) come from augmentation jobs with the
same seed, plan and generator, so they share the generated images and differ only in the filter; each is trained by
`augment retrain` against (a): same recipe, step budget and seed, --ratio of every batch synthetic. The synthetic
samples target the rare classes (--targets, default pedestrian, bicyclist, pole, sign_symbol, fence; --per-class
each). The results table gives mIoU and the targeted classes' IoU as mean ± s.d. over the seeds; for every
setting against (a) the paired difference per seed, its mean and a 95% Student-t confidence interval over the
seeds (augment.report.stats), for mIoU, the targeted mean and each targeted class, a difference whose interval
contains 0 marked "within noise". Every run is seeded (augment.training.seeding; --deterministic adds torch's
deterministic algorithms), and a control arm checks it: (a) is trained a second time with the first seed
(real-again) and the report says how far the two agree (weights and every IoU: they should be identical).

Stages (--stages, default all): data, gan, baseline, synth, retrain, report. Each stage skips work whose output is
complete (datasets with their info file, finished training runs, finished jobs, written reports) and resumes
interrupted training runs, so the experiment can be split over several invocations that each fit a time limit.

Layout under OUT: data/{train,val,train-fNN}, fNN/gan, fNN/seedS/{real, syn-nofilter, syn-filter, syn-ignore,
b-nofilter, c-filter, d-ignore}, fNN/seedS/real-again (first seed only), results.json, results.md (NN = the
fraction in percent).

Needs Ray (a local instance is started unless --address or $RAY_ADDRESS names a cluster); a GPU is used when
present.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from augment.data import fs as afs
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, is_dataset, open_dataset
from augment.core.errors import AugmentError
from augment.models.gan import WIDTH_KEYS
from augment.report.page import Page, mean_spread, pct
from augment.report.stats import WITHIN_NOISE, PairedDifference, format_difference, paired_difference

STAGES = ("data", "gan", "baseline", "synth", "retrain", "report")
TARGETS = ("pedestrian", "bicyclist", "pole", "sign_symbol", "fence")
SETTINGS = {
    "a": ("real only", None),
    "b": ("real + synthetic, no filter", "nofilter"),
    "c": ("real + synthetic, filter", "filter"),
    "d": ("real + synthetic, filter + pixel ignore", "ignore"),
    "e": ("real + copy-paste", "paste"),
    "f": ("real + insert, region filter", "insert"),
    "g": ("real + insert, region filter + pixel rule", "insert-rule"),
}
"""Arm key -> (what it is, the name of its augmentation job's output `syn-<name>`; None: no job)."""
RUN_NAMES = {"b": "b-nofilter", "c": "c-filter", "d": "d-ignore", "e": "e-paste", "f": "f-insert",
             "g": "g-insert-rule"}
SCENE_ARMS = ("b", "c", "d")
INSERT_ARMS = ("f", "g")
CONTROL_RUN = "real-again"
EVAL_SPLITS = ("val", "heldout")
"""Where every arm is evaluated: CamVid's val split, and (with --heldout-match) the held-out frames of train."""


@dataclass
class Experiment:
    camvid: str
    out: str
    size: tuple[int, int] = (180, 240)
    fractions: list[float] = field(default_factory=lambda: [0.25, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    subset_seed: int = 0
    model: str = "lraspp_mobilenet_v3_large"
    seg_steps: int = 3000
    batch: int = 8
    lr: float | None = None
    gan_steps: int = 20000
    gan_batch: int = 8
    gan_widths: list[int] | None = None
    """Generator width, discriminator width and SPADE hidden width (None: OASIS's)."""
    gan_l1: bool = False
    class_weights: str = "median-frequency"
    """Segmenter loss weighting (train-seg --class-weights); without it the rare classes stay at 0 IoU on CamVid."""
    per_class: int = 300
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    ratio: float = 0.3
    min_miou: float = 0.5
    min_target_iou: float = 0.3
    ignore_confidence: float = 0.9
    job_batch: int = 16
    deterministic: bool = False
    """Every training run also uses torch's deterministic algorithms (train-seg/train-gan --deterministic)."""
    workers: int = 1
    gpus_per_worker: float | None = None
    address: str | None = None
    arms: list[str] = field(default_factory=lambda: list(SETTINGS))
    """The arms to train ((a) always; the others against it)."""
    control: bool = True
    """Train (a) twice with the first seed (the control arm)."""
    train_match: str | None = None
    """A regex on frame ids: the training subsets are drawn from the train frames it matches only."""
    heldout_match: str | None = None
    """A regex on train frame ids: those frames are the held-out evaluation set (data/heldout), never trained on."""
    crop: int = 64
    """Crop size of the insert arms' generator (train-gan --crop)."""
    crop_gan_steps: int = 2000
    crop_gan_batch: int = 8
    crop_guide: bool = False
    """The insert arms' generator reads the source object's pixels (train-gan --crop --guide)."""
    band: int = 2
    """Paste/insert: the feathered band around an object (ignore in the mask)."""
    min_region_iou: float = 0.3
    pixel_rule_k: float = 1.25

    def path(self, *parts: str) -> str:
        return afs.join(self.out, *parts)

    def train_data(self, fraction: float) -> str:
        if fraction >= 1.0:
            return self.pool_data
        return self.path("data", f"train-{tag(fraction)}")

    @property
    def pool_data(self) -> str:
        """What the training subsets are drawn from: train, or its frames matching --train-match."""
        return self.path("data", "train-pool" if self.train_match else "train")

    @property
    def val_data(self) -> str:
        return self.path("data", "val")

    @property
    def heldout_data(self) -> str:
        return self.path("data", "heldout")

    def eval_data(self) -> dict[str, str]:
        """Evaluation split name -> dataset."""
        return {"val": self.val_data, **({"heldout": self.heldout_data} if self.heldout_match else {})}

    def uses(self, arms: tuple[str, ...]) -> bool:
        return any(a in self.arms for a in arms)


def tag(fraction: float) -> str:
    return f"f{round(fraction * 100):g}"


def say(line: str) -> None:
    print(f"[experiment] {line}", flush=True)


def complete(uri: str, name: str | None = None) -> bool:
    """Whether `uri` holds the file `name` (None: is a committed dataset, either layout)."""
    if name is None:
        return is_dataset(uri)
    filesystem, path = afs.resolve(uri)
    return afs.exists(filesystem, afs.join(path, name))


def subset_dataset(src: str, out: str, fraction: float, seed: int, of_rows: int | None = None) -> str:
    """A fixed subset of `src`: round(fraction * N) rows drawn with `seed`, written in `src`'s row order; N is
    `of_rows` (e.g. the whole split's rows when `src` holds some of its sequences only), else `src`'s rows.
    AugmentError when `src` has fewer rows than that."""
    ds = open_dataset(src)
    ids = ds.arrow.to_table(columns=["id"]).column("id").to_pylist()
    k = max(1, round(fraction * (of_rows or len(ids))))
    if k > len(ids):
        raise AugmentError(f"{src}: {fraction:.0%} of {of_rows} rows is {k}, but it holds only {len(ids)}")
    chosen = set(np.asarray(sorted(ids))[np.random.default_rng(seed).permutation(len(ids))[:k]].tolist())
    with StagedOutput(out) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", ds.schema_name, ds.info.num_classes)
        for batch in ds.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                if row["id"] in chosen:
                    writer.write(row)
        stats = writer.close()
        info = DatasetInfo(classes=list(ds.info.classes), palette=ds.info.palette, ignore_index=ds.info.ignore_index,
                           lineage={"source": src, "subset_fraction": fraction, "subset_seed": seed,
                                    "subset_of_rows": of_rows or len(ids), "drawn_from_rows": len(ids)})
        info.apply_stats(stats)
        staged.commit(info, [])
    return out


def stage_data(x: Experiment) -> None:
    from augment.data.ingest import ingest

    wanted = [("train", x.path("data", "train"), None), ("val", x.val_data, None)]
    if x.train_match:
        wanted.append(("train", x.pool_data, x.train_match))
    if x.heldout_match:
        wanted.append(("train", x.heldout_data, x.heldout_match))
    for split, uri, match in wanted:
        if complete(uri):
            say(f"data: {uri} complete")
            continue
        result = ingest(x.camvid, "camvid", uri, split=split, size=x.size, match=match,
                        command=f"jobs/experiment.py data {split} {x.size[0]}x{x.size[1]} match {match}")
        say(f"data: {result.summary('ingested')}")
    if x.train_match and x.heldout_match:
        ids = [set(open_dataset(u).arrow.to_table(columns=["id"]).column("id").to_pylist())
               for u in (x.pool_data, x.heldout_data)]
        if ids[0] & ids[1]:
            raise AugmentError(f"--train-match and --heldout-match share frames ({sorted(ids[0] & ids[1])[:3]}); "
                               f"the held-out set must be disjoint from training")
    rows = open_dataset(x.path("data", "train")).info.num_rows
    for f in x.fractions:
        uri = x.train_data(f)
        if f < 1.0 and not complete(uri):
            subset_dataset(x.pool_data, uri, f, x.subset_seed, of_rows=rows)
            say(f"data: {uri}: {open_dataset(uri).info.num_rows} rows ({f:.0%} of train's {rows}, drawn from "
                f"{x.pool_data}, subset seed {x.subset_seed})")


def stage_gan(x: Experiment, f: float) -> None:
    """The whole-scene GAN of arms (b)-(d) and the crop-mode GAN of arms (f)-(g), each when an arm needs it."""
    from augment.training.gan import GANTrainConfig, train_gan

    model = dict(zip(WIDTH_KEYS, x.gan_widths)) if x.gan_widths else {}
    common = dict(data=x.train_data(f), l1=x.gan_l1, model=model, workers=x.workers, resume=True,
                  gpus_per_worker=x.gpus_per_worker, address=x.address, deterministic=x.deterministic)
    if x.uses(SCENE_ARMS):
        out = x.path(tag(f), "gan")
        say(f"gan {tag(f)}: {x.gan_steps} steps on {x.train_data(f)} -> {out}")
        train_gan(GANTrainConfig(out=out, size=x.size, steps=x.gan_steps, batch=x.gan_batch, **common))
    if x.uses(INSERT_ARMS):
        out = x.path(tag(f), "cropgan")
        say(f"crop gan {tag(f)}: {x.crop_gan_steps} steps of {x.crop}x{x.crop} crops on {x.train_data(f)} -> {out}")
        train_gan(GANTrainConfig(out=out, crop=x.crop, guide=x.crop_guide, steps=x.crop_gan_steps,
                                 batch=x.crop_gan_batch, **common))


def seg_epochs(x: Experiment, f: float) -> int:
    rows = open_dataset(x.train_data(f)).info.num_rows
    return max(1, math.ceil(x.seg_steps / max(rows // (x.batch * x.workers), 1)))


def stage_baseline(x: Experiment, f: float, seed: int) -> None:
    """(a) for one seed; for the first seed also the control arm, (a) once more with the same seed."""
    from augment.training.segmenter import SegTrainConfig, train_segmenter

    runs = ["real"] + ([CONTROL_RUN] if x.control and seed == x.seeds[0] else [])
    for run in runs:
        out = x.path(tag(f), f"seed{seed}", run)
        what = "(a)" if run == "real" else "(a) again, the control arm,"
        say(f"{what} {tag(f)} seed {seed}: {x.model}, {x.seg_steps} steps on {x.train_data(f)} -> {out}")
        train_segmenter(SegTrainConfig(
            data=[x.train_data(f)], val=x.val_data, out=out, model=x.model, size=x.size, epochs=seg_epochs(x, f),
            batch=x.batch, lr=x.lr, workers=x.workers, gpus_per_worker=x.gpus_per_worker, resume=True, seed=seed,
            deterministic=x.deterministic, address=x.address, max_steps=x.seg_steps, class_weights=x.class_weights,
        ))


def job_filters(x: Experiment) -> dict[str, dict[str, Any]]:
    thresholds = {"min_miou": x.min_miou, "min_target_iou": x.min_target_iou}
    region = {"min_region_iou": x.min_region_iou}
    return {
        "nofilter": {"min_miou": 0.0, "min_target_iou": 0.0, "min_pixel_accuracy": 0.0},
        "filter": thresholds,
        "ignore": {**thresholds, "pixel_ignore": True, "ignore_confidence": x.ignore_confidence},
        "paste": {"min_region_iou": 0.0},
        "insert": region,
        "insert-rule": {**region, "pixel_rule": True, "pixel_rule_k": x.pixel_rule_k},
    }


def job_documents(x: Experiment, f: float, seed: int) -> dict[str, dict[str, Any]]:
    """The augmentation jobs of fraction `f` and `seed`, by output name (`syn-<name>`), for the chosen arms. The
    scene jobs (b)-(d) share seed, plan and generator, so their images are the same and only the filter differs;
    so do the insert jobs (f) and (g); (e) pastes the objects (f) and (g) paint, at the same placements."""
    folder = x.path(tag(f), f"seed{seed}")
    filters = job_filters(x)
    docs = {}
    for key in x.arms:
        name = SETTINGS[key][1]
        if name is None:
            continue
        doc: dict[str, Any] = {
            "data": x.train_data(f), "segmenter": afs.join(folder, "real"), "output": afs.join(folder, f"syn-{name}"),
            "seed": seed, "classes": {c: x.per_class for c in x.targets}, "filter": filters[name],
            "resources": {"batch_size": x.job_batch, "samples_per_shard": 4 * x.job_batch},
        }
        if key in SCENE_ARMS:
            doc["generator"] = x.path(tag(f), "gan")
        else:
            doc["version"] = 2
            doc["synthesis"] = {"mode": "paste" if key == "e" else "insert", "band": x.band}
            if key in INSERT_ARMS:
                doc["generator"] = x.path(tag(f), "cropgan")
        docs[name] = doc
    return docs


def stage_synth(x: Experiment, f: float, seed: int) -> None:
    from augment.runner.job import format_summary, run_job
    from augment.runner.jobfile import job_from_document

    for name, doc in job_documents(x, f, seed).items():
        out = doc["output"]
        if complete(out) and open_dataset(out).info.extra.get("job") == doc:
            say(f"synth {tag(f)} seed {seed} {name}: {out} complete")
            continue
        say(f"synth {tag(f)} seed {seed} {name}: {x.per_class} samples x {len(x.targets)} classes, "
            f"{doc.get('synthesis', {}).get('mode', 'scene')}, filter {doc['filter']}")
        summary = run_job(job_from_document(doc, source=f"experiment {tag(f)} seed {seed} {name}"),
                          address=x.address)
        print(format_summary(summary), flush=True)


def stage_retrain(x: Experiment, f: float, seed: int) -> None:
    from augment.pipelines.retrain import MixError, RetrainConfig, retrain

    folder = x.path(tag(f), f"seed{seed}")
    for key, run in RUN_NAMES.items():
        if key not in x.arms:
            continue
        out = afs.join(folder, run)
        synthetic = afs.join(folder, f"syn-{SETTINGS[key][1]}")
        skipped = afs.join(folder, f"{run}.skipped.json")
        fingerprint = open_dataset(synthetic).info.lineage.get("job_fingerprint")
        report = _read_json(afs.join(out, "report.json"))
        if report is not None:
            if report["lineage"]["synthetic"][0]["lineage"].get("job_fingerprint") != fingerprint:
                raise AugmentError(f"{out} was trained on an earlier {synthetic}; remove {out} to retrain it")
            say(f"({key}) {tag(f)} seed {seed}: {out} complete")
            continue
        say(f"({key}) {tag(f)} seed {seed}: {SETTINGS[key][0]} -> {out}")
        filesystem, path = afs.resolve(skipped)
        try:
            retrain(RetrainConfig(real=x.train_data(f), synthetic=[synthetic], val=x.val_data, out=out, ratio=x.ratio,
                                  baseline=afs.join(folder, "real"), gpus_per_worker=x.gpus_per_worker, resume=True,
                                  address=x.address, val_every=0))
            if afs.exists(filesystem, path):
                filesystem.delete_file(path)
        except MixError as exc:
            if "no accepted rows" not in str(exc):
                raise
            say(f"({key}) {tag(f)} seed {seed}: skipped, {exc}")
            afs.write_bytes_atomic(filesystem, path, json.dumps(
                {"reason": str(exc), "synthetic": synthetic, "job_fingerprint": fingerprint}).encode())


def _read_json(uri: str) -> dict[str, Any] | None:
    filesystem, path = afs.resolve(uri)
    return json.loads(afs.read_bytes(filesystem, path)) if afs.exists(filesystem, path) else None


def collect(x: Experiment) -> list[dict[str, Any]]:
    """One cell per (fraction, evaluation split, seed, setting) with its metrics there: (a) and, on splits other
    than val, every run is evaluated directly; on val the retrain report's evaluation of the augmented run is
    taken (the same protocol)."""
    from augment.training.evaluate import evaluate_segmenter

    from augment.pipelines.retrain import AUGMENTED_DIR

    cells = []
    for f in x.fractions:
        for seed in x.seeds:
            folder = x.path(tag(f), f"seed{seed}")
            real = afs.join(folder, "real")
            if not complete(real, "card.json"):
                continue
            for split, data in x.eval_data().items():
                cells.append(_cell(f, seed, "a", evaluate_segmenter(real, data), None, real, split=split))
            for key, run in RUN_NAMES.items():
                if key not in x.arms:
                    continue
                report = _read_json(afs.join(folder, run, "report.json"))
                if report is None:
                    skipped = _read_json(afs.join(folder, f"{run}.skipped.json"))
                    if skipped is not None:
                        cells += [{**_cell(f, seed, key, {"miou": None, "pixel_accuracy": None, "iou": {}}, 0,
                                           afs.join(folder, run), split=split), "skipped": skipped["reason"]}
                                  for split in x.eval_data()]
                    continue
                rows = sum(d.get("accepted_rows", 0) for d in report["mix"]["datasets"] if d["role"] == "synthetic")
                for split, data in x.eval_data().items():
                    metrics = (report["runs"]["augmented"]["metrics"] if split == "val"
                               else evaluate_segmenter(afs.join(folder, run, AUGMENTED_DIR), data))
                    cells.append(_cell(f, seed, key, metrics, rows, afs.join(folder, run),
                                       baseline_miou=report["miou"]["baseline"] if split == "val" else None,
                                       split=split))
    return cells


def _cell(f: float, seed: int, key: str, metrics: dict[str, Any], rows: int | None, run: str,
          baseline_miou: float | None = None, split: str = "val") -> dict[str, Any]:
    return {"fraction": f, "split": split, "seed": seed, "setting": key, "name": SETTINGS[key][0], "run": run,
            "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"], "iou": metrics["iou"],
            "synthetic_rows": rows, "baseline_miou": baseline_miou}


def _targeted_mean(cell: dict[str, Any], targets: list[str]) -> float | None:
    values = [cell["iou"].get(c) for c in targets]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def control_agreement(x: Experiment, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction whose control arm is trained: how far (a) and (a) again with the same seed agree (weights
    sha256, mIoU, pixel accuracy and every class's IoU on val)."""
    from augment.models.store import load_card
    from augment.training.evaluate import evaluate_segmenter

    by = {(c["fraction"], c["seed"], c["setting"]): c for c in cells if c.get("split", "val") == "val"}
    out = []
    for f in x.fractions:
        seed = x.seeds[0]
        again = x.path(tag(f), f"seed{seed}", CONTROL_RUN)
        first = by.get((f, seed, "a"))
        if first is None or not complete(again, "card.json"):
            continue
        metrics = evaluate_segmenter(again, x.val_data)
        pairs = [(first["miou"], metrics["miou"]), (first["pixel_accuracy"], metrics["pixel_accuracy"]),
                 *[(first["iou"].get(c), v) for c, v in metrics["iou"].items()]]
        out.append({
            "fraction": f, "seed": seed, "run": again, "first": first["run"],
            "weights_identical": load_card(first["run"]).weights_sha256 == load_card(again).weights_sha256,
            "metrics_identical": all(a == b for a, b in pairs),
            "max_abs_difference": max((abs(b - a) for a, b in pairs if a is not None and b is not None), default=0.0),
            "miou": [first["miou"], metrics["miou"]],
        })
    return out


def summarize(x: Experiment, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (fraction, evaluation split, setting): mean and s.d. over seeds, and for settings other than (a) the
    paired difference against (a) of the same fraction, split and seed (`augment.report.stats.paired_difference`: per seed, mean, 95%
    interval) for mIoU, the targeted mean and each targeted class."""
    by = {(c["fraction"], c.get("split", "val"), c["seed"], c["setting"]): c for c in cells}
    rows = []
    for f, split in [(f, s) for f in x.fractions for s in EVAL_SPLITS]:
        for key in SETTINGS:
            mine = [c for c in cells if c["fraction"] == f and c.get("split", "val") == split and c["setting"] == key]
            if not mine:
                continue
            base = [by.get((f, split, c["seed"], "a")) for c in mine]

            def stats(values: list[float | None]) -> dict[str, Any]:
                vals = [v for v in values if v is not None]
                mean = sum(vals) / len(vals) if vals else None
                sd = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None)
                return {"mean": mean, "sd": sd, "values": values}

            def paired(fn) -> dict[str, Any] | None:
                if key == "a":
                    return None
                return paired_difference([fn(c) for c in mine], [None if b is None else fn(b) for b in base],
                                         [c["seed"] for c in mine]).to_dict()

            rows.append({
                "fraction": f, "split": split, "setting": key, "name": SETTINGS[key][0],
                "seeds": [c["seed"] for c in mine],
                "miou": stats([c["miou"] for c in mine]),
                "targeted": stats([_targeted_mean(c, x.targets) for c in mine]),
                "iou": {t: stats([c["iou"].get(t) for c in mine]) for t in x.targets},
                "delta_miou": paired(lambda c: c["miou"]),
                "delta_targeted": paired(lambda c: _targeted_mean(c, x.targets)),
                "delta_iou": {t: paired(lambda c, t=t: c["iou"].get(t)) for t in x.targets} if key != "a" else None,
                "synthetic_rows": stats([c["synthetic_rows"] for c in mine]) if key != "a" else None,
            })
    return rows


def results_page(x: Experiment, summary: list[dict[str, Any]], skipped: list[dict[str, Any]],
                 controls: list[dict[str, Any]] = ()) -> Page:
    page = Page("Synthetic augmentation on CamVid: per setting, mean ± s.d. over seeds (IoU in %)")
    page.paragraph(
        f"CamVid at {x.size[0]}x{x.size[1]}, {x.model}, {x.seg_steps} steps of batch {x.batch} x {x.workers} "
        f"worker(s) for every run, class weights {x.class_weights}; GAN {x.gan_steps} steps of batch {x.gan_batch}"
        f"{', widths ' + ','.join(map(str, x.gan_widths)) if x.gan_widths else ''}{', L1' if x.gan_l1 else ''}; "
        f"{x.per_class} synthetic samples per targeted class, "
        f"{x.ratio:.0%} of every batch synthetic; filter min mIoU {x.min_miou}, min target IoU {x.min_target_iou}, "
        f"pixel ignore at confidence {x.ignore_confidence}"
        + (f"; insert arms: {'guided ' if x.crop_guide else ''}crop GAN {x.crop_gan_steps} steps of batch "
           f"{x.crop_gan_batch} at {x.crop}x{x.crop}, band "
           f"{x.band} px, region IoU >= {x.min_region_iou}, pixel rule k {x.pixel_rule_k}" if x.uses(("e", "f", "g"))
           else "")
        + (f"; training frames matching {x.train_match} only" if x.train_match else "")
        + f". Seeds {', '.join(map(str, x.seeds))}"
        f"{', deterministic algorithms' if x.deterministic else ''}. "
        f"Change columns: paired difference to (a) of the same fraction and seed, mean over seeds [95% Student-t "
        f"confidence interval], '{WITHIN_NOISE}' where the interval contains 0."
    )
    header = ["train data", "evaluated on", "setting", "mIoU", "change mIoU", "targeted mean", "change targeted",
              *x.targets, "synthetic rows"]
    rows = []
    for r in summary:
        def cell(s: dict[str, Any]) -> str:
            return mean_spread(s["values"])

        rows.append([
            f"{r['fraction']:.0%} of train", _split_name(x, r.get("split", "val")), f"({r['setting']}) {r['name']}",
            cell(r["miou"]),
            "" if r["setting"] == "a" else _change(r["delta_miou"]), cell(r["targeted"]),
            "" if r["setting"] == "a" else _change(r["delta_targeted"]), *[cell(r["iou"][t]) for t in x.targets],
            "" if r["synthetic_rows"] is None else f"{r['synthetic_rows']['mean']:.0f}",
        ])
    page.table(header, rows)
    for r in summary:
        if r["setting"] != "a":
            _difference_table(page, x, r)
    if controls:
        page.heading("Control arm: (a) trained twice with the same seed")
        page.bullets([_control_line(c) for c in controls])
    if skipped:
        page.paragraph("Not trained (counted as missing above):")
        page.bullets([f"{c['fraction']:.0%} of train, seed {c['seed']}, ({c['setting']}): {c['skipped']}"
                      for c in skipped])
    return page


def _split_name(x: Experiment, split: str) -> str:
    return "val" if split == "val" else f"held-out frames of train ({x.heldout_match})"


def _change(record: dict[str, Any] | None) -> str:
    return "-" if record is None else format_difference(PairedDifference.from_dict(record))


def _difference_table(page: Page, x: Experiment, r: dict[str, Any]) -> None:
    """One setting's paired differences to (a): per seed, mean, 95% interval and verdict, per metric (points)."""
    page.heading(f"{r['fraction']:.0%} of train, on {_split_name(x, r.get('split', 'val'))}: ({r['setting']}) "
                 f"{r['name']} minus (a), IoU points")
    metrics = [("mIoU", r["delta_miou"]), ("targeted mean", r["delta_targeted"]),
               *[(t, r["delta_iou"][t]) for t in x.targets]]
    rows = []
    for name, record in metrics:
        d = PairedDifference.from_dict(record)
        per_seed = dict(zip(d.seeds, d.values))
        interval = "-" if d.low is None else f"[{pct(d.low, signed=True)}, {pct(d.high, signed=True)}]"
        verdict = {True: WITHIN_NOISE, False: "beyond noise", None: "one seed: no interval"}[d.within_noise]
        rows.append([name, *[pct(per_seed.get(s), signed=True) for s in x.seeds], pct(d.mean, signed=True),
                     interval, verdict if d.mean is not None else "-"])
    page.table(["metric", *[f"seed {s}" for s in x.seeds], "mean", "95% interval", ""], rows)


def _control_line(c: dict[str, Any]) -> str:
    same = "identical weights" if c["weights_identical"] else "DIFFERENT weights"
    return (f"{c['fraction']:.0%} of train, seed {c['seed']}: `{c['first']}` and `{c['run']}` have {same}; mIoU "
            f"{pct(c['miou'][0])} and {pct(c['miou'][1])}, largest difference over mIoU, pixel accuracy and every "
            f"class's IoU {c['max_abs_difference'] * 100:.2f} points"
            + ("" if c["metrics_identical"] else " (not exactly equal)"))


def stage_report(x: Experiment) -> str:
    cells = collect(x)
    if not cells:
        raise AugmentError(f"{x.out}: no finished runs to report yet (run the earlier stages)")
    summary = summarize(x, cells)
    controls = control_agreement(x, cells)
    page = results_page(x, summary, [c for c in cells if c.get("skipped")], controls)
    record = {"experiment": {**asdict(x), "size": list(x.size)}, "cells": cells, "summary": summary,
              "controls": controls, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    filesystem, path = afs.resolve(x.out)
    afs.write_bytes_atomic(filesystem, afs.join(path, "results.json"), json.dumps(record, indent=2).encode())
    markdown = page.to_markdown()
    afs.write_bytes_atomic(filesystem, afs.join(path, "results.md"), markdown.encode())
    return markdown


SETTINGS_FILE = "experiment.json"
_RUN_ONLY = ("camvid", "out", "fractions", "seeds", "arms", "workers", "gpus_per_worker", "address", "job_batch")


def recorded_settings(x: Experiment) -> Experiment:
    """The experiment as its training stages ran it (`experiment.json`), so a later `--stages report` that was
    started with other options still describes the runs it reports; fractions and seeds stay this invocation's."""
    filesystem, path = afs.resolve(x.out)
    settings_path = afs.join(path, SETTINGS_FILE)
    if not afs.exists(filesystem, settings_path):
        return x
    recorded = json.loads(afs.read_bytes(filesystem, settings_path))
    recorded["size"] = tuple(recorded["size"])
    return Experiment(**{**recorded, **{k: getattr(x, k) for k in _RUN_ONLY}})


def record_settings(x: Experiment) -> None:
    """Write `experiment.json`, refusing settings that differ from those earlier stages ran with."""
    current = {k: v for k, v in {**asdict(x), "size": list(x.size)}.items() if k not in _RUN_ONLY}
    filesystem, path = afs.resolve(x.out)
    settings_path = afs.join(path, SETTINGS_FILE)
    if afs.exists(filesystem, settings_path):
        recorded = {k: v for k, v in json.loads(afs.read_bytes(filesystem, settings_path)).items()
                    if k not in _RUN_ONLY}
        defaults = {k: v for k, v in asdict(Experiment(camvid=x.camvid, out=x.out)).items() if k not in recorded}
        recorded.update(defaults)  # a setting added since those stages ran: they ran with its default
        changed = sorted(k for k in current if recorded.get(k) != current[k])
        if changed:
            detail = ", ".join(f"{k} {recorded.get(k)!r} -> {current[k]!r}" for k in changed)
            raise AugmentError(f"{x.out} holds runs made with other settings ({detail}); use another --out")
    filesystem.create_dir(path, recursive=True)
    afs.write_bytes_atomic(filesystem, settings_path, json.dumps({**asdict(x), "size": list(x.size)}, indent=2).encode())


def run(x: Experiment, stages: list[str]) -> None:
    if any(s != "report" for s in stages):
        from augment.core.cluster import init_ray

        record_settings(x)
        init_ray(x.address)
    for stage in STAGES:
        if stage not in stages:
            continue
        t = time.monotonic()
        say(f"== stage {stage}")
        if stage == "data":
            stage_data(x)
        elif stage == "gan":
            for f in x.fractions:
                stage_gan(x, f)
        elif stage == "report":
            print(stage_report(recorded_settings(x)), flush=True)
            say(f"results in {x.path('results.md')} and {x.path('results.json')}")
        else:
            fn = {"baseline": stage_baseline, "synth": stage_synth, "retrain": stage_retrain}[stage]
            for f in x.fractions:
                for seed in x.seeds:
                    fn(x, f, seed)
        say(f"== stage {stage} done in {time.monotonic() - t:.1f} s")
