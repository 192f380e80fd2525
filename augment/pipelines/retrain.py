"""`augment retrain`: the segmenter retrained on real + synthetic data and compared, per class, with a real-only
baseline.

In order (RUN is --out):
 1. the mix is checked before anything is trained (`check_mix`): the real, synthetic and validation datasets share
    one class list and ignore index; their images share one size unless --size is given; every synthetic dataset
    is an augmentation job's output with accepted rows; 0 < ratio < 1 and every batch keeps a real sample.
 2. the baseline: --baseline, whose card must fit (a finished segmenter run on the real data alone, with the same
    classes, size and model; the augmented run then takes its recipe: optimizer, lr, weight decay, batch, workers,
    scale range, seed, --deterministic, class weights), else a run trained here into RUN/baseline on --real alone
    with the given recipe.
 3. the augmented run RUN/augmented: the baseline's recipe and budget, i.e. exactly its number of optimizer steps
    with batches of the same size, so the two runs differ only in what fills the batches: a fraction `ratio` of
    every batch comes from the synthetic datasets (accepted rows only; their masks' ignore pixels are left out of
    the loss), shared among them by accepted rows. Both runs draw from the same seed (augment.training.seeding):
    the same initial weights, the real data in the same per-epoch order with the same augmentations, the synthetic
    data in an order of the seed too, so a rerun reproduces both runs and their difference.
 4. both checkpoints are evaluated on --val by `evaluate_segmenter` (the numbers `augment evaluate` prints) and the
    report is written: figures/iou.png, figures/synthetic.png, report.md, report.html and report.json (last).

An existing RUN is refused unless --resume, which keeps finished runs (after checking they were trained for this
mix), continues interrupted ones and rewrites the report. A RUN holding only what a retrain that finished no epoch
left behind counts as empty.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from augment import __version__
from augment.data import fs as afs
from augment.data.dataset import Dataset, decode_row, open_dataset
from augment.core.errors import AugmentError
from augment.models.pretrained import InitRecord
from augment.models.segmenter import SEGMENTER_KIND
from augment.synthesis import job_synthesis_mode
from augment.report.retrain import FIGURES_DIR, REPORT_HTML, REPORT_JSON, REPORT_MD, iou_chart_png, report_page
from augment.data.drawing import png_bytes, render_pairs
from augment.models.store import CARD_FILE, METRICS_FILE, CheckpointError, ModelCard, load_card
from augment.training.data import steps_per_epoch
from augment.training.evaluate import evaluate_segmenter
from augment.training.segmenter import DEFAULT_LR, SegTrainConfig, train_segmenter

REPORT_VERSION = 1
BASELINE_DIR = "baseline"
AUGMENTED_DIR = "augmented"
DEFAULT_MODEL = "lraspp_mobilenet_v3_large"
SHEET_PER_CLASS = 4


class MixError(AugmentError):
    """The requested real + synthetic mix (or baseline) cannot give a fair comparison."""


@dataclass
class RetrainConfig:
    """`augment retrain`'s options. Recipe fields left None come from --baseline's card when one is given, else
    from train-seg's defaults (model lraspp_mobilenet_v3_large, 30 epochs, batch 8, its optimizer and lr, seed 0)."""

    real: str
    synthetic: list[str]
    out: str
    val: str | None = None
    ratio: float = 0.3
    model: str | None = None
    size: tuple[int, int] | None = None
    epochs: int | None = None
    batch: int | None = None
    lr: float | None = None
    seed: int | None = None
    deterministic: bool | None = None
    class_weights: str | None = None
    weights_backbone: str | None = None
    init: str | None = None
    baseline: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    resume: bool = False
    address: str | None = None
    eval_batch: int = 8
    log_every: int = 50
    val_every: int = 1
    """train-seg's val_every for the runs trained here (the report evaluates both runs on --val either way)."""


