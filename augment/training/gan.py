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
generator (keys `generator.*`, what `augment.synthesis.generate.load_generator` reads), `train_state.pt` holds G,
D, the EMA, both optimizers, the step and every rank's RNG state for `--resume`.
"""

from __future__ import annotations

import argparse
import collections
import io
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw
from torch import nn

from augment.data import fs as afs
from augment.data.dataset import Dataset, decode_row, open_dataset
from augment.errors import AugmentError
from augment.models.gan import (
    WEIGHTS_PREFIX,
    GANConfig,
    build_discriminator,
    build_ema,
    build_generator,
    build_optimizers,
    gan_train_step,
    refresh_ema_batchnorm,
)
from augment.models.generator import sample_noise
from augment.models.losses import one_hot_labels
from augment.report.sheets import CAPTION_H, colorize, panel_size
from augment.training import distributed as dist_utils
from augment.training import seeding
from augment.training.checkpoint import (
    CheckpointError,
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
from augment.training.transforms import CoverCrop, apply_joint

GAN_KIND = "gan"
SAMPLES_DIR = "samples"
DEFAULT_SAMPLE_EVERY = 500
SHEET_GAP = 2
SHEET_COLUMNS = ("label", "EMA, noise 1", "EMA, noise 2")
STATE_KEYS = ("step", "generator", "discriminator", "ema", "opt_g", "opt_d")
"""What train_state.pt must hold for --resume."""


@dataclass
class GANTrainConfig:
    """Everything a train-gan run needs.

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
    size = config.size or common_size([ds])
    if info.num_rows < config.batch * config.workers:
        raise AugmentError(
            f"{ds.uri} has {info.num_rows} rows, too few for one batch of {config.batch} on each of "
            f"{config.workers} worker(s); lower --batch or --workers"
        )
    try:
        gan_cfg = GANConfig(
            num_classes=info.num_classes, size=size, ignore_index=info.ignore_index,
            use_l1=config.l1, use_feature_matching=config.feature_matching,
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

    loop_config = {
        "config": asdict(config),
        "card": asdict(card),
        "stream": training_stream(ds, CoverCrop(size, hflip=0.5), config.seed),
        "start_step": start,
        "sample_masks": _sample_masks(ds, size, config.sample_rows),
    }
    dist_utils.run_training(
        _train_loop, loop_config, config.workers, config.gpus_per_worker, None, config.out, address=config.address,
    )
    return load_card(config.out)


def _training_record(config: GANTrainConfig) -> dict[str, Any]:
    return {
        "steps": config.steps,
        "batch_per_worker": config.batch,
        "workers": config.workers,
        "seed": config.seed,
        "transform": "cover-resize, random crop, horizontal flip 0.5",
    }


def _start_step(config: GANTrainConfig, card: ModelCard, ds: Dataset) -> int | None:
    """The step to start from (0 for a new run), or None when a resumed run is already complete."""
    existing = existing_run(config.out, config.resume, GAN_KIND, "train-gan")
    if existing is None:
        return 0
    what = f"run {config.out}"
    check_compatible(existing, ds.info, what, tuple(card.size))
    if "ema_decay" not in config.model and "ema_decay" in existing.model_config:
        card.model_config["ema_decay"] = existing.model_config["ema_decay"]  # a longer --steps keeps the run's EMA
    changed = sorted(k for k, v in card.model_config.items() if existing.model_config.get(k) != v)
    if changed:
        detail = ", ".join(f"{k} {existing.model_config.get(k)!r} -> {card.model_config[k]!r}" for k in changed)
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
    crop = CoverCrop(size, random=False)
    wanted = set(spread_rows(ds.info.num_rows, rows))
    masks, index = [], 0
    for batch in ds.iter_batches(["id", "image", "mask"], batch_size=64):
        for row in batch.to_pylist():
            if index in wanted:
                sample = decode_row(row, source=ds.uri)
                masks.append(apply_joint(crop, sample["image"], sample["mask"])[1].numpy())
            index += 1
        if len(masks) == len(wanted):
            break
    return np.stack(masks)


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
    recent_masks: collections.deque[torch.Tensor] = collections.deque(maxlen=cfg.bn_refresh_batches)
    progress = dist_utils.Progress(cfg.steps, start_step=step, every_steps=cfg.log_every, prefix="[train-gan]")
    sums: dict[str, float] = collections.defaultdict(float)
    window_steps, window_images, window_start = 0, 0, time.monotonic()
    metrics: dict[str, Any] = {}

    while step < cfg.steps:
        batches = 0
        for real, masks in mixer.epoch(epoch):
            if on_gpu:
                real = real.contiguous(memory_format=torch.channels_last)
            losses = gan_train_step(G, D, G_ema, opt_g, opt_d, real, masks, gan_cfg, rng, autocast_dtype)
            if not all(math.isfinite(v) for v in losses.values()):
                raise dist_utils.TrainingError(f"GAN losses became non-finite at step {step + 1}: {losses}")
            step += 1
            batches += 1
            if rank == 0:
                recent_masks.append(masks)
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
                    _refresh_ema(G_ema, recent_masks, gan_cfg, cfg.seed + step)
                    if sample_now:
                        write_sample_sheet(cfg.out, step, G_ema.module, sheet_masks, gan_cfg, card.palette, cfg.seed)
                    if save_now:
                        _save(cfg, card, G, D, G_ema, opt_g, opt_d, step, metrics, rng_states)
                dist_utils.barrier()
            if last:
                break
        if batches == 0:
            raise dist_utils.TrainingError(f"worker {rank} got no full batch of {cfg.batch} from its data shard")
        epoch += 1


@torch.no_grad()
def _refresh_ema(G_ema: nn.Module, masks: Sequence[torch.Tensor], gan_cfg: GANConfig, seed: int) -> None:
    """Re-estimate the EMA's BatchNorm statistics on recent label maps with fresh noise (fp32)."""
    rng = torch.Generator().manual_seed(seed)
    device = next(G_ema.parameters()).device
    pairs = []
    for m in masks:
        label = one_hot_labels(m.to(device), gan_cfg.num_classes, gan_cfg.ignore_index)
        pairs.append((label, sample_noise(len(m), gan_cfg.z_dim, tuple(m.shape[-2:]), rng, device)))
    if pairs:
        refresh_ema_batchnorm(G_ema, pairs)


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
    print(f"[train-gan] step {step}/{cfg.steps}: checkpoint in {cfg.out}", flush=True)


def ema_weights(G_ema: nn.Module) -> dict[str, torch.Tensor]:
    """The inference weights of a run: the EMA generator's state dict under `generator.`."""
    module = G_ema.module if hasattr(G_ema, "module") else G_ema
    return {WEIGHTS_PREFIX + k: v for k, v in module.state_dict().items()}


@torch.no_grad()
def generate_sheet_images(
    generator: nn.Module, masks: torch.Tensor, gan_cfg: GANConfig, seed: int, draws: int = 2
) -> list[torch.Tensor]:
    """`draws` uint8 image batches B x 3 x H x W of `generator` (in eval mode) for `masks`, fixed noise per draw."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    label = one_hot_labels(masks.to(device), gan_cfg.num_classes, gan_cfg.ignore_index)
    out = []
    for d in range(draws):
        rng = torch.Generator().manual_seed(seed + d)
        z = sample_noise(len(masks), gan_cfg.z_dim, tuple(masks.shape[-2:]), rng, device)
        images = generator(label, z).float()
        out.append(((images + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu())
    generator.train(was_training)
    return out


def render_sample_sheet(
    masks: np.ndarray, columns: Sequence[np.ndarray], palette: Sequence[Sequence[int]],
    titles: Sequence[str] = SHEET_COLUMNS,
) -> np.ndarray:
    """H x W x 3 sheet: a header of `titles`, then per label map a row `label | column 1 | column 2 ...`.

    `masks` B x h x w, each column B x h x w x 3 uint8. Panels are scaled up (nearest) as in augment.report.sheets:
    with n = 1 + len(columns) panels of ph x pw, width = n * pw + (n + 1) * SHEET_GAP and
    height = CAPTION_H + B * ph + (B + 1) * SHEET_GAP.
    """
    b, h, w = masks.shape
    ph, pw = panel_size(h, w)
    n = 1 + len(columns)
    sheet = Image.new("RGB", (n * pw + (n + 1) * SHEET_GAP, CAPTION_H + b * ph + (b + 1) * SHEET_GAP), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(titles[:n]):
        draw.text((SHEET_GAP + i * (pw + SHEET_GAP) + 2, 1), title, fill=(0, 0, 0))
    for r in range(b):
        panels = [colorize(masks[r], palette)] + [np.ascontiguousarray(c[r], dtype=np.uint8) for c in columns]
        top = CAPTION_H + SHEET_GAP + r * (ph + SHEET_GAP)
        for i, panel in enumerate(panels):
            tile = Image.fromarray(panel, "RGB").resize((pw, ph), Image.NEAREST)
            sheet.paste(tile, (SHEET_GAP + i * (pw + SHEET_GAP), top))
    return np.asarray(sheet)


def save_png(path: str, image: np.ndarray) -> None:
    """Write an H x W x 3 uint8 array as a PNG to a local path or URI, atomically."""
    filesystem, target = afs.resolve(path)
    _write_png(filesystem, target, image)


def _write_png(filesystem: Any, target: str, image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    parent = target.rsplit("/", 1)[0]
    if parent:
        filesystem.create_dir(parent, recursive=True)
    afs.write_bytes_atomic(filesystem, target, buf.getvalue())


def write_sample_sheet(
    run: str, step: int, generator: nn.Module, masks: torch.Tensor, gan_cfg: GANConfig,
    palette: Sequence[Sequence[int]], seed: int,
) -> str:
    """Write `<run>/samples/step-NNNNNN.png` (label | EMA noise 1 | EMA noise 2 per row); returns its path."""
    draws = generate_sheet_images(generator, masks, gan_cfg, seed)
    sheet = render_sample_sheet(masks.numpy(), [d.permute(0, 2, 3, 1).numpy() for d in draws], palette)
    filesystem, root = afs.resolve(run)
    target = afs.join(root, SAMPLES_DIR, f"step-{step:06d}.png")
    _write_png(filesystem, target, sheet)
    return target


def train_gan_command(args: argparse.Namespace) -> int:
    config = GANTrainConfig(
        data=args.data,
        out=args.out,
        size=args.size,
        steps=args.steps,
        batch=args.batch,
        l1=args.l1,
        feature_matching=args.feature_matching,
        sample_every=args.sample_every,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        resume=args.resume,
        address=args.address,
        seed=args.seed,
        deterministic=args.deterministic,
        model={"ema_decay": args.ema_decay} if args.ema_decay is not None else {},
    )
    card = train_gan(config)
    losses = ", ".join(f"{k} {card.metrics[k]:.4f}" for k in ("d_total", "g_total") if k in card.metrics)
    print(f"train-gan: {config.out}: step {card.step}/{config.steps}" + (f" ({losses})" if losses else ""))
    return 0
