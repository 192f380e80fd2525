"""Training a torchvision segmenter on Ray Train (`augment train-seg`).

The loop follows torchvision's references/segmentation/train.py: SGD (momentum 0.9, weight decay 1e-4, lr 0.02),
cross-entropy with the ignore index, a poly learning-rate schedule `(1 - step / total_steps) ** 0.9` stepped per
batch, bf16 autocast and channels_last on GPU. SGD is the default because it trained best from scratch: LR-ASPP on
CamVid at 48x64, batch 8, 600 steps, one seed, val mIoU in eval mode: SGD lr 0.02 0.300, SGD 0.05 0.260, AdamW
1e-3 0.244 (at 250 steps: SGD 0.02 0.275, AdamW 1e-3 0.201, AdamW 3e-3 0.222). AdamW stays available through
`SegTrainConfig.optimizer`. Every epoch rank 0 appends a line to metrics.jsonl and writes a checkpoint (weights +
card + training state); with a validation set the epoch's mIoU goes into the card. The weights start random
(from `seed`), from a pretrained backbone (`weights_backbone`) or from another run (`init`): augment.models.pretrained. Data order, augmentations
(run in Ray Data tasks) and initialisation all derive from `seed` (augment.training.seeding), so two runs with the
same seed and worker count on the same machine and software give the same weights; `deterministic` also makes
torch's GPU kernels reproducible.

`class_weights="median-frequency"` weights the cross-entropy per class by median frequency balancing (Eigen &
Fergus 2015, as SegNet trains on CamVid): w_c = median(f) / f_c with f_c class c's share of the labelled pixels of
the first training dataset (its dataset.json `class_pixels`). Trained from scratch on CamVid without it, the thin
and rare classes (pole, sign, pedestrian, bicyclist, fence) stay at 0 IoU: the segmenter never predicts them.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from augment.data.dataset import Dataset, DatasetInfo, open_dataset
from augment.core.errors import AugmentError
from augment.models.pretrained import InitRecord, load_init, resolve_init
from augment.models.segmenter import SEGMENTER_KIND, build_segmenter, segmenter_config
from augment.training import CLASS_WEIGHTS
from augment.training import distributed as dist_utils
from augment.training import seeding
from augment.models.store import (
    CheckpointError,
    ModelCard,
    append_metrics,
    check_compatible,
    check_same_reproducibility,
    existing_run,
    load_card,
    load_into,
    load_train_state,
    load_weights,
    save_checkpoint,
)
from augment.training.data import (
    BatchMixer,
    Source,
    common_classes,
    common_size,
    open_sources,
    steps_per_epoch,
    training_stream,
)
from augment.training.evaluate import autocast, confusion_on
from augment.training.transforms import train_transform

DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.02}
STATE_KEYS = ("epoch", "step", "optimizer", "scheduler")
"""What train_state.pt must hold for --resume."""
NORMALIZATION = "imagenet"


def class_weights(info: DatasetInfo, method: str) -> list[float] | None:
    """Per-class loss weights for `method` (see the module docstring) from a dataset's pixel counts; None for
    "none". A class with no labelled pixels gets weight 1."""
    if method not in CLASS_WEIGHTS:
        raise AugmentError(f"unknown class weighting {method!r}; choose one of {', '.join(CLASS_WEIGHTS)}")
    if method == "none":
        return None
    pixels = [int(p) for p in info.class_pixels]
    total = sum(pixels)
    if len(pixels) != info.num_classes or total == 0:
        raise AugmentError("median-frequency class weights need the dataset's class pixel counts (dataset.json "
                           "class_pixels), which are missing or all zero")
    freq = [p / total for p in pixels]
    median = statistics.median(f for f in freq if f > 0)
    return [median / f if f > 0 else 1.0 for f in freq]


@dataclass
class SegTrainConfig:
    """Everything a train-seg run needs. `data` are training dataset URIs; `weights` their shares of each batch
    (None: one share each), e.g. data=[real, synthetic], weights=[0.7, 0.3] for 30% synthetic per batch."""

    data: list[str]
    out: str
    val: str | None = None
    model: str = "lraspp_mobilenet_v3_large"
    size: tuple[int, int] | None = None
    epochs: int = 30
    batch: int = 8
    lr: float | None = None
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    aux_loss: bool = False
    scale_range: tuple[float, float] = (0.5, 2.0)
    weights: list[float] | None = None
    workers: int = 1
    gpus_per_worker: float | None = None
    resume: bool = False
    seed: int = 0
    deterministic: bool = False
    """Also make torch use deterministic algorithms (augment.training.seeding.configure_determinism)."""
    address: str | None = None
    log_every: int = 50
    val_every: int = 1
    """Evaluate on `val` every this many epochs and after the last one (0: after the last only). Evaluation changes
    no weights: the run's weights are the same whatever it is."""
    class_weights: str = "none"
    """Cross-entropy class weighting: "none" or "median-frequency" (see the module docstring)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (the poly schedule ends there too): a budget shared with another
    run, e.g. `augment retrain`'s augmented run, which gets exactly its baseline's number of steps."""
    weights_backbone: str = "none"
    """Where the backbone starts: "none" (random), "imagenet" (torchvision's IMAGENET1K_V1) or a state-dict file
    (augment.models.pretrained)."""
    init: str | None = None
    """A finished train-seg run (same model and classes) whose weights the whole model starts from."""
    init_sha256: str | None = None
    """Refuse an initialisation whose sha256 is not this one (retrain: the baseline's, so both runs start alike)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded in the card (e.g. the retrain step's ratio)."""


