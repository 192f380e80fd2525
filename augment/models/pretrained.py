"""Where a segmenter's weights start: from scratch, torchvision's ImageNet backbone, a local state-dict file, or
another train-seg run (`augment train-seg --weights-backbone {none,imagenet,PATH}` / `--init RUN`).

The weights are read once, on the driver, and sent to every training worker with the rest of the run's config, so
a path or a TORCH_HOME cache means the same on every node as on the machine the command runs on.

- `imagenet`: the backbone's `IMAGENET1K_V1` weights from torchvision's weights API (the ones torchvision's own
  segmentation builders default to), read from torch.hub's cache (`$TORCH_HOME/hub/checkpoints/<file>`), which
  torchvision downloads into when it can. Offline with no cached file: one line naming the file, the folder and
  the URL.
- PATH: a state dict saved by `torch.save` (loaded weights-only: a crafted pickle runs no code) or a
  `.safetensors` file; either the backbone's own keys, or a whole torchvision classification model's state dict
  (`mobilenet_v3_large().state_dict()`, `resnet50().state_dict()`: its `features.` prefix is stripped and its
  classifier, `fc.*` / `classifier.*`, left out), or a whole segmentation model's (`backbone.` stripped), also
  nested under "model" or "state_dict" as training scripts save them. Every backbone key must be there with its
  shape; anything else under the backbone's module names is refused.
- `--init RUN`: the whole model from a finished train-seg run of the same model and classes (a new optimizer and
  schedule from step 0: not a resume).

The card records it as `model_config["init"]` (`InitRecord.to_dict`): the kind, the source and its sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from augment.core.errors import AugmentError, CheckpointError, first_line

_IMAGENET = {
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}
_PREFIXES = ("", "features.", "backbone.", "module.", "module.features.", "module.backbone.")


@dataclass(frozen=True)
class InitRecord:
    """How a run's weights started, as its card records it."""

    kind: str = "none"
    source: str = ""
    """The torchvision weights (e.g. "MobileNet_V3_Large_Weights.IMAGENET1K_V1"), the file or the run folder."""
    sha256: str = ""
    """Of the file read (imagenet, file), or the run's weights_sha256 (run)."""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"source": self.source, "sha256": self.sha256} if self.kind != "none" else {}),
                **self.details}

    @classmethod
    def from_card(cls, model_config: dict[str, Any]) -> "InitRecord":
        """The record in a card's model_config (cards from before it existed: from scratch)."""
        raw = dict(model_config.get("init") or {"kind": "none"})
        kind, source, sha = raw.pop("kind", "none"), raw.pop("source", ""), raw.pop("sha256", "")
        return cls(str(kind), str(source), str(sha), raw)

    def same_start(self, other: "InitRecord") -> bool:
        return (self.kind, self.sha256) == (other.kind, other.sha256)

    def describe(self) -> str:
        return "from scratch" if self.kind == "none" else f"{self.kind} {self.source} (sha256 {self.sha256[:12]})"


@dataclass
class Init:
    """Initial weights for a run: `state` loads into the model's `target` ("backbone" or "model") before step 0."""

    record: InitRecord
    target: str = ""
    state: dict[str, torch.Tensor] | None = None


def backbone_name(model: str) -> str:
    """The torchvision classification model a segmenter's backbone is (lraspp_mobilenet_v3_large: mobilenet_v3_large)."""
    for name in _IMAGENET:
        if model.endswith("_" + name):
            return name
    raise AugmentError(f"segmenter {model!r} has no known torchvision backbone")


def imagenet_weights(model: str):
    """The torchvision weights enum member a segmenter's ImageNet backbone comes from (IMAGENET1K_V1)."""
    import torchvision.models as tvm

    return getattr(tvm, _IMAGENET[backbone_name(model)]).IMAGENET1K_V1