@dataclass
class SyntheticSource:
    ds: Dataset
    accepted: int
    accepted_per_class: dict[str, int]
    targeted: list[str]
    derived_from_real: bool


@dataclass
class Mix:
    """A checked mix: the opened datasets, the training size and each synthetic dataset's accepted rows."""

    real: Dataset
    val: Dataset
    synthetic: list[SyntheticSource]
    size: tuple[int, int]
    ratio: float
    warnings: list[str] = field(default_factory=list)

    @property
    def weights(self) -> list[float]:
        """Batch shares: 1 - ratio for the real data, ratio split among the synthetic datasets by accepted rows."""
        total = sum(s.accepted for s in self.synthetic)
        return [1.0 - self.ratio] + [self.ratio * s.accepted / total for s in self.synthetic]

    @property
    def targeted(self) -> list[str]:
        names = {c for s in self.synthetic for c in s.targeted}
        return [c for c in self.real.info.classes if c in names]


@dataclass
class Recipe:
    model: str
    epochs: int
    batch: int
    lr: float | None
    seed: int
    workers: int
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    scale_range: tuple[float, float] = (0.5, 2.0)
    class_weights: str = "none"
    deterministic: bool = False
    weights_backbone: str = "none"
    init: str | None = None


def _dataset_json_sha256(ds: Dataset) -> str:
    return hashlib.sha256(ds.info_bytes()).hexdigest()


def _class_difference(name: str, classes: list[str], real: Dataset) -> str:
    ref = real.info.classes
    only_here = [c for c in classes if c not in ref]
    only_real = [c for c in ref if c not in classes]
    if not only_here and not only_real:
        return f"{name} lists the same classes as --real {real.uri} in another order ({classes} vs {ref})"
    parts = []
    if only_here:
        parts.append(f"only in {name}: {', '.join(only_here)}")
    if only_real:
        parts.append(f"only in --real: {', '.join(only_real)}")
    return f"{name} and --real {real.uri} have different classes ({'; '.join(parts)})"


def _check_same_classes(name: str, ds: Dataset, real: Dataset) -> None:
    if ds.info.classes != real.info.classes:
        raise MixError(_class_difference(f"{name} {ds.uri}", ds.info.classes, real) + "; a mix needs one class list")
    if ds.info.ignore_index != real.info.ignore_index:
        raise MixError(f"{name} {ds.uri} uses ignore index {ds.info.ignore_index}, --real uses "
                       f"{real.info.ignore_index}")


def _synthetic_source(ds: Dataset, real: Dataset, real_sha: str) -> SyntheticSource:
    if ds.info.kind != "synthetic":
        raise MixError(f"--synthetic {ds.uri} is a {ds.info.kind!r} dataset, not the output of an augmentation job "
                       f"(`augment run`)")
    table = ds.arrow.to_table(columns=["target_class", "accepted"])
    accepted = table.filter(pc.fill_null(table.column("accepted"), False))
    counts = np.bincount(np.asarray(accepted.column("target_class").to_numpy(), dtype=np.int64),
                         minlength=ds.info.num_classes)
    per_class = {ds.info.classes[c]: int(n) for c, n in enumerate(counts) if n}
    if not accepted.num_rows:
        raise MixError(f"--synthetic {ds.uri} has no accepted rows ({ds.info.num_rows} rows, all rejected by the "
                       f"quality filter); nothing to mix in")
    plan = ds.info.extra.get("plan") or {}
    quotas = plan.get("quotas") or {}
    targeted = [c for c, q in quotas.items() if q] or list(per_class)
    return SyntheticSource(
        ds=ds, accepted=accepted.num_rows, accepted_per_class=per_class, targeted=targeted,
        derived_from_real=ds.info.lineage.get("dataset_json_sha256") == real_sha,
    )