def train_segmenter(config: SegTrainConfig) -> ModelCard:
    """Train (or, with `resume`, continue) a segmenter into the run folder `config.out`; returns its card."""
    if config.weights is not None and len(config.weights) != len(config.data):
        raise AugmentError(f"{len(config.weights)} batch shares for {len(config.data)} training datasets")
    sources = [Source(uri, w) for uri, w in zip(config.data, config.weights or [1.0] * len(config.data))]
    if config.optimizer not in DEFAULT_LR:
        raise AugmentError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(DEFAULT_LR)}")
    build_segmenter(config.model, 2, config.aux_loss)  # refuses an unknown model name before any work
    opened = open_sources(sources)
    datasets = [ds for ds, _ in opened]
    info = common_classes(datasets)
    weights = class_weights(datasets[0].info, config.class_weights)
    size = tuple(config.size) if config.size else common_size(datasets)
    val = open_dataset(config.val) if config.val else None
    if val is not None:
        common_classes(datasets + [val])
    _check_batches(opened, config.batch, config.workers)
    init = resolve_init(config.model, list(info.classes), config.weights_backbone, config.init, config.aux_loss)
    if config.init_sha256 is not None and init.record.sha256 != config.init_sha256:
        raise AugmentError(f"the initialisation {init.record.describe()} is not the one asked for (sha256 "
                           f"{config.init_sha256[:12] or 'none: from scratch'}); it changed since")

    card = ModelCard(
        kind=SEGMENTER_KIND,
        classes=list(info.classes),
        palette=[list(c) for c in info.palette],
        ignore_index=info.ignore_index,
        size=list(size),
        model_config={
            **segmenter_config(config.model, info.num_classes, config.aux_loss, NORMALIZATION),
            "init": init.record.to_dict(),
            "training": _training_record(config, weights),
        },
        dataset={"train": [_dataset_record(ds, w) for ds, w in opened], "val": _dataset_record(val) if val else None},
        reproducibility=seeding.reproducibility_record(config.seed, config.deterministic),
    )
    start = _start_state(config, card, datasets, val)
    if start is None:
        return load_card(config.out)

    transform = train_transform(size, config.scale_range, ignore_index=info.ignore_index)
    streams = [(training_stream(ds, transform, config.seed, i), w) for i, (ds, w) in enumerate(opened)]
    rows_per_worker = streams[0][0].rows // config.workers
    loop_config = {
        "config": asdict(config),
        "card": asdict(card),
        "streams": streams,
        "steps_per_epoch": steps_per_epoch(rows_per_worker, config.batch, [w for _, w in opened]),
        "start_epoch": start,
        "class_weights": weights,
        "init": {"target": init.target, "state": init.state} if start == 0 and init.state is not None else None,
    }
    dist_utils.run_training(
        _train_loop, loop_config, config.workers, config.gpus_per_worker, None, config.out, address=config.address,
    )
    return load_card(config.out)


def _check_batches(opened: list[tuple[Dataset, float]], batch: int, workers: int) -> None:
    """Refuse a first dataset too small to give each worker one full batch (the last partial batch is dropped)."""
    ds, _ = opened[0]
    total = sum(w for _, w in opened)
    need = math.ceil(batch * opened[0][1] / total) * workers
    if ds.info.num_rows < need:
        raise AugmentError(
            f"{ds.uri} has {ds.info.num_rows} rows, too few for one batch of {batch} on each of {workers} "
            f"worker(s) (needs {need}); lower --batch or --workers"
        )


def _dataset_record(ds: Dataset, weight: float | None = None) -> dict[str, Any]:
    record = {"uri": ds.uri, "num_rows": ds.info.num_rows, "kind": ds.info.kind, "lineage": ds.info.lineage}
    if weight is not None:
        record["weight"] = weight
    return record


