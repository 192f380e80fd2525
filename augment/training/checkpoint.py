"""Checkpoints: inference weights (safetensors) plus a JSON model card, and the training state for --resume.

A run folder holds:
    card.json           the model card (ModelCard)
    model.safetensors   inference weights; card.json records their sha256
    train_state.pt      full training state (torch.save, loaded with weights_only=True) for --resume
    metrics.jsonl       one JSON line per logged step
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from augment import __version__
from augment.data import fs as afs
from augment.data.dataset import DatasetInfo
from augment.errors import AugmentError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


class CheckpointError(AugmentError):
    """A checkpoint is missing, corrupt, or does not fit the data it is used with."""


@dataclass
class ModelCard:
    """What a checkpoint is: enough to rebuild the model and to refuse data it does not fit."""

    kind: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    size: list[int]
    model_config: dict[str, Any]
    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    reproducibility: dict[str, Any] = field(default_factory=dict)
    """{seed, deterministic, torch, ray}: the run's --seed and --deterministic and the versions a rerun must match
    to give the same weights (`augment.training.seeding.reproducibility_record`)."""
    augment_version: str = __version__
    created_at: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def save_checkpoint(
    run: str,
    weights: dict[str, torch.Tensor],
    card: ModelCard,
    train_state: dict[str, Any] | None = None,
) -> ModelCard:
    """Write weights, card (with the weights' sha256) and optional training state, each atomically.

    The card is written last, so a card on disk always describes complete weights.
    """
    filesystem, path = afs.resolve(run)
    filesystem.create_dir(path, recursive=True)
    blob = st_save({k: v.detach().contiguous().cpu() for k, v in weights.items()})
    card.weights_sha256 = hashlib.sha256(blob).hexdigest()
    card.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    afs.write_bytes_atomic(filesystem, afs.join(path, WEIGHTS_FILE), blob)
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        afs.write_bytes_atomic(filesystem, afs.join(path, STATE_FILE), buf.getvalue())
    afs.write_bytes_atomic(filesystem, afs.join(path, CARD_FILE), json.dumps(asdict(card), indent=2).encode())
    return card


def load_card(run: str) -> ModelCard:
    filesystem, path = afs.resolve(run)
    card_path = afs.join(path, CARD_FILE)
    if not afs.exists(filesystem, card_path):
        raise CheckpointError(f"{run}: no {CARD_FILE}; is this a train-gan / train-seg run folder?")
    try:
        return ModelCard.from_dict(json.loads(afs.read_bytes(filesystem, card_path)))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{card_path}: unreadable model card ({exc})") from None


def load_weights(run: str, card: ModelCard | None = None) -> dict[str, torch.Tensor]:
    """The inference weights, verified against the card's sha256."""
    filesystem, path = afs.resolve(run)
    card = card or load_card(run)
    weights_path = afs.join(path, WEIGHTS_FILE)
    if not afs.exists(filesystem, weights_path):
        raise CheckpointError(f"{run}: card.json present but {WEIGHTS_FILE} is missing")
    blob = afs.read_bytes(filesystem, weights_path)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card.weights_sha256:
        raise CheckpointError(f"{weights_path}: sha256 {digest[:12]} does not match card ({card.weights_sha256[:12]})")
    return st_load(blob)


def load_train_state(run: str) -> dict[str, Any] | None:
    """The training state for --resume, or None when the run has none yet."""
    filesystem, path = afs.resolve(run)
    state_path = afs.join(path, STATE_FILE)
    if not afs.exists(filesystem, state_path):
        return None
    return torch.load(io.BytesIO(afs.read_bytes(filesystem, state_path)), map_location="cpu", weights_only=True)


def check_compatible(card: ModelCard, info: DatasetInfo, what: str, size: tuple[int, int] | None = None) -> None:
    """Refuse a checkpoint whose classes (or resolution, when `size` is given) do not fit a dataset."""
    if card.classes != info.classes:
        raise CheckpointError(
            f"{what} was trained on classes {card.classes}, but the dataset has {info.classes}"
        )
    if card.ignore_index != info.ignore_index:
        raise CheckpointError(f"{what} uses ignore index {card.ignore_index}, the dataset {info.ignore_index}")
    if size is not None and tuple(card.size) != tuple(size):
        raise CheckpointError(
            f"{what} was trained at {card.size[0]}x{card.size[1]}, but {size[0]}x{size[1]} was asked for"
        )


def append_metrics(run: str, record: dict[str, Any]) -> None:
    """Append one JSON line to the run's metrics log, local or on an object store (which cannot append: the small
    log is rewritten whole, atomically, so a reader never sees half a line)."""
    filesystem, path = afs.resolve(run)
    filesystem.create_dir(path, recursive=True)
    target = afs.join(path, METRICS_FILE)
    line = (json.dumps(record) + "\n").encode()
    if isinstance(filesystem, pafs.LocalFileSystem):
        with open(target, "ab") as f:
            f.write(line)
        return
    old = afs.read_bytes(filesystem, target) if afs.exists(filesystem, target) else b""
    afs.write_bytes_atomic(filesystem, target, old + line)


def check_same_reproducibility(existing: ModelCard, card: ModelCard, what: str) -> None:
    """Refuse to resume a run with another --seed or --deterministic than it started with (cards from before
    these were recorded are not checked)."""
    had, want = existing.reproducibility, card.reproducibility
    if "seed" in had and had["seed"] != want.get("seed"):
        raise CheckpointError(f"{what} was trained with --seed {had['seed']}, not {want.get('seed')}; resume it with "
                              "the same --seed")
    if "deterministic" in had and bool(had["deterministic"]) != bool(want.get("deterministic")):
        how = "with" if had["deterministic"] else "without"
        raise CheckpointError(f"{what} was trained {how} --deterministic; resume it {how} --deterministic")


def existing_run(run: str, resume: bool, kind: str, command: str) -> ModelCard | None:
    """The card of the run already in `run` when resuming it, or None for a new run.

    Refuses to start over an existing run without `resume`, and a run of another kind.
    """
    try:
        existing = load_card(run)
    except CheckpointError:
        existing = None
    if existing is None:
        if resume:
            print(f"{command}: nothing to resume in {run}; starting a new run")
        return None
    if not resume:
        raise AugmentError(f"{run} already holds a training run; pass --resume to continue it or choose another --out")
    if existing.kind != kind:
        raise CheckpointError(f"run {run} is a {existing.kind!r} run, not a {kind!r} run")
    return existing