def check_mix(cfg: RetrainConfig, batch: int) -> Mix:
    """Open and check the datasets of a mix (see the module docstring); raises MixError naming the problem."""
    if not (isinstance(cfg.ratio, (int, float)) and 0.0 < cfg.ratio < 1.0):
        raise MixError(f"--ratio must lie strictly between 0 and 1 (the synthetic fraction of every batch), "
                       f"got {cfg.ratio}")
    if batch * (1.0 - cfg.ratio) < 1.0:
        raise MixError(f"--ratio {cfg.ratio} leaves no real sample in a batch of {batch}; lower --ratio or raise "
                       f"--batch")
    if not cfg.synthetic:
        raise MixError("give at least one --synthetic dataset")
    if not cfg.val:
        raise MixError("give --val, the real validation dataset both runs are evaluated on")
    real = open_dataset(cfg.real)
    if real.info.kind == "synthetic":
        raise MixError(f"--real {real.uri} is a synthetic dataset; give the real training data")
    if not real.info.num_rows:
        raise MixError(f"--real {real.uri} has no rows")
    val = open_dataset(cfg.val)
    _check_same_classes("--val", val, real)
    real_sha = _dataset_json_sha256(real)
    synthetic = []
    for uri in cfg.synthetic:
        ds = open_dataset(uri)
        _check_same_classes("--synthetic", ds, real)
        synthetic.append(_synthetic_source(ds, real, real_sha))
    if cfg.size is not None:
        size = (int(cfg.size[0]), int(cfg.size[1]))
    else:
        sizes = {d.uri: d.info.image_size for d in [real] + [s.ds for s in synthetic]}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            detail = ", ".join(f"{u} {'x'.join(map(str, s)) if s else 'mixed sizes'}" for u, s in sizes.items())
            raise MixError(f"the images differ in size ({detail}); pass --size HxW to train both runs at one size")
        size = sizes[real.uri]
    warnings = [
        f"--synthetic {s.ds.uri} was not generated from --real {real.uri} (its lineage names "
        f"{s.ds.info.lineage.get('source', '?')})"
        for s in synthetic if not s.derived_from_real
    ]
    return Mix(real=real, val=val, synthetic=synthetic, size=size, ratio=float(cfg.ratio), warnings=warnings)


def _card_training(card: ModelCard) -> dict[str, Any]:
    return dict(card.model_config.get("training") or {})


