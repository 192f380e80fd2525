"""The per-class synthesis plan: which label map each synthetic sample starts from, how it is edited, its seed.

A plan is a pure function of (dataset statistics, quotas or balance budget, seed, edit options): `make_plan` reads
only the `id`, `split` and `class_pixels` columns, never an image, and the same inputs give the same plan.

Quotas
    Explicit: `classes={"pedestrian": 2000, 8: 500}` (names or indices). Balance: `balance_total=N` spreads N samples
    over every class present in the source maps with weight `share ** -balance_power`, where `share` is the class's
    fraction of all labelled source pixels. `balance_power=1` is inverse frequency (the rarest class gets the most,
    in proportion), the default 0.5 (inverse square root) still orders classes from rare to common but keeps common
    classes from getting almost nothing. Counts are rounded by largest remainder so they sum to N exactly.

Sources
    For a target class, every source map holding at least one pixel of it is a candidate, drawn with probability
    proportional to its pixel count of that class. Sources come from the `train` split when the dataset has one
    (synthetic data augments training; taking val maps would leak them), else from every split; `splits=` overrides.

Edits (`edit_options`, all off by default; the concrete choices per sample are stored in `PlannedSample.edits`)
    flip:  probability of a horizontal flip                                       -> edits["flip"] = True
    scale: [min, max] zoom factor range (or one number: [1, max])                 -> edits["scale"], edits["crop"]
           crop = [fy, fx] in [0, 1]: where the window lies within its allowed range (see `edit.apply_edits`)
    paste: {"prob": p, "max": n, "max_dy": 0.1, "max_dx": 0.5, "below": 1.0}: with probability p (only when the
           source's target share is below `below`), paste the target-class regions of 1..n other maps holding the
           class (drawn like sources), shifted by dy/dx (fractions of the height/width) and optionally flipped
           -> edits["paste"] = [{"from": id, "dy": fy, "dx": fx, "flip": bool}, ...]

Seeds
    Sample k of class c gets `seed = derive_seed(job_seed, "noise", c, k)` (63-bit) and
    `base_seed = derive_seed(job_seed, "base", source_id)`, so samples drawn from one source share their base noise
    (see `generate.synthesise`, noise_mode "target"). Ids are `syn/<class name>/<k:06d>`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from augment.data.dataset import Dataset
from augment.core.errors import AugmentError, DatasetError

PLAN_VERSION = 1
DEFAULT_BALANCE_POWER = 0.5
PASTE_DEFAULTS: dict[str, float] = {"prob": 0.0, "max": 1, "max_dy": 0.1, "max_dx": 0.5, "below": 1.0}
EDIT_KEYS = ("flip", "scale", "paste")
MAX_PLAN_SAMPLES = 10**7
"""The most samples one plan may hold. The whole plan lives in the driver's memory (a PlannedSample per sample) and
is written whole to plan.json (a JSON object per sample), so this bound is what keeps the driver's memory and
plan.json within what an ordinary driver machine holds; it is far beyond any real augmentation job. A larger job is
refused before any work: split it into several jobs."""


def split_into_shards(items: list[Any], samples_per_shard: int) -> list[list[Any]]:
    """Consecutive runs of at most `samples_per_shard` planned items; every item in exactly one shard, in plan order."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    return [items[i : i + samples_per_shard] for i in range(0, len(items), samples_per_shard)]

@dataclass
class PlannedSample:
    """One synthetic sample to make: start from `source_id`'s label map, apply `edits`, generate with `seed`."""

    sample_id: str
    target_class: int
    source_id: str
    seed: int
    edits: dict[str, Any] = field(default_factory=dict)
    base_seed: int = 0


