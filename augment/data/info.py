"""The `augment info` table: a dataset's rows, sizes, splits, classes with their pixel and image shares, and lineage."""

from __future__ import annotations

import json
from typing import Any

from augment.data.dataset import Dataset, DatasetInfo

_LINEAGE_WIDTH = 110


def _megabytes(ds: Dataset) -> float:
    return sum(ds.fs.get_file_info(path).size or 0 for path in ds.files) / 1e6


def _sizes(info: DatasetInfo) -> str:
    if not info.sizes:
        return "-"
    parts = [f"{s['height']}x{s['width']}" + (f" ({s['rows']} rows)" if len(info.sizes) > 1 else "")
             for s in info.sizes]
    return ", ".join(parts) + " (HxW)"


def _lineage_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _LINEAGE_WIDTH else text[: _LINEAGE_WIDTH - 3] + "..."


def class_table(info: DatasetInfo) -> list[str]:
    """One line per class: index, name, share of all pixels, share of images (and accept counts if present)."""
    total_pixels = sum(s["height"] * s["width"] * s["rows"] for s in info.sizes)
    counts = info.extra.get("counts") if isinstance(info.extra.get("counts"), dict) else None
    width = max(len(c) for c in info.classes + ["class"])
    header = f"  {'idx':>3}  {'class':<{width}}  {'pixels':>7}  {'images':>7}"
    if counts is not None:
        header += f"  {'accepted':>8}  {'rejected':>8}"
    lines = [header]
    for i, name in enumerate(info.classes):
        pixels = info.class_pixels[i] / total_pixels if total_pixels else 0.0
        images = info.class_images[i] / info.num_rows if info.num_rows else 0.0
        line = f"  {i:>3}  {name:<{width}}  {pixels:>7.1%}  {images:>7.1%}"
        if counts is not None:
            c = counts.get(name, {})
            line += f"  {c.get('accepted', 0):>8}  {c.get('rejected', 0):>8}"
        lines.append(line)
    ignored = 1.0 - sum(info.class_pixels) / total_pixels if total_pixels else 0.0
    lines.append(f"  {info.ignore_index:>3}  {'(ignore)':<{width}}  {ignored:>7.1%}")
    return lines


def format_info(ds: Dataset) -> str:
    info = ds.info
    splits = ", ".join(f"{name} {rows}" for name, rows in info.splits.items()) or "-"
    lines = [
        f"dataset      {ds.uri}",
        f"kind         {info.kind} (schema v{info.schema_version}), created {info.created_at or '?'}",
        f"rows         {info.num_rows}",
        f"splits       {splits}",
        f"image size   {_sizes(info)}",
        f"files        {len(info.files)} Parquet file(s), {_megabytes(ds):.1f} MB",
        f"quarantined  {info.quarantined}",
    ]
    lines += [f"lineage      {key}: {_lineage_value(value)}" for key, value in info.lineage.items()]
    lines += ["", f"classes      {info.num_classes} (ignore index {info.ignore_index})", *class_table(info)]
    return "\n".join(lines)
