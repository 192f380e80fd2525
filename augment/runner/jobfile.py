"""Job files: YAML or JSON validated against `schemas/job-v2.schema.json`, loaded into a `JobConfig` with defaults.

A version 1 file (no `synthesis` block) is a version 2 file of synthesis mode scene. Keys that belong to another
mode than the file's (`edits`/`noise` or the whole-image filter thresholds outside mode scene, the region filter in
mode scene, `dilation` outside mode insert, a generator for mode paste) are refused naming the key, so a file
never says something the job does not do.

The schema is the one home of every default and range: the dataclasses below take their defaults from it
(`schema_default`), and a key the job file leaves out is simply not passed, so no value is restated here. The
filter thresholds travel as one frozen `FilterConfig` (augment.filtering.quality) built here, once.

Relative local paths in a job file are taken relative to the job file's folder (so a job file and its data can move
together, and `ray job submit --working-dir .` finds them) and made absolute on the driver; URIs (s3://...) are kept
as they are. A job file read from a URI has no local folder: its local paths must be absolute. Class quota keys
may be names or indices (`{pedestrian: 100, 9: 50}`). A key given twice in one mapping is refused, naming both
lines (`UniqueKeyLoader`); an unknown key is named (with a did-you-mean) before any other rule is checked.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema
import yaml

from augment.data import fs as afs
from augment.core.errors import AugmentError
from augment.filtering.quality import FilterConfig
from augment.filtering.region import RegionFilterConfig

SCHEMA_FILE = "job-v2.schema.json"


@lru_cache(maxsize=1)
def job_schema() -> dict[str, Any]:
    return json.loads((resources.files("augment.schemas") / SCHEMA_FILE).read_text())


def _schema_node(path: tuple[str, ...]) -> dict[str, Any]:
    node = job_schema()
    for key in path:
        node = node["properties"][key]
    return node


def schema_default(*path: str) -> Any:
    """The default the job schema gives the key at `path` (`schema_default("resources", "batch_size")`), a fresh
    copy; KeyError when the schema gives that key no default."""
    return copy.deepcopy(_schema_node(path)["default"])


def section_defaults(section: str) -> dict[str, Any]:
    """{key: default} of the schema's object `section` (e.g. "filter"), for the keys that have one."""
    return section_defaults_at(section)


def section_defaults_at(*path: str) -> dict[str, Any]:
    """{key: default} of the schema's object at `path` (e.g. "synthesis", "placement"), for the keys with one."""
    return {k: copy.deepcopy(v["default"]) for k, v in _schema_node(path)["properties"].items() if "default" in v}


SCENE_FILTER_KEYS = tuple(FilterConfig.__dataclass_fields__)
REGION_FILTER_KEYS = {"min_region_iou": "min_iou", "region_margin": "margin", "pixel_rule": "pixel_rule",
                      "pixel_rule_k": "k"}
"""The job file's region filter keys -> RegionFilterConfig's fields."""


def filter_config(section: dict[str, Any] | None = None) -> FilterConfig:
    """The whole-image filter (mode scene) of a job's `filter` mapping (validated) over the schema's defaults."""
    merged = {**section_defaults("filter"), **(section or {})}
    return FilterConfig(**{k: merged[k] for k in SCENE_FILTER_KEYS})


def region_filter_config(section: dict[str, Any] | None = None) -> RegionFilterConfig:
    """The insertion filter (modes paste and insert) of a job's `filter` mapping over the schema's defaults."""
    merged = {**section_defaults("filter"), **(section or {})}
    return RegionFilterConfig(**{field: merged[key] for key, field in REGION_FILTER_KEYS.items()})


@dataclass(frozen=True)
class SynthesisConfig:
    """A job's `synthesis` block over the schema's defaults: the mode, the band and hole dilation (None: the
    generator's), and the placement options (augment.synthesis.insert_plan.PLAN_OPTIONS, every key filled)."""

    mode: str = schema_default("synthesis", "mode")
    band: int = schema_default("synthesis", "band")
    dilation: int | None = None
    placement: dict[str, Any] = field(default_factory=lambda: section_defaults_at("synthesis", "placement"))

    @property
    def inserts(self) -> bool:
        """Whether objects go into real hosts (paste, insert) rather than whole scenes being synthesised."""
        return self.mode != "scene"

    def fingerprint_fields(self) -> dict[str, Any]:
        """What the job's fingerprint records of it; nothing for mode scene, whose jobs keep version 1's
        fingerprint."""
        if not self.inserts:
            return {}
        return {"synthesis": {"mode": self.mode, "band": self.band, "dilation": self.dilation,
                              "placement": self.placement}}


