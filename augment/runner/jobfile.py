"""Job files: YAML or JSON validated against `schemas/job-v1.schema.json`, loaded into a `JobConfig` with defaults.

The schema is the one home of every default and range: the dataclasses below take their defaults from it
(`schema_default`), and a key the job file leaves out is simply not passed, so no value is restated here. The
filter thresholds travel as one frozen `FilterConfig` (augment.filtering.quality) built here, once.

Relative local paths in a job file are taken relative to the job file's folder (so a job file and its data can move
together, and `ray job submit --working-dir .` finds them) and made absolute on the driver; URIs (s3://...) are kept
as they are. A job file read from a URI has no local folder: its local paths must be absolute. Class quota keys
may be names or indices (`{pedestrian: 100, 9: 50}`).
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

SCHEMA_FILE = "job-v1.schema.json"


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
    return {k: copy.deepcopy(v["default"]) for k, v in _schema_node((section,))["properties"].items()
            if "default" in v}


def filter_config(section: dict[str, Any] | None = None) -> FilterConfig:
    """A job file's `filter` mapping (already validated against the schema) over the schema's defaults."""
    return FilterConfig(**{**section_defaults("filter"), **(section or {})})


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
    generator: str
    segmenter: str
    output: str
    seed: int = schema_default("seed")
    classes: dict[str, int] | None = None
    balance_total: int | None = None
    balance_power: float = schema_default("balance", "power")
    filter: FilterConfig = field(default_factory=filter_config)
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
    """Raise AugmentError naming `source` and the key path of the first problem."""
    if not isinstance(doc, dict):
        raise AugmentError(
            f"{source}: a job file must be a mapping of keys (data, generator, ...), got {type(doc).__name__}"
        )
    has_classes, has_balance = "classes" in doc, "balance" in doc
    if has_classes == has_balance:
        which = "both" if has_classes else "neither"
        raise AugmentError(
            f"{source}: give exactly one of 'classes' (quotas per class) and 'balance' ({{total: N}}), got {which}"
        )
    validator = jsonschema.Draft202012Validator(job_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
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
    base = None if base_dir is None else os.path.abspath(base_dir)
    given: dict[str, Any] = {key: _resolve_path(key, doc[key], base, source) for key in PATH_KEYS}
    given.update({key: copy.deepcopy(doc[key]) for key in PASSED_KEYS if key in doc})
    if "balance" in doc:
        given["balance_total"] = doc["balance"]["total"]
        if "power" in doc["balance"]:
            given["balance_power"] = float(doc["balance"]["power"])
    if "filter" in doc:
        given["filter"] = filter_config(doc["filter"])
    if "resources" in doc:
        given["resources"] = Resources(**doc["resources"])
    return JobConfig(**given, source=source, document=doc)


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
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AugmentError(f"{path}: not valid YAML/JSON{where}: {problem}") from None
    if doc is None:
        raise AugmentError(f"{path}: empty job file")
    return job_from_document(doc, source=path, base_dir=base_dir)
