"""Arrow schemas of our Parquet datasets, built from the versioned specs in `schemas/`.

`image` and `mask` use HuggingFace `datasets`' Image layout, a struct {bytes, path}, and the schema carries that
library's feature metadata, so a dataset also opens there with image columns.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "image": IMAGE_STRUCT,
    "list<int64>": pa.list_(pa.int64()),
}
_HF_FEATURES: dict[str, dict[str, Any]] = {
    "string": {"dtype": "string", "_type": "Value"},
    "int32": {"dtype": "int32", "_type": "Value"},
    "int64": {"dtype": "int64", "_type": "Value"},
    "float32": {"dtype": "float32", "_type": "Value"},
    "bool": {"dtype": "bool", "_type": "Value"},
    "image": {"_type": "Image"},
    "list<int64>": {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "List"},
}
_HF_YAML_FEATURES: dict[str, dict[str, str]] = {"image": {"dtype": "image"}, "list<int64>": {"list": "int64"}}
"""The types whose entry in a dataset card's YAML `dataset_info.features` is not `{dtype: <type>}`."""


def load_spec(name: str, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON spec `schemas/<name>-v<version>.json`."""
    path = resources.files("augment.schemas") / f"{name}-v{version}.json"
    if not path.is_file():
        raise ValueError(f"no schema {name!r} version {version}")
    return json.loads(path.read_text())


def spec_fields(name: str, version: int = SCHEMA_VERSION) -> list[dict[str, Any]]:
    spec = load_spec(name, version)
    base = spec_fields(spec["extends"], version) if "extends" in spec else []
    return base + spec["fields"]


@lru_cache(maxsize=None)
def arrow_schema(name: str = "sample", version: int = SCHEMA_VERSION) -> pa.Schema:
    """Arrow schema for `name` ('sample' or 'synthetic'), with HuggingFace feature metadata."""
    fields = spec_fields(name, version)
    arrow_fields = [
        pa.field(f["name"], _ARROW_TYPES[f["type"]], nullable=f.get("nullable", True)) for f in fields
    ]
    features = {f["name"]: _HF_FEATURES[f["type"]] for f in fields}
    metadata = {
        b"huggingface": json.dumps({"info": {"features": features}}).encode(),
        b"augment": json.dumps({"schema": name, "version": version}).encode(),
    }
    return pa.schema(arrow_fields, metadata=metadata)


def hf_yaml_features(name: str = "sample", version: int = SCHEMA_VERSION) -> list[dict[str, str]]:
    """The columns of schema `name` as a Hugging Face dataset card's YAML `dataset_info.features` list
    (`{name, dtype}`, `{name, list}`): the same features as the Parquet files' own metadata."""
    return [{"name": f["name"], **_HF_YAML_FEATURES.get(f["type"], {"dtype": f["type"]})}
            for f in spec_fields(name, version)]


def check_schema(actual: pa.Schema, name: str, source: str = "") -> None:
    """Raise ValueError naming the first field that differs from the expected schema."""
    expected = arrow_schema(name)
    for field in expected:
        idx = actual.get_field_index(field.name)
        if idx < 0:
            raise ValueError(f"{source}: missing column {field.name!r} of schema {name!r}")
        if not actual.field(idx).type.equals(field.type):
            raise ValueError(
                f"{source}: column {field.name!r} has type {actual.field(idx).type}, schema {name!r} wants {field.type}"
            )