def _training_record(config: SegTrainConfig, weights: list[float] | None) -> dict[str, Any]:
    return {
        "optimizer": config.optimizer,
        "lr": config.lr or DEFAULT_LR[config.optimizer],
        "weight_decay": config.weight_decay,
        "epochs": config.epochs,
        "batch_per_worker": config.batch,
        "workers": config.workers,
        "scale_range": list(config.scale_range),
        "seed": config.seed,
        "class_weights": config.class_weights,
        **({"class_weight_values": [round(w, 6) for w in weights]} if weights else {}),
        **({"max_steps": config.max_steps} if config.max_steps else {}),
        **({"extra": config.extra} if config.extra else {}),
    }


def _start_state(config: SegTrainConfig, card: ModelCard, datasets: list[Dataset], val: Dataset | None) -> int | None:
    """The epoch to start from (0 for a new run), or None when a resumed run is already complete."""
    existing = existing_run(config.out, config.resume, SEGMENTER_KIND, "train-seg")
    if existing is None:
        return 0
    what = f"run {config.out}"
    for ds in datasets + ([val] if val else []):
        check_compatible(existing, ds.info, what)
    if tuple(existing.size) != tuple(card.size):
        raise CheckpointError(f"{what} was trained at {existing.size[0]}x{existing.size[1]}, not {card.size[0]}x{card.size[1]}")
    for key in ("name", "aux_loss"):
        if existing.model_config.get(key) != card.model_config[key]:
            raise CheckpointError(
                f"{what} has model {key} {existing.model_config.get(key)!r}, but {card.model_config[key]!r} was asked for"
            )
    had = (existing.model_config.get("training") or {}).get("class_weights", "none")
    if had != config.class_weights:
        raise CheckpointError(f"{what} was trained with class weights {had!r}, not {config.class_weights!r}")
    check_same_reproducibility(existing, card, what)
    had_init, init = InitRecord.from_card(existing.model_config), InitRecord.from_card(card.model_config)
    if not had_init.same_start(init):
        raise CheckpointError(f"{what} started {had_init.describe()}, not {init.describe()}")
    state = load_train_state(config.out, STATE_KEYS)
    if state is None:
        raise CheckpointError(f"{what} has no train_state.pt to resume from")
    epoch = int(state["epoch"])
    if config.max_steps and int(state["step"]) >= config.max_steps:
        print(f"train-seg: {config.out} already made its {config.max_steps} steps; nothing to do")
        return None
    if epoch >= config.epochs:
        print(f"train-seg: {config.out} already finished {epoch} of {config.epochs} epochs; nothing to do "
              "(pass a larger --epochs to train on)")
        return None
    print(f"train-seg: resuming {config.out} at epoch {epoch + 1}/{config.epochs} (step {state['step']})")
    return epoch


