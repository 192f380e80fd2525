"""Training the OASIS GAN on Ray Train (`augment train-gan`).

A plain step loop, like torchvision's references/segmentation/train.py: every worker streams its share of the
dataset (images in [-1, 1], random flip and a resize/crop to the training size, no colour change), runs
`gan_train_step` with a CPU torch.Generator seeded per rank, and G and D are wrapped in DDP. Data order, crops and
flips, initialisation and noise all derive from `seed` (augment.training.seeding): the same seed and worker count
on the same machine and software give the same weights. The EMA generator
lives on rank 0, which updates it from the DDP-synchronised generator every step. bf16 autocast and channels_last
on GPU, fp32 on CPU.

Every `sample_every` steps and at the end rank 0 refreshes the EMA's BatchNorm statistics on a few recent label
maps, writes a sample sheet `samples/step-NNNNNN.png` and a checkpoint: `model.safetensors` holds only the EMA
generator (keys `generator.*`, what `augment.models.store.load_generator` reads), `train_state.pt` holds G,
D, the EMA, both optimizers, the step and every rank's RNG state for `--resume`.

Crop mode (`crop`, `--crop SIZE`): the stream yields `augment.training.crops.ObjectCrop` crops (native
resolution, around objects, rare classes more often) with their holes; the generator (GANConfig.context) paints
the hole in context and the discriminator judges the composite (augment.models.gan.gan_train_step's `hole`). The
card records the crop size and hole dilation; sample sheets show label | blanked | painted. With `guide`
(`--guide`), the generator also reads an appearance guide (augment.models.context): the crop's object recoloured at
random in training, so it learns to repaint a given object to fit its surroundings (at synthesis the guide is the
source object's pixels); the sample sheets give it the object unchanged.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from augment.data import fs as afs
from augment.data.dataset import Dataset, decode_row, open_dataset
from augment.core.errors import AugmentError
from augment.models.context import context_input
from augment.models.gan import (
    GAN_KIND,
    GANConfig,
    GANConfigError,
    build_discriminator,
    build_ema,
    build_generator,
    build_optimizers,
    gan_train_step,
    refresh_ema_batchnorm,
)
from augment.models.generator import sample_noise
from augment.models.losses import one_hot_labels
from augment.data.drawing import SAMPLE_SHEET_COLUMNS, render_sample_sheet, write_png
from augment.training import distributed as dist_utils
from augment.training import crops, seeding
from augment.models.store import (
    CheckpointError,
    WEIGHTS_PREFIX,
    ModelCard,
    append_metrics,
    check_compatible,
    check_same_reproducibility,
    existing_run,
    load_card,
    load_into,
    load_train_state,
    save_checkpoint,
)
from augment.training.data import BatchMixer, common_size, training_stream
from augment.training.transforms import CoverCrop, apply_joint, normalize

SAMPLES_DIR = "samples"
DEFAULT_SAMPLE_EVERY = 500
CROP_SHEET_COLUMNS = ("label", "blanked", "painted")
STATE_KEYS = ("step", "generator", "discriminator", "ema", "opt_g", "opt_d")
"""What train_state.pt must hold for --resume."""


@dataclass
class GANTrainConfig:
    """Everything a train-gan run needs.

    `crop` (a square size) trains in crop mode (module docstring) with holes dilated by `hole_dilation` pixels;
    `guide` adds the appearance guide (crop mode only).
    `sample_every` (default min(500, steps)) paces the sample sheets, `checkpoint_every` (default: `sample_every`)
    the checkpoints; both also happen at the last step. `model` overrides GANConfig fields (widths, z_dim,
    learning rates, ...). `bn_refresh_batches` recent label-map batches re-estimate the EMA's BatchNorm statistics
    before each sample sheet and checkpoint.
    """

    data: str
    out: str
    size: tuple[int, int] | None = None
    steps: int = 2000
    batch: int = 8
    l1: bool = False
    feature_matching: bool = False
    crop: int | None = None
    hole_dilation: int = crops.DEFAULT_DILATION
    guide: bool = False
    sample_every: int | None = None
    checkpoint_every: int | None = None
    log_every: int = 50
    sample_rows: int = 4
    bn_refresh_batches: int = 4
    model: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    gpus_per_worker: float | None = None
    resume: bool = False
    seed: int = 0
    deterministic: bool = False
    """Also make torch use deterministic algorithms (augment.training.seeding.configure_determinism)."""
    address: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every", "sample_rows", "bn_refresh_batches", "workers"):
            if int(getattr(self, name)) < 1:
                raise AugmentError(f"GAN training: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("sample_every", "checkpoint_every"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise AugmentError(f"GAN training: {name} must be >= 1, got {getattr(self, name)}")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
        if self.guide and self.crop is None:
            raise AugmentError("GAN training: --guide is a crop-mode option; add --crop SIZE")
        if self.crop is not None:
            if self.size is not None:
                raise AugmentError("GAN training: --crop takes crops at the data's own resolution; drop --size")
            if not crops.MIN_CROP <= int(self.crop) <= crops.MAX_CROP:
                raise AugmentError(f"GAN training: --crop must be in {crops.MIN_CROP}..{crops.MAX_CROP}, "
                                   f"got {self.crop}")
        if int(self.hole_dilation) < 0:
            raise AugmentError(f"GAN training: hole_dilation must be >= 0, got {self.hole_dilation}")

    @property
    def sample_interval(self) -> int:
        return int(self.sample_every or min(DEFAULT_SAMPLE_EVERY, self.steps))

    @property
    def checkpoint_interval(self) -> int:
        return int(self.checkpoint_every or self.sample_interval)


def default_ema_decay(steps: int) -> float:
    """EMA decay for a run of `steps` steps: 0.999 (OASIS) for long runs, less for short ones.

    The EMA keeps decay**steps of its random start; 1 - 10/steps leaves about e**-10 of it at the end.
    """
    return min(0.999, max(0.9, 1.0 - 10.0 / steps))


def train_gan(config: GANTrainConfig) -> ModelCard:
    """Train (or, with `resume`, continue) the GAN into the run folder `config.out`; returns its card."""
    ds = open_dataset(config.data)
    info = ds.info
    if info.num_rows == 0:
        raise AugmentError(f"{ds.uri}: dataset has no rows")
    size = (config.crop, config.crop) if config.crop else config.size or common_size([ds])
    if config.crop:
        _check_crop_fits(ds, config.crop)
    if info.num_rows < config.batch * config.workers:
        raise AugmentError(
            f"{ds.uri} has {info.num_rows} rows, too few for one batch of {config.batch} on each of "
            f"{config.workers} worker(s); lower --batch or --workers"
        )
    try:
        gan_cfg = GANConfig(
            num_classes=info.num_classes, size=size, ignore_index=info.ignore_index,
            use_l1=config.l1, use_feature_matching=config.feature_matching, context=config.crop is not None,
            guide=config.guide,
            **{"ema_decay": default_ema_decay(config.steps), **config.model},
        )
    except (TypeError, ValueError) as exc:
        raise AugmentError(f"GAN model settings: {exc}") from None
    card = ModelCard(
        kind=GAN_KIND,
        classes=list(info.classes),
        palette=[list(c) for c in info.palette],
        ignore_index=info.ignore_index,
        size=list(size),
        model_config=gan_cfg.to_dict(),
        metrics={"training": _training_record(config)},
        dataset={"train": [{"uri": ds.uri, "num_rows": info.num_rows, "kind": info.kind, "lineage": info.lineage}]},
        reproducibility=seeding.reproducibility_record(config.seed, config.deterministic),
    )
    start = _start_step(config, card, ds)
    if start is None:
        return load_card(config.out)

    if config.crop:
        transform = _crop_transform(config, ds)
        sample_images, sample_masks = _sample_inputs(ds, transform, config.sample_rows, config.seed)
    else:
        transform = CoverCrop(size, hflip=0.5)
        sample_images, sample_masks = None, _sample_masks(ds, size, config.sample_rows)
    loop_config = {
        "config": asdict(config),
        "card": asdict(card),
        "stream": training_stream(ds, transform, config.seed),
        "start_step": start,
        "sample_masks": sample_masks,
        "sample_images": sample_images,
    }
    dist_utils.run_training(
        _train_loop, loop_config, config.workers, config.gpus_per_worker, None, config.out, address=config.address,
    )
    return load_card(config.out)


def _training_record(config: GANTrainConfig) -> dict[str, Any]:
    record = {
        "steps": config.steps,
        "batch_per_worker": config.batch,
        "workers": config.workers,
        "seed": config.seed,
        "transform": "cover-resize, random crop, horizontal flip 0.5",
    }
    if config.crop:
        record.update(mode="crop", crop=config.crop, hole_dilation=config.hole_dilation, guide=config.guide,
                      transform="object crops at native resolution, rare classes more often, horizontal flip 0.5")
    return record


def _check_crop_fits(ds: Dataset, crop: int) -> None:
    """Refuse a crop larger than the dataset's smallest image side."""
    short = min((min(s["height"], s["width"]) for s in ds.info.sizes), default=0)
    if short < crop:
        raise AugmentError(f"{ds.uri}: --crop {crop} does not fit its images (smallest side {short} px)")


