"""Checkpoints: inference weights (safetensors) plus a JSON model card, and the training state for --resume.

A run folder holds:
    card.json           the model card (ModelCard)
    model.safetensors   inference weights; card.json records their sha256
    train_state.pt      full training state (torch.save, loaded with weights_only=True) for --resume
    metrics.jsonl       one JSON line per logged step

Loading a model from its run folder (`load_generator`, `load_segmenter`) is the store's too. A train-gan run as
`load_generator` reads it:
    card.json          kind "gan", model_config = GANConfig.to_dict()
    model.safetensors  the EMA generator's state dict with keys prefixed "generator." (a further "module." prefix,
                       as torch.optim.swa_utils.AveragedModel adds, and its "n_averaged" counter are accepted and
                       dropped); any other prefix (e.g. "discriminator.") is ignored.

Every reader raises CheckpointError, one line naming the file and the problem, for a missing, empty, truncated,
malformed or tampered card, weights file or training state.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any, Sequence

import pyarrow.fs as pafs
import torch
from torch import nn
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from augment import __version__
from augment.data import fs as afs
from augment.data.dataset import DatasetInfo
from augment.core.errors import AugmentError, CheckpointError, error_lines, first_line
from augment.models.gan import GAN_KIND, GANConfig, build_generator
from augment.models.segmenter import SEGMENTER_KIND, build_segmenter

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_PREFIX = "generator."
"""Key prefix of the EMA generator's weights in a train-gan run's model.safetensors."""


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
    def from_dict(cls, data: Any, source: str = CARD_FILE) -> "ModelCard":
        """The card in `data` (parsed card.json; unknown keys are ignored). CheckpointError naming `source` and the
        key when it is not a mapping, lacks a required key or holds a value of the wrong type."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: a model card must be a JSON object, got {type(data).__name__}")
        fields = cls.__dataclass_fields__
        missing = [k for k, f in fields.items() if f.default is MISSING and f.default_factory is MISSING
                   and k not in data]
        if missing:
            raise CheckpointError(f"{source}: model card lacks key(s) {', '.join(missing)}")
        for key, kind in _CARD_TYPES.items():
            if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
                raise CheckpointError(f"{source}: model card key {key!r} must be {kind.__name__}, got "
                                      f"{type(data[key]).__name__}")
        size = data["size"]
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise CheckpointError(f"{source}: model card size must be [height, width], got {size!r}")
        if not all(isinstance(c, str) for c in data["classes"]):
            raise CheckpointError(f"{source}: model card classes must be names (strings)")
        return cls(**{k: v for k, v in data.items() if k in fields})


_CARD_TYPES: dict[str, type] = {
    "kind": str, "classes": list, "palette": list, "ignore_index": int, "size": list, "model_config": dict,
    "step": int, "metrics": dict, "dataset": dict, "weights_sha256": str,
}


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
        data = json.loads(afs.read_bytes(filesystem, card_path))
    except ValueError as exc:  # JSONDecodeError (empty, truncated) and UnicodeDecodeError (binary) alike
        raise CheckpointError(f"{card_path}: unreadable model card ({first_line(exc)})") from None
    return ModelCard.from_dict(data, card_path)


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
    try:
        return st_load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError (and others) on a malformed file
        raise CheckpointError(f"{weights_path}: not a safetensors file ({first_line(exc)})") from None


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str, fits: str = "the model") -> None:
    """`model.load_state_dict(weights)` (strict), with a mismatch reported as one CheckpointError line naming
    `what`, the model (`fits`) and the first mismatched, missing or unexpected key."""
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a shape mismatch raises even when not strict; its first detail names the key
        lines = error_lines(exc) or [type(exc).__name__]
        raise CheckpointError(f"{what}: weights do not fit {fits}: {lines[min(1, len(lines) - 1)]}") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    problems = ([f"{len(missing)} missing (first {missing[0]!r})"] if missing else []) + (
        [f"{len(unexpected)} unexpected (first {unexpected[0]!r})"] if unexpected else [])
    if problems:
        raise CheckpointError(f"{what}: weights do not fit {fits}: keys {', '.join(problems)}")


