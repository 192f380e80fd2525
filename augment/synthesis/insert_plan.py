"""The insertion plan: which real object goes into which real host image, where, at what scale, with which seed.

`plan_insertions` is a pure function of (the label maps, per-class quotas, a fitted `PlacementContext`, the seed,
the options); it reads label maps only, never an image, and the same inputs give the same plan.

Candidates
    For each target class, its objects are the 8-connected components (`augment.data.objects.find_objects`) of at least
    `min_pixels` pixels in every label map, named by (source id, component index); maps are visited in sorted id
    order, so the candidates do not depend on the order of the mapping.
Sample k of class c
    draws everything from its own generator, `numpy.random.default_rng(derive_seed(seed, "insert", c, k))`, so its
    entry depends on nothing but the inputs and (c, k): not on the other samples, the quotas of other classes or how
    the plan is later split into shards (quota n's plan is a prefix of quota n + 1's). In that order it draws
    source  one candidate object, by default with probability proportional to its pixel count (`weighting`
            "pixels": large, well-resolved objects come up more, and the synthetic pixels of the class follow the
            real ones' distribution over objects, as `plan.make_plan` draws sources by pixel count); "uniform" gives
            every object the same chance;
    hosts   up to `max_hosts` distinct other label maps, uniformly, never the source's own map;
    place   `placement.place` of the object into each host in turn (with the same generator); the first placement
            found is the sample's. When no host gives one, the sample is left out and counted in `unplaced[c]`.
    Its id is `ins/<class name>/<k:06d>` (an unplaced sample's id is not reused) and its noise seed
    `derive_seed(seed, "noise", c, k)`.
Serialisation
    `InsertionPlan.to_dict` / `from_dict` (and `to_json` / `from_json`) hold everything, the fitted context
    included, so plan.json can carry the plan; malformed input raises AugmentError naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from augment.core.errors import AugmentError, BadSample
from augment.data.dataset import Dataset
from augment.data.lookup import LabelMaps, RowLookup
from augment.data.objects import DEFAULT_MIN_PIXELS, ObjectComponent, find_objects
from augment.synthesis.placement import Placement, PlacementContext, fit_context, place
from augment.synthesis.plan import (
    DEFAULT_BALANCE_POWER, MAX_PLAN_SAMPLES, derive_seed, job_quotas, split_into_shards,
)

INSERT_PLAN_VERSION = 1
WEIGHTINGS = ("pixels", "uniform")
DEFAULT_MAX_HOSTS = 8
PLACE_OPTIONS = ("min_ground", "min_contact", "scale_range", "flip_prob", "tries", "hole_margin")
"""The keyword options of `placement.place` a plan may set (`place_options`)."""


@dataclass(frozen=True)
class PlannedInsertion:
    """One sample to make: the object `placement.component` of class `placement.class_index` from map
    `placement.source_id`, put into map `placement.host_id` at (top, left), scaled and flipped as the placement
    says; the filler's noise comes from `seed`."""

    sample_id: str
    seed: int
    placement: Placement

    @property
    def target_class(self) -> int:
        return self.placement.class_index

    @property
    def host_id(self) -> str:
        return self.placement.host_id

    @property
    def source_id(self) -> str:
        return self.placement.source_id

    def to_dict(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "seed": self.seed, **self.placement.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> PlannedInsertion:
        """The insertion written by `to_dict`; anything malformed raises AugmentError naming the key."""
        if not isinstance(d, dict):
            raise AugmentError("planned insertion: must be a JSON object")
        sample_id, seed = d.get("sample_id"), d.get("seed")
        if not isinstance(sample_id, str) or not sample_id:
            raise AugmentError("planned insertion: sample_id must be a non-empty string")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise AugmentError(f"planned insertion {sample_id}: seed must be an integer >= 0")
        rest = {k: v for k, v in d.items() if k not in ("sample_id", "seed")}
        try:
            placement = Placement.from_dict(rest)
        except AugmentError as exc:
            raise AugmentError(f"planned insertion {sample_id}: {exc}") from None
        return cls(sample_id, seed, placement)


@dataclass
class InsertionPlan:
    """All insertions of a job, ordered by class then index, plus how they were chosen (module docstring).

    `candidates[c]` is the number of candidate objects of class c (0 for a quota of 0: not searched), `unplaced[c]`
    the number of its planned samples no host gave a placement for; len(insertions of c) + unplaced[c] ==
    quotas[c], which `from_dict` checks, with every sample id appearing once.
    """

    insertions: list[PlannedInsertion]
    context: PlacementContext
    quotas: dict[int, int]
    seed: int
    classes: list[str]
    min_pixels: int = DEFAULT_MIN_PIXELS
    weighting: str = "pixels"
    max_hosts: int = DEFAULT_MAX_HOSTS
    place_options: dict[str, Any] = field(default_factory=dict)
    candidates: dict[int, int] = field(default_factory=dict)
    unplaced: dict[int, int] = field(default_factory=dict)
    version: int = INSERT_PLAN_VERSION

    def __len__(self) -> int:
        return len(self.insertions)

    @property
    def samples(self) -> list[PlannedInsertion]:
        """The insertions (as `plan.Plan.samples`: what a job makes, in order)."""
        return self.insertions

    def shards(self, samples_per_shard: int) -> list[list[PlannedInsertion]]:
        return split_into_shards(self.insertions, samples_per_shard)

    def summary(self) -> dict[str, Any]:
        """Everything but the insertions and the context, with classes by name."""
        def named(counts: dict[int, int]) -> dict[str, int]:
            return {self.classes[c]: n for c, n in sorted(counts.items())}
        return {"version": self.version, "seed": self.seed, "num_samples": len(self), "quotas": named(self.quotas),
                "candidates": named(self.candidates), "unplaced": named(self.unplaced), "min_pixels": self.min_pixels,
                "weighting": self.weighting, "max_hosts": self.max_hosts, "place_options": self.place_options}

    def to_dict(self) -> dict[str, Any]:
        def keyed(counts: dict[int, int]) -> dict[str, int]:
            return {str(c): n for c, n in sorted(counts.items())}
        return {
            "version": self.version, "seed": self.seed, "classes": list(self.classes), "quotas": keyed(self.quotas),
            "min_pixels": self.min_pixels, "weighting": self.weighting, "max_hosts": self.max_hosts,
            "place_options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.place_options.items()},
            "candidates": keyed(self.candidates), "unplaced": keyed(self.unplaced),
            "context": self.context.to_dict(), "insertions": [p.to_dict() for p in self.insertions],
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "plan.json") -> InsertionPlan:
        """The plan written by `to_dict`; anything malformed raises AugmentError naming `source` and the key."""
        try:
            return _plan_from_dict(d)
        except AugmentError as exc:
            raise AugmentError(f"{source}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "plan.json") -> InsertionPlan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AugmentError(f"{source}: not JSON ({exc})") from None
        return cls.from_dict(data, source)


_PLAN_KEYS = ("version", "seed", "classes", "quotas", "min_pixels", "weighting", "max_hosts", "place_options",
              "candidates", "unplaced", "context", "insertions")


def _counts(value: Any, key: str, num_classes: int) -> dict[int, int]:
    """A {"class index": count} object checked and turned into {int: int}."""
    if not isinstance(value, dict):
        raise AugmentError(f"insertion plan: {key} must be an object of class index -> count")
    out = {}
    for k, n in value.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) < num_classes):
            raise AugmentError(f"insertion plan: {key} has key {k!r}, not a class index below {num_classes}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise AugmentError(f"insertion plan: {key}[{k}] must be an integer >= 0")
        out[int(k)] = n
    return out


def _plan_from_dict(d: Any) -> InsertionPlan:
    if not isinstance(d, dict):
        raise AugmentError("insertion plan: must be a JSON object")
    missing, unknown = sorted(set(_PLAN_KEYS) - set(d)), sorted(set(d) - set(_PLAN_KEYS))
    if missing or unknown:
        what = f"missing keys {missing}" if missing else f"unknown keys {unknown}"
        raise AugmentError(f"insertion plan: {what}")
    if d["version"] != INSERT_PLAN_VERSION:
        raise AugmentError(f"insertion plan: version {d['version']!r} is not {INSERT_PLAN_VERSION}")
    classes = d["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise AugmentError("insertion plan: classes must be a non-empty list of names")
    for key in ("seed", "min_pixels", "max_hosts"):
        if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 0:
            raise AugmentError(f"insertion plan: {key} must be an integer >= 0")
    if d["weighting"] not in WEIGHTINGS:
        raise AugmentError(f"insertion plan: weighting must be one of {list(WEIGHTINGS)}")
    options = _check_place_options(d["place_options"])
    context = PlacementContext.from_dict(d["context"])
    if context.num_classes != len(classes):
        raise AugmentError(f"insertion plan: the context has {context.num_classes} classes, the plan {len(classes)}")
    if not isinstance(d["insertions"], list):
        raise AugmentError("insertion plan: insertions must be a list")
    insertions = [PlannedInsertion.from_dict(p) for p in d["insertions"]]
    bad = next((p for p in insertions if not 0 <= p.target_class < len(classes)), None)
    if bad is not None:
        raise AugmentError(f"insertion plan: {bad.sample_id} has class index {bad.target_class}, outside the classes")
    seen: set[str] = set()
    for p in insertions:
        if p.sample_id in seen:
            raise AugmentError(f"insertion plan: sample id {p.sample_id} appears twice")
        seen.add(p.sample_id)
    n = len(classes)
    quotas, unplaced = _counts(d["quotas"], "quotas", n), _counts(d["unplaced"], "unplaced", n)
    for c in sorted(set(quotas) | {p.target_class for p in insertions}):
        planned = sum(p.target_class == c for p in insertions)
        if planned + unplaced.get(c, 0) != quotas.get(c, 0):
            raise AugmentError(f"insertion plan: class {classes[c]} has {planned} insertions and "
                               f"{unplaced.get(c, 0)} unplaced, its quota is {quotas.get(c, 0)}")
    return InsertionPlan(insertions, context, quotas, d["seed"], list(classes), d["min_pixels"], d["weighting"],
                         d["max_hosts"], options, _counts(d["candidates"], "candidates", n), unplaced)


def _check_place_options(options: Any) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise AugmentError("place_options must be a mapping")
    unknown = sorted(set(options) - set(PLACE_OPTIONS))
    if unknown:
        raise AugmentError(f"place_options: unknown option(s) {unknown}; known: {list(PLACE_OPTIONS)}")
    out = dict(options)
    if "scale_range" in out:
        lo_hi = out["scale_range"]
        if (not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in lo_hi)
                or not 0 < lo_hi[0] <= lo_hi[1]):
            raise AugmentError(f"place_options.scale_range: [min, max] with 0 < min <= max, got {lo_hi!r}")
        out["scale_range"] = (float(lo_hi[0]), float(lo_hi[1]))
    for key in ("min_ground", "min_contact", "flip_prob"):
        if key in out and not (isinstance(out[key], (int, float)) and not isinstance(out[key], bool)
                               and 0 <= out[key] <= 1):
            raise AugmentError(f"place_options.{key}: a number in [0, 1], got {out[key]!r}")
    if "tries" in out and not (isinstance(out["tries"], int) and not isinstance(out["tries"], bool)
                               and out["tries"] >= 1):
        raise AugmentError(f"place_options.tries: an integer >= 1, got {out['tries']!r}")
    if "hole_margin" in out and not (isinstance(out["hole_margin"], int) and not isinstance(out["hole_margin"], bool)
                                     and out["hole_margin"] >= 0):
        raise AugmentError(f"place_options.hole_margin: an integer >= 0, got {out['hole_margin']!r}")
    return out


@dataclass
class _Pool:
    """The candidate objects of one class: source map position (into the sorted ids), component index and the
    cumulative drawing weights (ending at 1)."""

    sources: np.ndarray
    components: np.ndarray
    cdf: np.ndarray

    def draw(self, rng: np.random.Generator) -> int:
        return min(int(np.searchsorted(self.cdf, rng.random(), side="right")), len(self.cdf) - 1)


def _pools(masks: Mapping[str, np.ndarray], ids: list[str], classes: list[int], min_pixels: int,
           weighting: str) -> dict[int, _Pool]:
    found: dict[int, list[tuple[int, int, int]]] = {c: [] for c in classes}
    for pos, sid in enumerate(ids):
        mask = np.asarray(masks[sid])
        present = set(np.unique(mask).tolist())
        for c in classes:
            if c in present:
                found[c] += [(pos, o.index, o.pixels) for o in find_objects(mask, c, min_pixels)]
    pools = {}
    for c, rows in found.items():
        table = np.asarray(rows, np.int64).reshape(-1, 3)
        weights = table[:, 2].astype(np.float64) if weighting == "pixels" else np.ones(len(table))
        cdf = np.cumsum(weights)
        pools[c] = _Pool(table[:, 0], table[:, 1], cdf / cdf[-1] if len(cdf) else cdf)
    return pools


def component_of(mask: np.ndarray, class_index: int, component: int) -> ObjectComponent | None:
    """The component numbered `component` among the `class_index` components of `mask` (`ObjectComponent.index`:
    raster order of their first pixel, whatever their size), or None when the map has fewer."""
    objects = find_objects(mask, class_index)
    return objects[component] if 0 <= component < len(objects) else None


def _hosts(rng: np.random.Generator, n: int, source: int, count: int) -> list[int]:
    """`count` distinct positions among 0..n-1 other than `source`, drawn uniformly."""
    picks = rng.choice(n - 1, size=min(count, n - 1), replace=False)
    return [int(p) + int(p >= source) for p in picks]


def _check_quotas(quotas: Mapping[int, int], num_classes: int) -> dict[int, int]:
    out = {}
    for c, q in quotas.items():
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
            raise AugmentError(f"insertion quotas: {c!r} is not a class index in 0..{num_classes - 1}")
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q < 0:
            raise AugmentError(f"insertion quotas: quota of class {c} must be an integer >= 0, got {q!r}")
        out[int(c)] = int(q)
    total = sum(out.values())
    if total > MAX_PLAN_SAMPLES:
        raise AugmentError(f"insertion quotas add up to {total} samples, more than the {MAX_PLAN_SAMPLES} a plan "
                           f"may hold")
    return dict(sorted(out.items()))


def plan_insertions(
    masks: Mapping[str, np.ndarray], quotas: Mapping[int, int], context: PlacementContext, seed: int, *,
    class_names: Sequence[str], min_pixels: int = DEFAULT_MIN_PIXELS, weighting: str = "pixels",
    max_hosts: int = DEFAULT_MAX_HOSTS, place_options: Mapping[str, Any] | None = None,
) -> InsertionPlan:
    """The insertion plan (module docstring) for `quotas` (class index -> number of samples) over the label maps
    `masks` (id -> H x W map; every map is both a possible source and a possible host), placed by `context` (as
    `placement.fit_context` learns it) with `place_options` passed on to `placement.place`.

    Raises AugmentError before any drawing for a bad seed, quota, weighting or option, fewer than two maps, or a
    class with a quota but no candidate object of at least `min_pixels` pixels.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AugmentError(f"seed must be an integer >= 0, got {seed!r}")
    if len(class_names) != context.num_classes:
        raise AugmentError(f"{len(class_names)} class names for a context of {context.num_classes} classes")
    if weighting not in WEIGHTINGS:
        raise AugmentError(f"weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise AugmentError(f"min_pixels must be an integer >= 1, got {min_pixels!r}")
    if isinstance(max_hosts, bool) or not isinstance(max_hosts, int) or max_hosts < 1:
        raise AugmentError(f"max_hosts must be an integer >= 1, got {max_hosts!r}")
    options = _check_place_options(dict(place_options or {}))
    quotas = _check_quotas(quotas, context.num_classes)
    ids = sorted(masks)
    if len(ids) < 2:
        raise AugmentError(f"an insertion plan needs at least two label maps (a host is never the source), got "
                           f"{len(ids)}")
    wanted = [c for c, q in quotas.items() if q > 0]
    pools = _pools(masks, ids, wanted, min_pixels, weighting)
    empty = [class_names[c] for c in wanted if len(pools[c].cdf) == 0]
    if empty:
        raise AugmentError(f"no label map holds an object of {min_pixels}+ pixels of class(es) {empty}; nothing to "
                           f"insert")
    insertions: list[PlannedInsertion] = []
    unplaced = {c: 0 for c in quotas}
    objects: dict[tuple[int, int, int], ObjectComponent] = {}
    for c in wanted:
        pool = pools[c]
        for k in range(quotas[c]):
            rng = np.random.default_rng(derive_seed(seed, "insert", c, k))
            i = pool.draw(rng)
            src = int(pool.sources[i])
            key = (c, src, int(pool.components[i]))
            if key not in objects:
                objects[key] = component_of(np.asarray(masks[ids[src]]), c, key[2])
            obj = objects[key]
            found = None
            for host in _hosts(rng, len(ids), src, max_hosts):
                found = place(obj, np.asarray(masks[ids[host]]), context, rng, source_id=ids[src],
                              host_id=ids[host], **options)
                if found is not None:
                    break
            if found is None:
                unplaced[c] += 1
                continue
            insertions.append(PlannedInsertion(f"ins/{class_names[c]}/{k:06d}", derive_seed(seed, "noise", c, k),
                                               found))
    return InsertionPlan(insertions, context, quotas, int(seed), list(class_names), min_pixels, weighting, max_hosts,
                         options, {c: len(pools[c].cdf) if c in pools else 0 for c in quotas}, unplaced)


PLAN_OPTIONS = ("min_pixels", "weighting", "max_hosts", *PLACE_OPTIONS)
"""The keys of a job's `synthesis.placement` block (`make_insertion_plan`'s `options`)."""


def make_insertion_plan(
    dataset: Dataset, classes: Mapping[str | int, int] | None, balance_total: int | None, seed: int,
    options: Mapping[str, Any] | None = None, *, balance_power: float = DEFAULT_BALANCE_POWER,
    splits: list[str] | None = None, cache: int = 4096,
) -> tuple[InsertionPlan, list[dict[str, str]]]:
    """(the insertion plan of a job over `dataset`, the source maps left out): quotas as `plan.job_quotas` works them
    out (explicit `classes` or a `balance_total`), every label map of the source splits both a candidate source and a
    candidate host, the placement context fitted on those maps (`placement.fit_context`, objects of `min_pixels`+),
    then `plan_insertions` with `options` (keys of PLAN_OPTIONS). A map that does not decode is left out of the plan
    and returned as a quarantine record ({"id", "source", "reason"}); the maps are decoded on demand, at most `cache`
    held at once. AugmentError (module docstring of `plan_insertions`) for bad quotas or options."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(PLAN_OPTIONS))
    if unknown:
        raise AugmentError(f"placement: unknown option(s) {unknown}; known: {list(PLAN_OPTIONS)}")
    sources, quotas, _, _ = job_quotas(dataset, dict(classes) if classes is not None else None, balance_total,
                                       balance_power, splits)
    info = dataset.info
    maps = LabelMaps(RowLookup(dataset, sources.ids), cache)
    skipped: list[dict[str, str]] = []
    good: list[str] = []
    for sample_id in maps:
        try:
            maps[sample_id]
        except BadSample as exc:
            skipped.append({"id": sample_id, "source": sample_id, "reason": str(exc)})
            continue
        good.append(sample_id)
    usable = _Subset(maps, good)
    min_pixels = options.pop("min_pixels", DEFAULT_MIN_PIXELS)
    try:
        context = fit_context(usable.values(), info.num_classes, info.ignore_index, min_pixels=min_pixels)
    except ValueError as exc:
        raise AugmentError(f"{dataset.uri}: {exc} (in sorted id order)") from None
    plan = plan_insertions(usable, quotas, context, seed, class_names=list(info.classes), min_pixels=min_pixels,
                           weighting=options.pop("weighting", "pixels"),
                           max_hosts=options.pop("max_hosts", DEFAULT_MAX_HOSTS), place_options=options)
    return plan, skipped


class _Subset(Mapping[str, np.ndarray]):
    """The maps of `ids` only, of a larger mapping."""

    def __init__(self, maps: Mapping[str, np.ndarray], ids: list[str]) -> None:
        self.maps, self.ids = maps, ids
        self.known = set(ids)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.known:
            raise KeyError(key)
        return self.maps[key]

    def __iter__(self):
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)