def _crop_transform(config: GANTrainConfig, ds: Dataset) -> crops.ObjectCrop:
    """The crop-mode transform, its class weights from the dataset's pixel counts."""
    if sum(ds.info.class_pixels) <= 0:
        raise AugmentError(f"{ds.uri}: dataset.json counts no labelled pixels; crop mode needs objects")
    return crops.ObjectCrop(config.crop, crops.rarity_weights(ds.info.class_pixels), dilation=config.hole_dilation,
                            ignore_index=ds.info.ignore_index)


def _filled(model_config: dict[str, Any], what: str) -> dict[str, Any]:
    """A card's model_config with the GANConfig fields it predates at their defaults (as `from_dict` reads it)."""
    try:
        return GANConfig.from_dict(model_config, f"{what} model_config").to_dict()
    except GANConfigError as exc:
        raise CheckpointError(str(exc)) from None


def _start_step(config: GANTrainConfig, card: ModelCard, ds: Dataset) -> int | None:
    """The step to start from (0 for a new run), or None when a resumed run is already complete."""
    existing = existing_run(config.out, config.resume, GAN_KIND, "train-gan")
    if existing is None:
        return 0
    what = f"run {config.out}"
    check_compatible(existing, ds.info, what, tuple(card.size))
    if "ema_decay" not in config.model and "ema_decay" in existing.model_config:
        card.model_config["ema_decay"] = existing.model_config["ema_decay"]  # a longer --steps keeps the run's EMA
    before = _filled(existing.model_config, what)  # a card from before a field existed ran with its default
    changed = sorted(k for k, v in card.model_config.items() if before.get(k) != v)
    if changed:
        detail = ", ".join(f"{k} {before.get(k)!r} -> {card.model_config[k]!r}" for k in changed)
        raise CheckpointError(f"{what} was trained with other GAN settings ({detail}); resume with the same ones")
    check_same_reproducibility(existing, card, what)
    state = load_train_state(config.out, STATE_KEYS)
    if state is None:
        raise CheckpointError(f"{what} has no train_state.pt to resume from")
    step = int(state["step"])
    if step >= config.steps:
        print(f"train-gan: {config.out} already finished {step} of {config.steps} steps; nothing to do "
              "(pass a larger --steps to train on)")
        return None
    print(f"train-gan: resuming {config.out} at step {step}/{config.steps}")
    return step