@dataclass
class Plan:
    """All samples of a job, ordered by class then index, plus how they were chosen."""

    samples: list[PlannedSample]
    quotas: dict[int, int]
    seed: int
    classes: list[str] = field(default_factory=list)
    mode: str = "explicit"
    balance_total: int | None = None
    balance_power: float = DEFAULT_BALANCE_POWER
    edit_options: dict[str, Any] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    source_counts: dict[int, int] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __len__(self) -> int:
        return len(self.samples)

    def shards(self, samples_per_shard: int) -> list[list[PlannedSample]]:
        return split_into_shards(self.samples, samples_per_shard)

    def summary(self) -> dict[str, Any]:
        """What dataset.json's extra["plan"] records: everything but the sample list."""
        return {
            "version": self.version,
            "seed": self.seed,
            "mode": self.mode,
            "balance_total": self.balance_total,
            "balance_power": self.balance_power,
            "num_samples": len(self.samples),
            "quotas": {self.classes[c]: q for c, q in sorted(self.quotas.items())},
            "sources": {self.classes[c]: n for c, n in sorted(self.source_counts.items())},
            "splits": self.splits,
            "edit_options": self.edit_options,
        }

    def to_json(self) -> str:
        data = asdict(self)
        data["quotas"] = {str(k): v for k, v in self.quotas.items()}
        data["source_counts"] = {str(k): v for k, v in self.source_counts.items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "plan.json") -> "Plan":
        try:
            data = json.loads(text)
            if data.get("version") != PLAN_VERSION:
                raise AugmentError(f"{source}: plan version {data.get('version')!r} is not {PLAN_VERSION}")
            data["samples"] = [PlannedSample(**s) for s in data["samples"]]
            data["quotas"] = {int(k): int(v) for k, v in data["quotas"].items()}
            data["source_counts"] = {int(k): int(v) for k, v in data.get("source_counts", {}).items()}
            return cls(**data)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AugmentError(f"{source}: not a valid plan ({exc})") from None


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (job seed, purpose, class, index, id), stable across runs and platforms."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class _Sources:
    """The candidate source maps: ids (sorted) and their per-class pixel counts."""

    ids: list[str]
    pixels: np.ndarray  # rows x classes, int64

    def pool(self, cls: int) -> tuple[np.ndarray, np.ndarray]:
        """(row indices holding `cls`, their cumulative pixel weights normalised to end at 1)."""
        rows = np.flatnonzero(self.pixels[:, cls] > 0)
        cdf = np.cumsum(self.pixels[rows, cls].astype(np.float64))
        return rows, cdf / cdf[-1] if len(rows) else cdf


def _read_sources(dataset: Dataset, splits: list[str]) -> _Sources:
    num_classes = dataset.info.num_classes
    flt = pc.field("split").isin(splits) if splits else None
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    for batch in dataset.iter_batches(["id", "class_pixels"], batch_size=8192, filter=flt):
        col = batch.column("class_pixels")
        lengths = np.asarray(pc.list_value_length(col).fill_null(-1))
        batch_ids = batch.column("id").to_pylist()
        bad = np.flatnonzero(lengths != num_classes)
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{dataset.uri} row {batch_ids[i]}: class_pixels has {lengths[i]} entries, the dataset has "
                f"{num_classes} classes"
            )
        ids += batch_ids
        chunks.append(np.asarray(col.flatten(), dtype=np.int64).reshape(-1, num_classes))
    pixels = np.concatenate(chunks) if chunks else np.zeros((0, num_classes), np.int64)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return _Sources([ids[i] for i in order], pixels[order])


def _default_splits(dataset: Dataset) -> list[str]:
    return ["train"] if "train" in dataset.info.splits else []


def _resolve_quotas(dataset: Dataset, classes: dict[str | int, int]) -> dict[int, int]:
    quotas: dict[int, int] = {}
    for key, quota in classes.items():
        try:
            idx = dataset.info.class_index(key)
        except DatasetError as exc:
            raise AugmentError(f"classes: {exc}") from None
        if idx in quotas:
            raise AugmentError(f"classes: {key!r} names class {dataset.info.classes[idx]!r} a second time")
        if isinstance(quota, bool) or not isinstance(quota, (int, np.integer)) or quota < 0:
            raise AugmentError(f"classes: quota of {key!r} must be an integer >= 0, got {quota!r}")
        if quota > MAX_PLAN_SAMPLES:
            raise AugmentError(f"classes.{key}: quota {quota} is more than the {MAX_PLAN_SAMPLES} samples a plan may "
                               f"hold")
        quotas[idx] = int(quota)
    total = sum(quotas.values())
    if total > MAX_PLAN_SAMPLES:
        raise AugmentError(f"classes: the quotas add up to {total} samples, more than the {MAX_PLAN_SAMPLES} a plan "
                           f"may hold")
    return dict(sorted(quotas.items()))