def baseline_recipe(cfg: RetrainConfig, card: ModelCard, mix: Mix) -> Recipe:
    """The recipe of a given --baseline, after checking its card fits the mix; MixError otherwise."""
    what = f"--baseline {cfg.baseline}"
    if card.kind != SEGMENTER_KIND:
        raise MixError(f"{what} is a {card.kind!r} run, not a segmenter (train one with train-seg)")
    info = mix.real.info
    if card.classes != info.classes:
        raise MixError(_class_difference(what, card.classes, mix.real))
    if card.ignore_index != info.ignore_index:
        raise MixError(f"{what} uses ignore index {card.ignore_index}, --real {info.ignore_index}")
    if tuple(card.size) != tuple(mix.size):
        raise MixError(f"{what} was trained at {card.size[0]}x{card.size[1]}, the mix trains at "
                       f"{mix.size[0]}x{mix.size[1]}" + ("" if cfg.size else "; pass --size to match it"))
    train = _card_training(card)
    model = card.model_config.get("name", "?")
    sources = (card.dataset or {}).get("train") or []
    if len(sources) != 1 or sources[0].get("num_rows") != info.num_rows or sources[0].get("kind") == "synthetic":
        used = ", ".join(f"{s.get('uri')} ({s.get('num_rows')} rows)" for s in sources) or "unknown data"
        raise MixError(f"{what} was not trained on --real alone ({mix.real.uri}, {info.num_rows} rows) but on {used}")
    if card.model_config.get("aux_loss"):
        raise MixError(f"{what} was trained with the auxiliary loss, which retrain does not use")
    epochs_done, epochs = (card.metrics or {}).get("epoch"), train.get("epochs")
    max_steps = train.get("max_steps")
    done = epochs is not None and epochs_done is not None and epochs_done >= epochs
    if not card.step or not (done or (max_steps and card.step >= max_steps)):
        raise MixError(f"{what} is unfinished (epoch {epochs_done} of {epochs}); finish it with "
                       f"`augment train-seg --resume` first")
    recipe = Recipe(
        model=model, epochs=int(epochs), batch=int(train.get("batch_per_worker", 0)), lr=train.get("lr"),
        seed=int(train.get("seed", 0)), workers=int(train.get("workers", 1)),
        optimizer=train.get("optimizer", "adamw"), weight_decay=float(train.get("weight_decay", 1e-4)),
        scale_range=tuple(train.get("scale_range", (0.5, 2.0))),
        class_weights=str(train.get("class_weights", "none")),
        deterministic=bool((card.reproducibility or {}).get("deterministic", False)),
        **_init_options(InitRecord.from_card(card.model_config)),
    )
    asked = {"--model": cfg.model, "--epochs": cfg.epochs, "--batch": cfg.batch, "--lr": cfg.lr, "--seed": cfg.seed,
             "--workers": cfg.workers, "--class-weights": cfg.class_weights, "--deterministic": cfg.deterministic,
             "--weights-backbone": cfg.weights_backbone, "--init": cfg.init}
    have = {"--model": recipe.model, "--epochs": recipe.epochs, "--batch": recipe.batch, "--lr": recipe.lr,
            "--seed": recipe.seed, "--workers": recipe.workers, "--class-weights": recipe.class_weights,
            "--deterministic": recipe.deterministic, "--weights-backbone": recipe.weights_backbone,
            "--init": recipe.init}
    for flag, value in asked.items():
        if value is not None and value != have[flag]:
            raise MixError(f"{flag} {value} does not fit {what}, trained with {flag} {have[flag]}; the augmented run "
                           f"shares the baseline's recipe and budget (leave {flag} out to take the baseline's)")
    return recipe


def _init_options(record: InitRecord) -> dict[str, Any]:
    """The Recipe's weights_backbone / init that start a run as `record` says a run started."""
    if record.kind == "run":
        return {"weights_backbone": "none", "init": record.source}
    return {"weights_backbone": record.source if record.kind == "file" else record.kind, "init": None}


def _own_recipe(cfg: RetrainConfig) -> Recipe:
    """The given options, train-seg's defaults for the rest (optimizer, weight decay, scale range)."""
    defaults = SegTrainConfig(data=[], out="")
    return Recipe(model=cfg.model or DEFAULT_MODEL, epochs=cfg.epochs or 30, batch=cfg.batch or 8, lr=cfg.lr,
                  seed=cfg.seed if cfg.seed is not None else 0, workers=cfg.workers or 1,
                  optimizer=defaults.optimizer, weight_decay=defaults.weight_decay,
                  scale_range=tuple(defaults.scale_range), class_weights=cfg.class_weights or defaults.class_weights,
                  deterministic=bool(cfg.deterministic), weights_backbone=cfg.weights_backbone or "none",
                  init=cfg.init)


def _seg_config(cfg: RetrainConfig, mix: Mix, recipe: Recipe, data: list[str], out: str, **kw: Any) -> SegTrainConfig:
    return SegTrainConfig(
        data=data, out=out, val=mix.val.uri, model=recipe.model, size=mix.size, epochs=recipe.epochs,
        batch=recipe.batch, lr=recipe.lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
        scale_range=recipe.scale_range, workers=recipe.workers, gpus_per_worker=cfg.gpus_per_worker,
        resume=cfg.resume, seed=recipe.seed, deterministic=recipe.deterministic, address=cfg.address,
        log_every=cfg.log_every, val_every=cfg.val_every,
        class_weights=recipe.class_weights, weights_backbone=recipe.weights_backbone, init=recipe.init, **kw,
    )