def spread_rows(num_rows: int, count: int) -> list[int]:
    """`count` row positions spread evenly over `num_rows` rows (video datasets: frames of different scenes)."""
    count = min(count, num_rows)
    return sorted({round(i * (num_rows - 1) / max(count - 1, 1)) for i in range(count)})


def _sample_masks(ds: Dataset, size: tuple[int, int], rows: int) -> np.ndarray:
    """`rows` label maps spread over the dataset, centre-cropped to `size`: the fixed sample-sheet inputs."""
    return _sample_inputs(ds, CoverCrop(size, random=False), rows, 0)[1]


def _sample_inputs(ds: Dataset, transform: Any, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of `rows` samples spread over the dataset through `transform`, each drawing from a
    generator seeded from `seed` and its id: the fixed sample-sheet inputs."""
    wanted = set(spread_rows(ds.info.num_rows, rows))
    images, masks, index = [], [], 0
    for batch in ds.iter_batches(["id", "image", "mask"], batch_size=64):
        for row in batch.to_pylist():
            if index in wanted:
                sample = decode_row(row, source=ds.uri)
                with seeding.seeded_rng(seeding.derive_seed(seed, "sheet", row["id"])):
                    image, mask = apply_joint(transform, sample["image"], sample["mask"])
                images.append(image.numpy())
                masks.append(mask.numpy())
            index += 1
        if len(masks) == len(wanted):
            break
    return np.stack(images), np.stack(masks)


def _crop_context(images: torch.Tensor, guided: bool) -> torch.Tensor:
    """The context (augment.models.context) of a batch of normalised `ObjectCrop` images, as the sample sheets and
    the EMA's BatchNorm refresh feed it: with a guide, the object's own pixels unchanged (as at synthesis)."""
    real, hole = crops.split_hole(images)
    return context_input(real, hole, real * crops.object_of(images) if guided else None)


def _rank_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one rank's noise and LabelMix draws, seeded from (seed, rank, start step)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def _gather_rng(rng: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """Every rank's RNG state, in rank order (a collective under DDP)."""
    state = rng.get_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    local = state.to(device)
    states = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(states, local)
    return [s.cpu() for s in states]


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker loop (runs inside Ray Train)."""
    cfg = GANTrainConfig(**loop_config["config"])
    card = ModelCard.from_dict(loop_config["card"])
    gan_cfg = GANConfig.from_dict(card.model_config)
    rank, world = dist_utils.world_rank(), dist_utils.world_size()
    seeding.configure_determinism(cfg.deterministic)
    device = dist_utils.train_device()
    on_gpu = device.type == "cuda"
    autocast_dtype = torch.bfloat16 if on_gpu else None
    seeding.seed_model_init(cfg.seed)

    G, D = build_generator(gan_cfg), build_discriminator(gan_cfg)
    step = int(loop_config["start_step"])
    state = load_train_state(cfg.out, STATE_KEYS) if step > 0 else None
    if state is not None:
        load_into(G, state["generator"], f"{cfg.out} train_state.pt", "the generator")
        load_into(D, state["discriminator"], f"{cfg.out} train_state.pt", "the discriminator")
    G_ema = None
    if rank == 0:
        G_ema = build_ema(G, gan_cfg.ema_decay)
        if state is not None:
            load_into(G_ema, state["ema"], f"{cfg.out} train_state.pt", "the EMA generator")
        G_ema.to(device)
    if on_gpu:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        if G_ema is not None:
            G_ema.to(memory_format=torch.channels_last)
    G, D = dist_utils.prepare_model(G), dist_utils.prepare_model(D)
    seeding.seed_worker(cfg.seed, rank, step)
    opt_g, opt_d = build_optimizers(gan_cfg, G, D)
    rng = _rank_generator(cfg.seed, rank, step)
    if state is not None:
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        saved = state.get("rng") or []
        if len(saved) == world:
            rng.set_state(saved[rank])
    del state

    stream = loop_config["stream"]
    mixer = BatchMixer([(stream, 1.0)], cfg.batch, device, "tanh", rank=rank, world=world)
    epoch_steps = max((stream.rows // world) // cfg.batch, 1)
    epoch = step // epoch_steps  # every pass is epoch_steps steps; a resumed run restarts its epoch's order
    sheet_masks = torch.tensor(loop_config["sample_masks"], dtype=torch.long)
    sheet_context = None
    if gan_cfg.context:
        sheet_context = _crop_context(normalize(torch.from_numpy(loop_config["sample_images"]), "tanh"),
                                      gan_cfg.guide)
    recent: collections.deque[tuple[torch.Tensor, ...]] = collections.deque(maxlen=cfg.bn_refresh_batches)
    progress = dist_utils.Progress(cfg.steps, start_step=step, every_steps=cfg.log_every, prefix="[train-gan]")
    sums: dict[str, float] = collections.defaultdict(float)
    window_steps, window_images, window_start = 0, 0, time.monotonic()
    metrics: dict[str, Any] = {}

    while step < cfg.steps:
        batches = 0
        for real, masks in mixer.epoch(epoch):
            hole = obj = context = None
            if gan_cfg.context:
                context = _crop_context(real, gan_cfg.guide)
                obj = crops.object_of(real) if gan_cfg.guide else None
                real, hole = crops.split_hole(real)
            if on_gpu:
                real = real.contiguous(memory_format=torch.channels_last)
            losses = gan_train_step(G, D, G_ema, opt_g, opt_d, real, masks, gan_cfg, rng, autocast_dtype, hole,
                                    obj)
            if not all(math.isfinite(v) for v in losses.values()):
                raise dist_utils.TrainingError(f"GAN losses became non-finite at step {step + 1}: {losses}")
            step += 1
            batches += 1
            if rank == 0:
                recent.append((masks,) if context is None else (masks, context))
            for k, v in losses.items():
                sums[k] += v
            window_steps += 1
            window_images += len(real) * world
            if rank == 0:
                progress.update(step, len(real) * world, d=losses["d_total"], g=losses["g_total"])

            last = step >= cfg.steps
            if step % cfg.log_every == 0 or last:
                seconds = time.monotonic() - window_start
                metrics = {k: dist_utils.all_mean(v / window_steps, device) for k, v in sums.items()}
                metrics["images_per_s"] = window_images / max(seconds, 1e-9)
                if rank == 0:
                    append_metrics(cfg.out, {"step": step, **metrics, "time": time.time()})
                sums.clear()
                window_steps, window_images, window_start = 0, 0, time.monotonic()
            sample_now = step % cfg.sample_interval == 0 or last
            save_now = step % cfg.checkpoint_interval == 0 or last
            if sample_now or save_now:
                rng_states = _gather_rng(rng, device) if save_now else []
                if rank == 0:
                    _refresh_ema(G_ema, recent, gan_cfg, cfg.seed + step)
                    if sample_now:
                        write_sample_sheet(cfg.out, step, G_ema.module, sheet_masks, gan_cfg, card.palette, cfg.seed,
                                           sheet_context)
                    if save_now:
                        _save(cfg, card, G, D, G_ema, opt_g, opt_d, step, metrics, rng_states)
                dist_utils.barrier()
            if last:
                break
        if batches == 0:
            raise dist_utils.TrainingError(f"worker {rank} got no full batch of {cfg.batch} from its data shard")
        epoch += 1


@torch.no_grad()
def _refresh_ema(G_ema: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]], gan_cfg: GANConfig, seed: int) -> None:
    """Re-estimate the EMA's BatchNorm statistics on recent label maps (each batch `(masks,)`, or `(masks,
    context)` in crop mode) with fresh noise (fp32)."""
    rng = torch.Generator().manual_seed(seed)
    device = next(G_ema.parameters()).device
    inputs = []
    for m, *context in batches:
        label = one_hot_labels(m.to(device), gan_cfg.num_classes, gan_cfg.ignore_index)
        z = sample_noise(len(m), gan_cfg.z_dim, tuple(m.shape[-2:]), rng, device)
        inputs.append((label, z, *(c.to(device).float() for c in context)))
    if inputs:
        refresh_ema_batchnorm(G_ema, inputs)


def _save(cfg: GANTrainConfig, card: ModelCard, G, D, G_ema, opt_g, opt_d, step: int, metrics: dict[str, Any],
          rng_states: list[torch.Tensor]) -> None:
    card.step = step
    card.metrics = {**card.metrics, "step": step, **metrics}
    weights = ema_weights(G_ema)
    state = {
        "step": step,
        "generator": dist_utils.unwrap(G).state_dict(),
        "discriminator": dist_utils.unwrap(D).state_dict(),
        "ema": G_ema.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "rng": rng_states,
        "torch_rng": torch.get_rng_state(),
    }
    save_checkpoint(cfg.out, weights, card, state)
    dist_utils.say(f"[train-gan] step {step}/{cfg.steps}: checkpoint in {cfg.out}")


def ema_weights(G_ema: nn.Module) -> dict[str, torch.Tensor]:
    """The inference weights of a run: the EMA generator's state dict under `generator.`."""
    module = G_ema.module if hasattr(G_ema, "module") else G_ema
    return {WEIGHTS_PREFIX + k: v for k, v in module.state_dict().items()}


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8 on the CPU."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()


@torch.no_grad()
def generate_sheet_images(
    generator: nn.Module, masks: torch.Tensor, gan_cfg: GANConfig, seed: int, draws: int = 2,
    context: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """`draws` uint8 image batches B x 3 x H x W of `generator` (in eval mode) for `masks` (and, in crop mode, its
    `context`), fixed noise per draw."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    label = one_hot_labels(masks.to(device), gan_cfg.num_classes, gan_cfg.ignore_index)
    extra = () if context is None else (context.to(device),)
    out = []
    for d in range(draws):
        rng = torch.Generator().manual_seed(seed + d)
        z = sample_noise(len(masks), gan_cfg.z_dim, tuple(masks.shape[-2:]), rng, device)
        out.append(_to_uint8(generator(label, z, *extra)))
    generator.train(was_training)
    return out


def write_sample_sheet(
    run: str, step: int, generator: nn.Module, masks: torch.Tensor, gan_cfg: GANConfig,
    palette: Sequence[Sequence[int]], seed: int, context: torch.Tensor | None = None,
) -> str:
    """Write `<run>/samples/step-NNNNNN.png` (label | EMA noise 1 | EMA noise 2 per row; in crop mode, with
    `context`, label | blanked crop | painted); returns its path."""
    if context is None:
        draws, titles = generate_sheet_images(generator, masks, gan_cfg, seed), SAMPLE_SHEET_COLUMNS
    else:
        draws = [_to_uint8(context[:, :3]), *generate_sheet_images(generator, masks, gan_cfg, seed, 1, context)]
        titles = CROP_SHEET_COLUMNS
    sheet = render_sample_sheet(masks.numpy(), [d.permute(0, 2, 3, 1).numpy() for d in draws], palette, titles)
    filesystem, root = afs.resolve(run)
    target = afs.join(root, SAMPLES_DIR, f"step-{step:06d}.png")
    write_png(filesystem, target, sheet)
    return target
