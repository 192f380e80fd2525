"""Test helpers for augmentation jobs: a small example dataset, tiny untrained GAN and segmenter runs, job files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from augment.data import example
from augment.data.codec import class_pixels, encode_image, encode_mask
from augment.data.dataset import DatasetInfo, PartWriter, StagedOutput, make_row, read_info
from augment.models.gan import GANConfig, build_generator
from augment.models.segmenter import build_segmenter, segmenter_config
from augment.models.store import ModelCard, save_checkpoint

SEGMENTER = "lraspp_mobilenet_v3_large"


def make_example_dataset(path: Path | str, n: int = 12, size: tuple[int, int] = (32, 32), seed: int = 0) -> str:
    """The built-in street scenes (CamVid's 11 classes) as an augment dataset, written in-process (no Ray)."""
    uri = str(path)
    num_classes = len(example.CLASSES)
    with StagedOutput(uri) as staged:
        writer = PartWriter(staged.fs, staged.staging, "part-00000", "sample", num_classes)
        for sample_id, image, mask in example.generate(n, size, seed):
            pixels = class_pixels(mask, num_classes, example.IGNORE_INDEX, sample_id)
            writer.write(make_row(f"train/{sample_id}", encode_image(image), encode_mask(mask), size[0], size[1],
                                  "train", pixels))
        stats = writer.close()
        info = DatasetInfo(classes=list(example.CLASSES), palette=[list(c) for c in example.PALETTE],
                           ignore_index=example.IGNORE_INDEX, lineage={"source": "tests.job_helpers"})
        info.apply_stats(stats)
        staged.commit(info, stats.quarantine)
    return uri


def make_tiny_runs(
    tmp_path: Path, dataset: str, size: tuple[int, int] | None = None, classes: list[str] | None = None, seed: int = 0,
    context: bool = False, guide: bool = False,
) -> tuple[str, str]:
    """An untrained tiny GAN run (with `context`, a crop-mode one of crop `size`; with `guide` too, a guided one) and
    segmenter run fitting
    `dataset` (or the given size/classes, to make misfits).

    Returns (gan_run, seg_run) folders. Weights are seeded, so the same call gives the same checkpoints.
    """
    info = read_info(dataset)
    classes = list(classes or info.classes)
    size = tuple(size or info.image_size)
    torch.manual_seed(seed)
    gan_cfg = GANConfig(num_classes=len(classes), size=size, z_dim=8, g_width=8, spade_hidden=16, context=context,
                        guide=guide)
    generator = build_generator(gan_cfg).eval()
    for module in generator.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.xavier_normal_(module.weight, gain=1.0)  # OASIS's gain 0.02 draws flat grey at init
    common: dict[str, Any] = {"classes": classes, "palette": info.palette[: len(classes)] or [[0, 0, 0]] * len(classes),
                              "ignore_index": info.ignore_index, "size": list(size)}
    gan_run = str(tmp_path / "gan-run")
    save_checkpoint(gan_run, {f"generator.{k}": v for k, v in generator.state_dict().items()},
                    ModelCard(kind="gan", model_config=gan_cfg.to_dict(), **common))
    segmenter = build_segmenter(SEGMENTER, len(classes)).eval()
    seg_run = str(tmp_path / "seg-run")
    save_checkpoint(seg_run, segmenter.state_dict(),
                    ModelCard(kind="segmenter", model_config=segmenter_config(SEGMENTER, len(classes)), **common))
    return gan_run, seg_run


def make_job_env(root: Path, n: int) -> dict[str, Any]:
    """An example dataset of `n` 32x32 scenes under `root` and tiny runs fitting it: {root, data, gan, seg}."""
    data = make_example_dataset(root / "data", n=n, size=(32, 32))
    gan, seg = make_tiny_runs(root, data)
    return {"root": root, "data": data, "gan": gan, "seg": seg}


def write_job(path: Path, **fields: Any) -> Path:
    """Write a YAML job file with `fields` (None values left out); returns its path."""
    path.write_text(yaml.safe_dump({k: v for k, v in fields.items() if v is not None}, sort_keys=False))
    return path