def _mix_record(mix: Mix, recipe: Recipe, steps: int) -> dict[str, Any]:
    weights = mix.weights
    return {
        "ratio": mix.ratio,
        "size": list(mix.size),
        "batch_per_worker": recipe.batch,
        "workers": recipe.workers,
        "class_weights": recipe.class_weights,
        "steps": steps,
        "datasets": [
            {"role": "real", "uri": mix.real.uri, "rows": mix.real.info.num_rows, "share": weights[0]},
            *[{"role": "synthetic", "uri": s.ds.uri, "rows": s.ds.info.num_rows, "accepted_rows": s.accepted,
               "share": w, "accepted_per_class": s.accepted_per_class, "targeted": s.targeted}
              for s, w in zip(mix.synthetic, weights[1:])],
        ],
    }


def _check_previous_augmented(run: str, mix_record: dict[str, Any]) -> None:
    """With --resume, refuse an augmented run that was trained for another mix."""
    try:
        card = load_card(run)
    except CheckpointError:
        return
    previous = _card_training(card).get("extra", {}).get("retrain")
    keys = ("ratio", "size", "steps", "datasets")
    if previous is None or any(previous.get(k) != mix_record.get(k) for k in keys):
        raise MixError(f"{run} was trained for another mix; choose a new --out (or remove {run}) to retrain")