@dataclass(frozen=True)
class Resources:
    """How a job runs. None of these changes the rows written except `samples_per_shard` (the file layout).
    `workers`, `gpus_per_worker` and `cpus_per_worker` left None are chosen from the cluster when the job runs."""

    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    batch_size: int = schema_default("resources", "batch_size")
    samples_per_shard: int = schema_default("resources", "samples_per_shard")
    max_shard_attempts: int = schema_default("resources", "max_shard_attempts")


@dataclass
class JobConfig:
    """A validated job file. `classes` (explicit quotas) and `balance_total` are mutually exclusive.

    `precision` is what the job file asks for ("auto", "fp32" or "bf16"); the job resolves "auto" once when it is
    prepared (augment.runner.job.prepare_job), and only the resolved value reaches workers and the fingerprint."""

    data: str
    generator: str | None
    segmenter: str
    output: str
    seed: int = schema_default("seed")
    classes: dict[str, int] | None = None
    balance_total: int | None = None
    balance_power: float = schema_default("balance", "power")
    filter: FilterConfig = field(default_factory=filter_config)
    region_filter: RegionFilterConfig = field(default_factory=region_filter_config)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    keep_rejected: bool = schema_default("keep_rejected")
    noise: str = schema_default("noise")
    precision: str = schema_default("precision")
    edits: dict[str, Any] = field(default_factory=lambda: schema_default("edits"))
    sheets: int = schema_default("sheets")
    resources: Resources = field(default_factory=Resources)
    source: str = "<job>"
    document: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dotted(path: list[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _schema_error_message(err: jsonschema.ValidationError) -> str:
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        known = list(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        hint = difflib.get_close_matches(extra[0], known, n=1)
        tip = f" (did you mean {hint[0]!r}?)" if hint else f"; known keys: {', '.join(known)}"
        return f"unknown key {_dotted(path + [extra[0]])!r}{tip}"
    if err.validator == "required":
        missing = next(k for k in err.validator_value if k not in err.instance)
        return f"missing required key {_dotted(path + [missing])!r}"
    return f"{_dotted(path)}: {err.message}"


def validate_document(doc: Any, source: str) -> None:
    """Raise AugmentError naming `source` and the key path of the first problem: an unknown (misspelt) key first,
    then the classes/balance rule, then the schema's other checks."""
    if not isinstance(doc, dict):
        raise AugmentError(
            f"{source}: a job file must be a mapping of keys (data, generator, ...), got {type(doc).__name__}"
        )
    validator = jsonschema.Draft202012Validator(job_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    unknown = [e for e in errors if e.validator == "additionalProperties"]
    if unknown:  # a misspelt key first: `clases:` is named (did you mean ...?) before the rules it breaks
        raise AugmentError(f"{source}: {_schema_error_message(unknown[0])}")
    has_classes, has_balance = "classes" in doc, "balance" in doc
    if has_classes == has_balance:
        which = "both" if has_classes else "neither"
        raise AugmentError(
            f"{source}: give exactly one of 'classes' (quotas per class) and 'balance' ({{total: N}}), got {which}"
        )
    if errors:
        raise AugmentError(f"{source}: {_schema_error_message(jsonschema.exceptions.best_match(errors))}")


PATH_KEYS = ("data", "generator", "segmenter", "output")
# Keys whose validated value is the JobConfig field as it is (absent: the field's default, the schema's).
PASSED_KEYS = ("seed", "classes", "keep_rejected", "noise", "precision", "edits", "sheets")


def _resolve_path(key: str, value: str, base: str | None, source: str) -> str:
    """`value` made absolute against the job file's folder `base`; None (a job file read from a URI) accepts only
    absolute paths and URIs."""
    if base is None and not (afs.is_uri(value) or os.path.isabs(os.path.expanduser(value))):
        raise AugmentError(f"{source}: {key} {value!r} is a relative path, but a job file read from a URI has no "
                           f"local folder to resolve it against; give an absolute path or a URI")
    return afs.absolute(value, base)


def job_from_document(doc: dict[str, Any], source: str = "<job>", base_dir: str | None = ".") -> JobConfig:
    """Validate a parsed job document; keys it leaves out take the schema's defaults. Relative local paths are
    resolved against `base_dir` (the job file's folder; "." is the current folder; None refuses them)."""
    doc = copy.deepcopy(doc)
    if isinstance(doc, dict) and isinstance(doc.get("classes"), dict):
        doc["classes"] = {str(k): v for k, v in doc["classes"].items()}
    validate_document(doc, source)
    synthesis = _synthesis_config(doc, source)
    base = None if base_dir is None else os.path.abspath(base_dir)
    given: dict[str, Any] = {key: _resolve_path(key, doc[key], base, source) for key in PATH_KEYS if key in doc}
    given.setdefault("generator", None)
    given.update({key: copy.deepcopy(doc[key]) for key in PASSED_KEYS if key in doc})
    if "balance" in doc:
        given["balance_total"] = doc["balance"]["total"]
        if "power" in doc["balance"]:
            given["balance_power"] = float(doc["balance"]["power"])
    if "filter" in doc:
        given["filter"] = filter_config(doc["filter"])
        given["region_filter"] = region_filter_config(doc["filter"])
    if "resources" in doc:
        given["resources"] = Resources(**doc["resources"])
    return JobConfig(**given, synthesis=synthesis, source=source, document=doc)


MODE_KEYS = {
    "scene": {"top": ("edits", "noise"), "filter": SCENE_FILTER_KEYS, "synthesis": ()},
    "paste": {"top": (), "filter": tuple(REGION_FILTER_KEYS), "synthesis": ("band", "placement")},
    "insert": {"top": (), "filter": tuple(REGION_FILTER_KEYS), "synthesis": ("band", "dilation", "placement")},
}
"""Per synthesis mode, the keys (top-level, in `filter`, in `synthesis`) that only it reads; `mode` is always
allowed."""


def _synthesis_config(doc: dict[str, Any], source: str) -> SynthesisConfig:
    """The validated document's synthesis block as a SynthesisConfig, refusing keys of another mode (module
    docstring) in one line naming the key."""
    block = doc.get("synthesis")
    if block is not None and doc.get("version", 1) != 2:
        raise AugmentError(f"{source}: a synthesis block needs 'version: 2' (this file is version "
                           f"{doc.get('version', 1)})")
    block = block or {}
    mode = block.get("mode", schema_default("synthesis", "mode"))
    for section, keys in (("top", [k for k in doc]), ("filter", list(doc.get("filter", {}))),
                          ("synthesis", [k for k in block if k != "mode"])):
        for key in keys:
            owners = [m for m, known in MODE_KEYS.items() if key in known[section]]
            if owners and mode not in owners:
                where = key if section == "top" else f"{section}.{key}"
                raise AugmentError(f"{source}: {where!r} applies to synthesis mode {' and '.join(owners)}, this job's "
                                   f"mode is {mode}; drop it or change synthesis.mode")
    if mode == "paste" and "generator" in doc:
        raise AugmentError(f"{source}: synthesis mode paste copies real pixels and uses no generator; drop "
                           f"'generator'")
    if mode != "paste" and "generator" not in doc:
        what = "a crop-mode generator (train-gan --crop)" if mode == "insert" else "a whole-scene generator"
        raise AugmentError(f"{source}: missing required key 'generator' (synthesis mode {mode} needs {what})")
    placement = {**section_defaults_at("synthesis", "placement"), **block.get("placement", {})}
    lo, hi = placement["scale_range"]
    if lo > hi:
        raise AugmentError(f"{source}: synthesis.placement.scale_range: [min, max] with min <= max, got {[lo, hi]}")
    return SynthesisConfig(mode=mode, band=block.get("band", schema_default("synthesis", "band")),
                           dilation=block.get("dilation"), placement=placement)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML/JSON document gives `key` twice, at lines `first` and `second` (1-based)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} at lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, at any depth (DuplicateKeyError); keys that
    come in through a merge (`<<: *base`) may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader refuses it itself
                continue
        return super().construct_mapping(node, deep)


def load_job(path: str) -> JobConfig:
    """Read and validate a YAML or JSON job file; AugmentError names the file and the offending key."""
    try:
        if "://" in path:
            filesystem, p = afs.resolve(path)
            text = afs.read_bytes(filesystem, p).decode()
            base_dir = None
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            base_dir = os.path.dirname(os.path.abspath(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise AugmentError(f"{path}: cannot read job file ({exc})") from None
    try:
        doc = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        where = f"lines {exc.first} and {exc.second}" if exc.first != exc.second else f"both on line {exc.first}"
        raise AugmentError(f"{path}: key {exc.key!r} is given twice ({where}); keep one (YAML would silently use "
                           f"the last)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AugmentError(f"{path}: not valid YAML/JSON{where}: {problem}") from None
    if doc is None:
        raise AugmentError(f"{path}: empty job file")
    return job_from_document(doc, source=path, base_dir=base_dir)