def load_train_state(run: str, keys: Sequence[str] = ()) -> dict[str, Any] | None:
    """The training state for --resume, or None when the run has none yet.

    Loaded with `weights_only=True`, so a crafted pickle runs no code. CheckpointError (one line, naming the file)
    when it is unreadable, not a mapping, lacks one of `keys`, or its "step" / "epoch" is not an integer.
    """
    filesystem, path = afs.resolve(run)
    state_path = afs.join(path, STATE_FILE)
    if not afs.exists(filesystem, state_path):
        return None
    try:
        state = torch.load(io.BytesIO(afs.read_bytes(filesystem, state_path)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: never relay that
        lines = error_lines(exc)
        at = next((i for i, line in enumerate(lines) if "WeightsUnpickler error" in line), None)
        detail = f" ({lines[at + 1]})" if at is not None and at + 1 < len(lines) else ""
        raise CheckpointError(f"{state_path}: not a training state augment can load: corrupt, or it holds objects "
                              f"other than tensors and plain data{detail}; the weights-only loader refused it, so "
                              f"no code in it ran") from None
    except Exception as exc:  # a torn zip (RuntimeError), an empty file (EOFError)...: the file is not loadable
        raise CheckpointError(f"{state_path}: not a training state augment can load ({first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: a training state must be a mapping, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{state_path}: training state lacks key(s) {', '.join(missing)}")
    bad = [k for k in ("step", "epoch") if k in state and (not isinstance(state[k], int) or state[k] < 0)]
    if bad:
        raise CheckpointError(f"{state_path}: training state {bad[0]!r} must be an integer >= 0, got {state[bad[0]]!r}")
    return state


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

    Refuses to start over an existing run without `resume`, a run of another kind, and a run folder whose card
    is unreadable (CheckpointError: it is never overwritten as if it were empty).
    """
    filesystem, path = afs.resolve(run)
    existing = load_card(run) if afs.exists(filesystem, afs.join(path, CARD_FILE)) else None
    if existing is None:
        if resume:
            print(f"{command}: nothing to resume in {run}; starting a new run")
        return None
    if not resume:
        raise AugmentError(f"{run} already holds a training run; pass --resume to continue it or choose another --out")
    if existing.kind != kind:
        raise CheckpointError(f"run {run} is a {existing.kind!r} run, not a {kind!r} run")
    return existing


def generator_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's own state dict out of a checkpoint's weights (layout in the module docstring)."""
    state = {k[len(WEIGHTS_PREFIX):]: v for k, v in weights.items() if k.startswith(WEIGHTS_PREFIX)}
    state.pop("n_averaged", None)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_generator(run: str, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """The EMA generator of a train-gan run, in eval mode and channels_last on `device`, and its card."""
    card = load_card(run)
    if card.kind != GAN_KIND:
        raise CheckpointError(f"{run}: a {card.kind!r} checkpoint, not a GAN (train-gan) run")
    try:
        cfg = GANConfig.from_dict(card.model_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{run}: card.json model_config is not a GAN config ({exc})") from None
    generator = build_generator(cfg)
    state = generator_state_dict(load_weights(run, card))
    if not state:
        raise CheckpointError(f"{run}: model.safetensors holds no '{WEIGHTS_PREFIX}*' weights")
    load_into(generator, state, f"{run}: generator", "its model_config")
    device = torch.device(device)
    generator.requires_grad_(False).eval().to(device, memory_format=torch.channels_last)
    return generator, card


def load_segmenter(run: str, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild a train-seg model from its card, load its sha256-verified weights, and put it in eval mode."""
    card = load_card(run)
    if card.kind != SEGMENTER_KIND:
        raise CheckpointError(f"{run}: a {card.kind!r} checkpoint, not a segmenter (train one with train-seg)")
    cfg = card.model_config
    if "name" not in cfg:
        raise CheckpointError(f"{run}: card.json model_config has no model name")
    model = build_segmenter(cfg["name"], len(card.classes), aux_loss=bool(cfg.get("aux_loss", False)))
    load_into(model, load_weights(run, card), run, cfg["name"])
    return model.to(device).eval(), card