def train_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ignore_index: int,
    device: torch.device,
    class_weight: torch.Tensor | None = None,
) -> float:
    """One optimisation step on a batch; returns the loss (FloatingPointError when it is not finite)."""
    with autocast(device):
        out = model(images)
        loss = F.cross_entropy(out["out"].float(), masks, weight=class_weight, ignore_index=ignore_index)
        if "aux" in out:
            loss = loss + 0.5 * F.cross_entropy(out["aux"].float(), masks, weight=class_weight,
                                                ignore_index=ignore_index)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return value


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """torchvision's poly decay, stepped per batch: lr · (1 - step / total_steps) ** 0.9 (0 after the end)."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: max(0.0, 1 - x / total) ** 0.9)


def make_optimizer(params, name: str, lr: float | None, weight_decay: float) -> torch.optim.Optimizer:
    lr = lr or DEFAULT_LR[name]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker loop (runs inside Ray Train)."""
    cfg = SegTrainConfig(**loop_config["config"])
    card = ModelCard.from_dict(loop_config["card"])
    rank, world = dist_utils.world_rank(), dist_utils.world_size()
    seeding.configure_determinism(cfg.deterministic)
    device = dist_utils.train_device()
    on_gpu = device.type == "cuda"
    seeding.seed_model_init(cfg.seed)

    model = build_segmenter(cfg.model, len(card.classes), cfg.aux_loss)
    if loop_config.get("init"):
        load_init(model, loop_config["init"]["target"], loop_config["init"]["state"])
    start_epoch, step = loop_config["start_epoch"], 0
    state = None
    if start_epoch > 0:
        load_into(model, load_weights(cfg.out), cfg.out, cfg.model)
        state = load_train_state(cfg.out, STATE_KEYS)
        step = int(state["step"])
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    model = dist_utils.prepare_model(model)
    seeding.seed_worker(cfg.seed, rank, start_epoch)

    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer, cfg.lr,
                               cfg.weight_decay)
    total_steps = max(int(loop_config["steps_per_epoch"]), 1) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = poly_schedule(optimizer, total_steps)
    planned = epochs_planned(cfg.epochs, total_steps, int(loop_config["steps_per_epoch"]))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    mixer = BatchMixer(loop_config["streams"], cfg.batch, device, NORMALIZATION, rank=rank, world=world,
                       salt=start_epoch)
    weights = loop_config.get("class_weights")
    class_weight = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    val = open_dataset(cfg.val) if cfg.val else None
    size = (int(card.size[0]), int(card.size[1]))
    progress = dist_utils.Progress(total_steps, start_step=step, every_steps=cfg.log_every, prefix="[train-seg]")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, loss_sum, batches, images_seen = time.monotonic(), 0.0, 0, 0
        for images, masks in mixer.epoch(epoch):
            if on_gpu:
                images = images.contiguous(memory_format=torch.channels_last)
            try:
                loss = train_step(model, images, masks, optimizer, scheduler, card.ignore_index, device, class_weight)
            except FloatingPointError as exc:
                raise dist_utils.TrainingError(f"{exc} at step {step + 1} (epoch {epoch + 1}); try a lower --lr") from None
            step += 1
            batches += 1
            images_seen += len(images)
            loss_sum += loss
            if rank == 0:
                progress.update(step, len(images) * world, epoch=f"{epoch + 1}/{max(planned, epoch + 1)}",
                                loss=loss, lr=scheduler.get_last_lr()[0])
            if cfg.max_steps and step >= total_steps:
                break
        if batches == 0:
            raise dist_utils.TrainingError(f"worker {rank} got no full batch of {cfg.batch} in epoch {epoch + 1}")
        seconds = time.monotonic() - t0
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": dist_utils.all_mean(loss_sum / batches, device),
            "lr": scheduler.get_last_lr()[0],
            "images_per_s": dist_utils.all_mean(images_seen / max(seconds, 1e-9), device) * world,
            "epoch_s": round(seconds, 2),
        }
        val_metrics = None
        last = epoch + 1 == cfg.epochs or bool(cfg.max_steps and step >= total_steps)
        if val is not None and (last or (cfg.val_every and (epoch + 1) % cfg.val_every == 0)):
            cm = confusion_on(dist_utils.unwrap(model), val, size, cfg.batch, device, NORMALIZATION, rank, world)
            cm.reduce_from_all_processes()
            val_metrics = cm.to_dict(card.classes)
            record.update(val_miou=val_metrics["miou"], val_pixel_accuracy=val_metrics["pixel_accuracy"])
        capped = bool(cfg.max_steps) and step >= total_steps
        if rank == 0:
            of = epoch + 1 if capped else max(planned, epoch + 1)  # the last epoch reads N/N
            _save_epoch(cfg, card, model, optimizer, scheduler, record, val_metrics, of)
        dist_utils.barrier()
        if capped:
            break


def epochs_planned(epochs: int, total_steps: int, steps_per_epoch: int) -> int:
    """The epochs a run makes: `epochs`, or fewer when its step budget (max_steps, in `total_steps`) ends it first,
    as progress lines count them ("epoch 3/6"). With rows split unevenly over workers the budget may need one epoch
    more; the counter then follows the epoch it is in, and the epoch the budget ends reads N/N."""
    return max(1, min(epochs, math.ceil(total_steps / max(steps_per_epoch, 1))))


def _save_epoch(cfg, card, model, optimizer, scheduler, record: dict[str, Any], val_metrics: dict | None,
                of: int) -> None:
    append_metrics(cfg.out, record)
    card.step = record["step"]
    card.metrics = {k: v for k, v in record.items() if k not in ("lr", "images_per_s", "epoch_s")}
    if val_metrics is not None:
        card.metrics["val_iou"] = val_metrics["iou"]
    state = {
        "epoch": record["epoch"],
        "step": record["step"],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    save_checkpoint(cfg.out, dist_utils.unwrap(model).state_dict(), card, state)
    line = f"[train-seg] epoch {record['epoch']}/{of} done: loss {record['train_loss']:.4f}"
    if "val_miou" in record:
        miou = record["val_miou"]
        line += f", val mIoU {'-' if miou is None else f'{miou * 100:.2f}'}"
    dist_utils.say(line + f" ({record['epoch_s']:.1f}s); checkpoint in {cfg.out}")