def balance_quotas(class_pixels: np.ndarray, total: int, power: float = DEFAULT_BALANCE_POWER) -> dict[int, int]:
    """Split `total` over the classes with pixels, weight `share ** -power`; sums to `total` (largest remainder)."""
    if total < 0:
        raise AugmentError(f"balance: total must be >= 0, got {total}")
    if total > MAX_PLAN_SAMPLES:
        raise AugmentError(f"balance.total: {total} is more than the {MAX_PLAN_SAMPLES} samples a plan may hold")
    if power < 0:
        raise AugmentError(f"balance: power must be >= 0, got {power}")
    pixels = np.asarray(class_pixels, dtype=np.float64)
    present = np.flatnonzero(pixels > 0)
    if not present.size:
        raise AugmentError("balance: no source map holds any labelled pixel")
    weights = (pixels[present] / pixels.sum()) ** -power
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(present)), key=lambda i: (-(exact[i] - counts[i]), present[i]))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return {int(c): int(n) for c, n in zip(present, counts)}


def _check_edit_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = set(options) - set(EDIT_KEYS)
    if unknown:
        raise AugmentError(f"edits: unknown option(s) {sorted(unknown)}; known: {list(EDIT_KEYS)}")
    out: dict[str, Any] = {}
    flip = float(options.get("flip", 0.0))
    if not 0.0 <= flip <= 1.0:
        raise AugmentError(f"edits.flip: a probability in [0, 1], got {flip}")
    out["flip"] = flip
    scale = options.get("scale", [1.0, 1.0])
    scale = [1.0, float(scale)] if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if len(scale) != 2 or not 0.25 <= scale[0] <= scale[1] <= 4.0:
        raise AugmentError(f"edits.scale: [min, max] with 0.25 <= min <= max <= 4, got {options.get('scale')!r}")
    out["scale"] = scale
    paste = options.get("paste", {})
    if not isinstance(paste, dict) or set(paste) - set(PASTE_DEFAULTS):
        raise AugmentError(f"edits.paste: a mapping with keys {list(PASTE_DEFAULTS)}, got {paste!r}")
    paste = {**PASTE_DEFAULTS, **paste}
    if not (0 <= paste["prob"] <= 1 and 0 <= paste["below"] <= 1 and int(paste["max"]) >= 1
            and 0 <= paste["max_dy"] <= 1 and 0 <= paste["max_dx"] <= 1):
        raise AugmentError(f"edits.paste: prob/below/max_dy/max_dx in [0, 1] and max >= 1, got {paste!r}")
    out["paste"] = {k: (int(v) if k == "max" else float(v)) for k, v in paste.items()}
    return out


def _choose(rng: np.random.Generator, rows: np.ndarray, cdf: np.ndarray) -> int:
    return int(rows[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(rows) - 1)])


def _plan_edits(
    rng: np.random.Generator, opts: dict[str, Any], sources: _Sources, cls: int, src: int,
    rows: np.ndarray, cdf: np.ndarray,
) -> dict[str, Any]:
    edits: dict[str, Any] = {}
    paste = opts["paste"]
    share = sources.pixels[src, cls] / max(int(sources.pixels[src].sum()), 1)
    if paste["prob"] > 0 and share < paste["below"] and rng.random() < paste["prob"]:
        items = []
        for _ in range(int(rng.integers(1, paste["max"] + 1))):
            donor = _choose(rng, rows, cdf)
            for _retry in range(8):
                if donor != src or len(rows) == 1:
                    break
                donor = _choose(rng, rows, cdf)
            items.append({
                "from": sources.ids[donor],
                "dy": round(float(rng.uniform(-paste["max_dy"], paste["max_dy"])), 4),
                "dx": round(float(rng.uniform(-paste["max_dx"], paste["max_dx"])), 4),
                "flip": bool(rng.random() < 0.5),
            })
        edits["paste"] = items
    lo, hi = opts["scale"]
    if hi > lo or lo != 1.0:
        scale = round(float(rng.uniform(lo, hi)), 3)
        if scale != 1.0:
            edits["scale"] = scale
            edits["crop"] = [round(float(rng.random()), 4), round(float(rng.random()), 4)]
    if opts["flip"] > 0 and rng.random() < opts["flip"]:
        edits["flip"] = True
    return edits


