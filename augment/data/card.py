"""The dataset card written into every dataset folder with its info: `_README.md` and `.huggingface.yaml`.

`_README.md` is a Hugging Face dataset card (a YAML header between `---` lines, then Markdown for people: rows per
split, classes and palette, lineage, how to open the folder with each tool); `.huggingface.yaml` is the same YAML
header alone. The header's `configs` name every split's Parquet files (`data_files`, paths relative to the folder)
and `dataset_info.features` the schema's columns, so `datasets.load_dataset(folder)` reads exactly the dataset's
rows, with image columns.

Why these names: see augment.data.layout (`datasets.load_dataset(folder)` reads the header from `README.md` or from
`.huggingface.yaml`; a `README.md` at the root would stop `pyarrow.dataset.dataset(folder)`). To publish a folder on
the Hugging Face Hub, upload `_README.md` as `README.md`.

Rendering only: what the card says comes from the DatasetInfo and each split's files (augment.data.dataset writes
the files atomically and records their sha256 in the info, which is how `--overwrite` tells its own card from a
user's).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from augment.data.layout import CARD_FILE, HF_YAML_FILE, INFO_FILE, QUARANTINE_FILE
from augment.data.schema import hf_yaml_features

EMPTY_SPLIT = "train"
"""The split a dataset without rows lists its files under (a job whose filter accepted nothing)."""
_HF_SPLIT = re.compile(r"^\w+(\.\w+)*$")


def hf_split_names(splits: list[str]) -> dict[str, str]:
    """{split: the name Hugging Face `datasets` knows it by}: the split itself where it is a valid HF split name
    (`\\w+(\\.\\w+)*`), else with every other character replaced by "_" (and "_2", "_3", ... where that collides)."""
    names: dict[str, str] = {}
    for split in sorted(splits, key=lambda s: (not _HF_SPLIT.match(s), s)):
        base = split if _HF_SPLIT.match(split) else re.sub(r"\W", "_", split).strip(".") or "split"
        name, k = base, 2
        while name in names.values():
            name, k = f"{base}_{k}", k + 1
        names[split] = name
    return names


def card_header(kind: str, files_by_split: dict[str, list[str]]) -> dict[str, Any]:
    """The card's YAML header: one `default` config whose `data_files` list each split's files, the schema's
    features, the task and tags."""
    names = hf_split_names(list(files_by_split))
    data_files = [{"split": names[s], "path": list(files)} for s, files in files_by_split.items()]
    tags = ["augment", "semantic-segmentation"] + (["synthetic"] if kind == "synthetic" else [])
    return {
        "configs": [{"config_name": "default", "data_files": data_files}],
        "dataset_info": {"features": hf_yaml_features(kind)},
        "task_categories": ["image-segmentation"],
        "tags": tags,
    }


def _code(value: Any) -> str:
    """`value` as Markdown inline code (JSON for anything but a string)."""
    text = value if isinstance(value, str) else json.dumps(value)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _split_table(info: Any, files_by_split: dict[str, list[str]]) -> list[str]:
    names = hf_split_names(list(files_by_split))
    lines = ["| split | rows | Parquet files |", "|---|---:|---:|"]
    for split, files in files_by_split.items():
        shown = split if names[split] == split else f"{split} (Hugging Face: {names[split]})"
        lines.append(f"| {shown} | {info.splits.get(split, 0)} | {len(files)} |")
    return lines


def _class_table(info: Any) -> list[str]:
    counts = info.extra.get("counts") if isinstance(info.extra.get("counts"), dict) else None
    header = "| index | class | colour (RGB) | images | pixels |"
    rule = "|---:|---|---|---:|---:|"
    if counts is not None:
        header, rule = header + " accepted | rejected |", rule + "---:|---:|"
    lines = [header, rule]
    for i, name in enumerate(info.classes):
        colour = ", ".join(str(c) for c in info.palette[i]) if i < len(info.palette) else "-"
        images = info.class_images[i] if i < len(info.class_images) else 0
        pixels = info.class_pixels[i] if i < len(info.class_pixels) else 0
        line = f"| {i} | {name} | {colour} | {images} | {pixels} |"
        if counts is not None:
            c = counts.get(name, {})
            line += f" {c.get('accepted', 0)} | {c.get('rejected', 0)} |"
        lines.append(line)
    return lines


def _sizes(info: Any) -> str:
    if len(info.sizes) == 1:
        return f"{info.sizes[0]['height']}x{info.sizes[0]['width']}"
    return ", ".join(f"{s['height']}x{s['width']} ({s['rows']} rows)" for s in info.sizes) or "-"


def _how_to_open(name: str, split: str) -> list[str]:
    return [
        "```python",
        "import pyarrow.dataset, datasets, duckdb, ray, augment",
        f'pyarrow.dataset.dataset("{name}").to_table()                 # pyarrow',
        f'datasets.load_dataset("{name}", split="{split}")              # Hugging Face datasets',
        f'duckdb.sql("SELECT count(*) FROM \'{name}/**/*.parquet\'")   # DuckDB',
        f'ray.data.read_parquet("{name}")                               # Ray Data',
        f'augment.open_dataset("{name}").to_torch()                     # a torch Dataset of (image, mask)',
        "```",
    ]


def render_card(info: Any, files_by_split: dict[str, list[str]], name: str) -> tuple[str, str]:
    """(`_README.md`, `.huggingface.yaml`) of the dataset `info` (an augment.data.dataset.DatasetInfo, quarantine
    count and created_at set) whose splits hold `files_by_split` (relative paths), in a folder called `name`."""
    header = yaml.safe_dump(card_header(info.kind, files_by_split), sort_keys=False)
    what = ("synthetic images an augmentation job made from label maps (the mask is the label map the image was "
            "generated from)" if info.kind == "synthetic" else "labelled images")
    hf_names = list(hf_split_names(list(files_by_split)).values()) or [EMPTY_SPLIT]
    shown_split = "train" if "train" in hf_names else hf_names[0]
    lines = [
        f"# {name}", "",
        f"An augment dataset of {what}: {info.num_rows} rows, image size {_sizes(info)}, "
        f"{info.num_classes} classes, written {info.created_at or '-'}. Each row holds `image` and `mask` as "
        f"encoded PNG (Hugging Face's Image layout `{{bytes, path}}`), `height`, `width`, `split` and "
        f"`class_pixels` (pixels per class).", "",
        "## Rows per split", "", *_split_table(info, files_by_split), "",
    ]
    if info.quarantined:
        lines += [f"{info.quarantined} samples could not be used and are listed, with the reason, in "
                  f"`{QUARANTINE_FILE}`.", ""]
    lines += [
        "## Classes", "",
        f"Masks are single-channel PNGs holding each pixel's class index; {info.ignore_index} marks unlabelled "
        f"pixels. The colour is the class's colour in contact sheets and previews.", "",
        *_class_table(info), "",
        "## Lineage", "",
        *(f"- {key}: {_code(value)}" for key, value in info.lineage.items()), "",
        "## How to open it", "",
        *_how_to_open(name, shown_split), "",
        f"The Parquet files hold the rows; `{INFO_FILE}` holds the classes, counts and lineage augment reads "
        f"(`augment info`, `augment verify`). `{HF_YAML_FILE}` holds this card's YAML header, which "
        f"`datasets.load_dataset` reads; the card is `{CARD_FILE}` rather than `README.md` because "
        f"`pyarrow.dataset` would take a `README.md` for data. To publish the folder on the Hugging Face Hub, "
        f"upload this file as `README.md`.",
    ]
    return f"---\n{header}---\n\n" + "\n".join(lines) + "\n", header


__all__ = ["EMPTY_SPLIT", "card_header", "hf_split_names", "render_card"]