def _augmented_epochs(mix: Mix, recipe: Recipe, steps: int) -> int:
    """Passes over the real data that hold `steps` steps when part of every batch is synthetic, plus one spare
    (the step cap ends the run; the per-epoch count is an estimate when the rows split unevenly over workers)."""
    per_epoch = steps_per_epoch(mix.real.info.num_rows // recipe.workers, recipe.batch, mix.weights)
    return max(1, math.ceil(steps / max(per_epoch, 1))) + 1


def _prepare_out(cfg: RetrainConfig) -> None:
    """Refuse a non-empty RUN unless --resume. The leftovers of a retrain that finished no epoch (files under
    baseline/ and augmented/ only, with no card.json or metrics.jsonl among them, both written only when an epoch
    completes) count as empty: there is nothing to resume, so a fresh run starts without --resume."""
    filesystem, path = afs.resolve(cfg.out)
    files = afs.list_files(filesystem, path, recursive=True)
    if not files or cfg.resume:
        return
    names = [posixpath.relpath(f, path).split("/") for f in files]
    if all(n[0] in (BASELINE_DIR, AUGMENTED_DIR) and n[-1] not in (CARD_FILE, METRICS_FILE) for n in names):
        _say(f"{cfg.out} holds no finished epoch (an earlier retrain stopped before its first checkpoint); starting "
             f"afresh")
        return
    raise MixError(f"{cfg.out} is not empty (a previous retrain?); pass --resume to keep its finished runs and "
                   f"rewrite the report, or choose another --out")


def retrain(cfg: RetrainConfig) -> dict[str, Any]:
    """Check the mix, train (or take) the baseline, train the augmented run, evaluate both, write the report.

    Returns the report (also RUN/report.json).
    """
    started = time.monotonic()
    given = load_card(cfg.baseline) if cfg.baseline else None
    batch = int(_card_training(given).get("batch_per_worker") or 8) if given else (cfg.batch or 8)
    mix = check_mix(cfg, batch)
    recipe = baseline_recipe(cfg, given, mix) if given else _own_recipe(cfg)
    _prepare_out(cfg)
    for w in mix.warnings:
        _say(f"warning: {w}")

    timings: dict[str, float] = {}
    if given is not None:
        baseline_run, baseline_card = str(cfg.baseline), given
        _say(f"baseline: {baseline_run} ({recipe.model}, {baseline_card.step} steps of {recipe.batch}, seed "
             f"{recipe.seed})")
    else:
        baseline_run = afs.join(cfg.out, BASELINE_DIR)
        _say(f"baseline: training {recipe.model} on {mix.real.uri} alone ({recipe.epochs} epochs, batch "
             f"{recipe.batch}, seed {recipe.seed}) -> {baseline_run}")
        t = time.monotonic()
        baseline_card = train_segmenter(_seg_config(cfg, mix, recipe, [mix.real.uri], baseline_run))
        timings["baseline_s"] = round(time.monotonic() - t, 1)
    steps = int(baseline_card.step)
    mix_record = _mix_record(mix, recipe, steps)
    augmented_run = afs.join(cfg.out, AUGMENTED_DIR)
    if cfg.resume:
        _check_previous_augmented(augmented_run, mix_record)
    uris = [mix.real.uri] + [s.ds.uri for s in mix.synthetic]
    shares = ", ".join(f"{w:.0%} {uri}" for w, uri in zip(mix.weights, uris))
    _say(f"augmented: training {recipe.model} for the baseline's {steps} steps of {recipe.batch} ({shares}) "
         f"-> {augmented_run}")
    t = time.monotonic()
    start = InitRecord.from_card(baseline_card.model_config)
    aug_cfg = _seg_config(cfg, mix, recipe, uris, augmented_run, weights=mix.weights, max_steps=steps,
                          extra={"retrain": mix_record}, init_sha256=start.sha256)
    aug_cfg.epochs = _augmented_epochs(mix, recipe, steps)
    augmented_card = train_segmenter(aug_cfg)
    timings["augmented_s"] = round(time.monotonic() - t, 1)
    if int(augmented_card.step) != steps:
        raise AugmentError(f"{augmented_run} made {augmented_card.step} steps, the baseline {steps}: the budgets "
                           f"differ; remove {augmented_run} and rerun with the baseline's --workers")

    _say(f"evaluating both on {mix.val.uri}")
    t = time.monotonic()
    before = evaluate_segmenter(baseline_run, mix.val.uri, batch=cfg.eval_batch)
    after = evaluate_segmenter(augmented_run, mix.val.uri, batch=cfg.eval_batch)
    timings["evaluate_s"] = round(time.monotonic() - t, 1)
    report = build_report(mix, recipe, baseline_run, baseline_card, augmented_run, augmented_card, before, after,
                          given is None, mix_record)
    report["timings"] = {**timings, "total_s": round(time.monotonic() - started, 1)}
    write_report(cfg.out, report, mix)
    return report


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def build_report(
    mix: Mix, recipe: Recipe, baseline_run: str, baseline_card: ModelCard, augmented_run: str,
    augmented_card: ModelCard, before: dict[str, Any], after: dict[str, Any], trained_here: bool,
    mix_record: dict[str, Any],
) -> dict[str, Any]:
    """The report's JSON content (see report.json); the metrics are `evaluate_segmenter`'s, unchanged."""
    targeted = mix.targeted
    accepted = {c: sum(s.accepted_per_class.get(c, 0) for s in mix.synthetic) for c in mix.real.info.classes}
    per_class = [
        {"class": c, "baseline": before["iou"][c], "augmented": after["iou"][c],
         "delta": _delta(before["iou"][c], after["iou"][c]), "targeted": c in targeted,
         "synthetic_accepted": accepted[c], "val_pixels": before["target_pixels"][c]}
        for c in mix.real.info.classes
    ]
    targeted_deltas = [r["delta"] for r in per_class if r["targeted"] and r["delta"] is not None]
    val = {"uri": mix.val.uri, "rows": mix.val.info.num_rows, "dataset_json_sha256": _dataset_json_sha256(mix.val)}
    return {
        "version": REPORT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "augment_version": __version__,
        "val": val,
        "per_class": per_class,
        "miou": {"baseline": before["miou"], "augmented": after["miou"],
                 "delta": _delta(before["miou"], after["miou"])},
        "pixel_accuracy": {"baseline": before["pixel_accuracy"], "augmented": after["pixel_accuracy"],
                           "delta": _delta(before["pixel_accuracy"], after["pixel_accuracy"])},
        "targeted": {"classes": targeted,
                     "mean_delta": sum(targeted_deltas) / len(targeted_deltas) if targeted_deltas else None},
        "mix": mix_record,
        "recipe": {"model": recipe.model, "optimizer": recipe.optimizer,
                   "lr": recipe.lr or DEFAULT_LR[recipe.optimizer], "weight_decay": recipe.weight_decay,
                   "batch_per_worker": recipe.batch, "workers": recipe.workers,
                   "scale_range": list(recipe.scale_range), "seed": recipe.seed,
                   "deterministic": recipe.deterministic, "baseline_epochs": recipe.epochs,
                   "augmented_epochs": _card_training(augmented_card).get("epochs"), "steps": baseline_card.step,
                   "init": InitRecord.from_card(baseline_card.model_config).to_dict()},
        "runs": {
            "baseline": {"run": baseline_run, "weights_sha256": baseline_card.weights_sha256,
                         "step": baseline_card.step, "trained_here": trained_here, "metrics": before},
            "augmented": {"run": augmented_run, "weights_sha256": augmented_card.weights_sha256,
                          "step": augmented_card.step, "metrics": after},
        },
        "lineage": {
            "real": {"uri": mix.real.uri, "dataset_json_sha256": _dataset_json_sha256(mix.real),
                     "lineage": mix.real.info.lineage},
            "synthetic": [
                {"uri": s.ds.uri, "dataset_json_sha256": _dataset_json_sha256(s.ds), "lineage": s.ds.info.lineage,
                 "job": s.ds.info.extra.get("job"), "plan": s.ds.info.extra.get("plan"),
                 "synthesis_mode": job_synthesis_mode(s.ds.info.extra.get("job")),
                 "derived_from_real": s.derived_from_real}
                for s in mix.synthetic
            ],
        },
        "warnings": list(mix.warnings),
        "figures": {"iou": f"{FIGURES_DIR}/iou.png", "synthetic": f"{FIGURES_DIR}/synthetic.png"},
    }


def synthetic_sheet(mix: Mix, per_class: int = SHEET_PER_CLASS) -> np.ndarray:
    """`image | label map` tiles of accepted synthetic rows used in training: up to `per_class` per targeted class."""
    classes = mix.real.info.classes
    wanted = [classes.index(c) for c in mix.targeted] or list(range(len(classes)))
    pairs: list[tuple[np.ndarray, np.ndarray, str]] = []
    for c in wanted:
        found = 0
        for s in mix.synthetic:
            expr = (pc.field("target_class") == c) & pc.field("accepted")
            for batch in s.ds.iter_batches(["id", "image", "mask"], batch_size=per_class, filter=expr):
                for row in batch.to_pylist():
                    sample = decode_row(row, source=s.ds.uri)
                    pairs.append((sample["image"], sample["mask"], f"{classes[c]}: {row['id'].rsplit('/', 1)[-1]}"))
                    found += 1
                    if found == per_class:
                        break
                if found == per_class:
                    break
            if found == per_class:
                break
    return render_pairs(pairs, mix.real.info.palette, columns=per_class)


def _write(out: str, rel: str, data: bytes) -> None:
    filesystem, path = afs.resolve(out)
    target = afs.join(path, rel)
    filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
    afs.write_bytes_atomic(filesystem, target, data)


def write_report(out: str, report: dict[str, Any], mix: Mix) -> None:
    """Figures, report.md and report.html, then report.json last (its presence means the report is complete)."""
    _write(out, report["figures"]["iou"], iou_chart_png(report))
    _write(out, report["figures"]["synthetic"], png_bytes(synthetic_sheet(mix)))
    page = report_page(report)
    _write(out, REPORT_MD, page.to_markdown().encode())
    _write(out, REPORT_HTML, page.to_html().encode())
    _write(out, REPORT_JSON, json.dumps(report, indent=2).encode())


def _say(line: str) -> None:
    print(f"retrain: {line}", flush=True)