def job_quotas(
    dataset: Dataset, classes: dict[str | int, int] | None, balance_total: int | None,
    balance_power: float = DEFAULT_BALANCE_POWER, splits: list[str] | None = None,
) -> tuple[_Sources, dict[int, int], str, list[str]]:
    """(the source maps, quotas by class index, "explicit" or "balance", the source splits) for explicit quotas
    (`classes`) or a balanced budget (`balance_total`) over the source maps of `splits` (default: train when the
    dataset has it, else every split). AugmentError for both or neither, an unknown class, a bad quota, a split the
    dataset lacks or no source map."""
    if (classes is None) == (balance_total is None):
        raise AugmentError("give either classes (explicit quotas) or balance (a total budget), not both or neither")
    info = dataset.info
    splits = list(splits) if splits is not None else _default_splits(dataset)
    missing = [s for s in splits if s not in info.splits]
    if missing:
        raise AugmentError(f"{dataset.uri}: no split(s) {missing} to take source maps from; it has {list(info.splits)}")
    sources = _read_sources(dataset, splits)
    if not sources.ids:
        raise AugmentError(f"{dataset.uri}: no source label maps{' in split(s) ' + str(splits) if splits else ''}")
    if classes is not None:
        return sources, _resolve_quotas(dataset, classes), "explicit", splits
    return sources, balance_quotas(sources.pixels.sum(axis=0), int(balance_total), balance_power), "balance", splits


def make_plan(
    dataset: Dataset,
    classes: dict[str | int, int] | None,
    balance_total: int | None,
    seed: int,
    edit_options: dict[str, Any] | None = None,
    *,
    balance_power: float = DEFAULT_BALANCE_POWER,
    splits: list[str] | None = None,
) -> Plan:
    """The plan for explicit per-class quotas (`classes`) or a balanced budget (`balance_total`); give exactly one.

    Raises AugmentError before any work for an unknown class name, an index out of range, a class with a quota that
    no source map contains, more than MAX_PLAN_SAMPLES samples, a bad edit option or a source split the dataset lacks.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AugmentError(f"seed must be an integer >= 0, got {seed!r}")
    info = dataset.info
    opts = _check_edit_options(edit_options)
    sources, quotas, mode, splits = job_quotas(dataset, classes, balance_total, balance_power, splits)
    source_counts = {c: int((sources.pixels[:, c] > 0).sum()) for c in quotas}
    empty = [info.classes[c] for c, q in quotas.items() if q > 0 and source_counts[c] == 0]
    if empty:
        raise AugmentError(
            f"no source label map{' in split(s) ' + str(splits) if splits else ''} of {dataset.uri} contains "
            f"class(es) {empty}; nothing to synthesise them from"
        )
    samples: list[PlannedSample] = []
    for cls, quota in quotas.items():
        rows, cdf = sources.pool(cls)
        name = info.classes[cls]
        for k in range(quota):
            rng = np.random.default_rng(derive_seed(seed, "plan", cls, k))
            src = _choose(rng, rows, cdf)
            samples.append(PlannedSample(
                sample_id=f"syn/{name}/{k:06d}",
                target_class=cls,
                source_id=sources.ids[src],
                seed=derive_seed(seed, "noise", cls, k),
                edits=_plan_edits(rng, opts, sources, cls, src, rows, cdf),
                base_seed=derive_seed(seed, "base", sources.ids[src]),
            ))
    return Plan(
        samples=samples, quotas=quotas, seed=int(seed), classes=list(info.classes), mode=mode,
        balance_total=None if balance_total is None else int(balance_total), balance_power=float(balance_power),
        edit_options=opts, splits=splits, source_counts=source_counts,
    )