def hub_cache_file(url: str) -> str:
    """Where torch.hub.load_state_dict_from_url keeps (and first looks for) the file of `url`."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def resolve_init(model: str, classes: list[str], weights_backbone: str = "none", init: str | None = None,
                 aux_loss: bool = False) -> Init:
    """Read the initial weights a run asks for (see the module docstring); AugmentError in one line when they cannot
    be had or do not fit `model` with `classes`."""
    if init and weights_backbone not in ("none", ""):
        raise AugmentError("give --init RUN or --weights-backbone, not both (--init sets the whole model)")
    if init:
        return _from_run(init, model, classes, aux_loss)
    if weights_backbone in ("none", ""):
        return Init(InitRecord())
    if weights_backbone == "imagenet":
        return _from_imagenet(model)
    return _from_file(weights_backbone, model)


def _backbone_keys(model: str) -> dict[str, torch.Size]:
    from augment.models.segmenter import build_segmenter

    backbone = build_segmenter(model, 2).backbone
    return {k: v.shape for k, v in backbone.state_dict().items()}


def _from_imagenet(model: str) -> Init:
    weights = imagenet_weights(model)
    cached = hub_cache_file(weights.url)
    what = f"--weights-backbone imagenet ({weights})"
    if not os.path.exists(cached):
        try:
            weights.get_state_dict(progress=True, check_hash=True)  # torchvision's download into the same file
        except Exception as exc:  # URLError, HTTPError, a hash mismatch...: offline or blocked
            raise AugmentError(
                f"{what}: {os.path.basename(cached)} is not in {os.path.dirname(cached)} and could not be downloaded "
                f"({first_line(exc)}); fetch {weights.url} into that folder (or set TORCH_HOME)") from None
    state, sha256 = _read_state(cached, what)
    fitted, ignored = fit_backbone(state, model, f"{what}: {cached}")
    return Init(InitRecord("imagenet", str(weights), sha256,
                           {"file": cached, "keys_loaded": len(fitted), "keys_ignored": ignored}), "backbone", fitted)


def _from_file(path: str, model: str) -> Init:
    what = f"--weights-backbone {path}"
    if not os.path.isfile(path):
        raise AugmentError(f"{what}: no such file (give none, imagenet or a state-dict file)")
    state, sha256 = _read_state(path, what)
    fitted, ignored = fit_backbone(state, model, what)
    return Init(InitRecord("file", os.path.abspath(path), sha256,
                           {"keys_loaded": len(fitted), "keys_ignored": ignored}), "backbone", fitted)


def _from_run(run: str, model: str, classes: list[str], aux_loss: bool) -> Init:
    from augment.models.segmenter import SEGMENTER_KIND
    from augment.models.store import load_card, load_weights

    what = f"--init {run}"
    card = load_card(run)
    if card.kind != SEGMENTER_KIND:
        raise CheckpointError(f"{what}: a {card.kind!r} run, not a train-seg run")
    name = card.model_config.get("name")
    if name != model:
        raise CheckpointError(f"{what}: its model is {name}, this run trains {model} (pass --model {name})")
    if bool(card.model_config.get("aux_loss")) != aux_loss:
        raise CheckpointError(f"{what}: trained {'with' if not aux_loss else 'without'} the auxiliary head, this run "
                              f"{'with' if aux_loss else 'without'} it")
    if list(card.classes) != list(classes):
        theirs, ours = set(card.classes), set(classes)
        differ = sorted(theirs ^ ours)
        detail = f"classes only in one: {', '.join(differ[:5])}" if differ else "the same classes in another order"
        raise CheckpointError(f"{what}: its {len(card.classes)} classes are not this data's {len(classes)} ({detail})")
    state = load_weights(run, card)
    return Init(InitRecord("run", run, card.weights_sha256, {"step": card.step}), "model", state)


def fit_backbone(state: dict[str, torch.Tensor], model: str, what: str) -> tuple[dict[str, torch.Tensor], int]:
    """`state`'s tensors under the keys of `model`'s backbone, and how many of its keys were left out (a
    classifier's). CheckpointError (one line: a few missing, unexpected or misshapen keys) when they do not fit."""
    want = _backbone_keys(model)
    tops = {k.split(".", 1)[0] for k in want}
    prefix = max(_PREFIXES, key=lambda p: sum(1 for k in state if k.startswith(p) and k[len(p):] in want))
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    fitted = {k: v for k, v in sub.items() if k in want}
    missing = [k for k in want if k not in sub]
    unexpected = [k for k in sub if k not in want and k.split(".", 1)[0] in tops]
    shapes = [f"{k} {tuple(v.shape)} (needs {tuple(want[k])})" for k, v in fitted.items() if v.shape != want[k]]
    problems = [f"{len(keys)} {label} ({', '.join(map(str, keys[:3]))}{', ...' if len(keys) > 3 else ''})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
                if keys]
    if problems:
        raise CheckpointError(f"{what}: does not fit the {backbone_name(model)} backbone of {model}: keys "
                              + "; ".join(problems))
    return fitted, len(state) - len(fitted)


def load_init(model: nn.Module, target: str, state: dict[str, torch.Tensor]) -> None:
    """Load `state` (checked by resolve_init) into the model (`target` "model") or its backbone ("backbone")."""
    (model.backbone if target == "backbone" else model).load_state_dict(state, strict=True)


def _read_state(path: str, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the file's tensors, its sha256), read once."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
        if path.endswith(".safetensors"):
            from safetensors.torch import load as st_load

            state: Any = st_load(blob)
        else:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # OSError, UnpicklingError, a torn zip, SafetensorError...
        raise CheckpointError(f"{what}: not a state dict augment can load ({first_line(exc)})") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        nested = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), None)
        state = nested if nested is not None else state
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: holds no state dict of tensors (got {type(state).__name__})")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}, hashlib.sha256(blob).hexdigest()
