"""The names of the files in a dataset folder besides its Parquet files: the one home of each name.

A dataset folder holds its Parquet files (ingest's `part-NNNNN-NNNN.parquet` at the root, a job's
`data/shard-NNNNN.<run>.parquet`) and, out of their way, what augment writes beside them::

    _dataset.json        classes, palette, counts, files and lineage: what augment reads (`INFO_FILE`)
    _quarantine.jsonl    the samples that could not be used, with the reason (`QUARANTINE_FILE`)
    _README.md           the dataset card for people, with the Hugging Face YAML header (`CARD_FILE`)
    .huggingface.yaml    the same YAML header alone, which `datasets.load_dataset(folder)` reads (`HF_YAML_FILE`)

(a job output has more, all named so too: augment.runner.markers). The names are chosen so that every common
reader opens the folder whole, as written, and gets exactly the dataset's rows; each rule below was checked
against the library itself:

- `pyarrow.dataset.dataset(folder)` reads every file as Parquet except those whose name, or the name of a folder
  above it, starts with "." or "_" (its default `ignore_prefixes`); a `README.md` or `dataset.json` at the root
  stops it ("Could not read schema").
- `ray.data.read_parquet(folder)` skips the same prefixes and reads only `*.parquet` files.
- DuckDB's `'folder/**/*.parquet'` matches every `*.parquet` file at any depth, hidden or not: a Parquet file that
  is not data (a job's contact-sheet examples) must not end in `.parquet`.
- `datasets.load_dataset(folder)` reads the YAML header from `README.md` or `.huggingface.yaml` at the root; its
  `configs` list the Parquet files of each split, so no sidecar is taken for data.

Folders written before these names (`dataset.json`, `quarantine.jsonl` at the root) are still read; only these
names are written.
"""

from __future__ import annotations

INFO_FILE = "_dataset.json"
QUARANTINE_FILE = "_quarantine.jsonl"
CARD_FILE = "_README.md"
HF_YAML_FILE = ".huggingface.yaml"
CARD_FILES = (CARD_FILE, HF_YAML_FILE)
LEGACY_INFO_FILE = "dataset.json"
LEGACY_QUARANTINE_FILE = "quarantine.jsonl"
INFO_FILES = (INFO_FILE, LEGACY_INFO_FILE)
"""Where a dataset's info may be, in the order it is looked for."""
LEGACY_NAMES = {INFO_FILE: LEGACY_INFO_FILE, QUARANTINE_FILE: LEGACY_QUARANTINE_FILE}
"""Each file's name in folders written before the names above."""

__all__ = [
    "CARD_FILE", "CARD_FILES", "HF_YAML_FILE", "INFO_FILE", "INFO_FILES", "LEGACY_INFO_FILE", "LEGACY_NAMES",
    "LEGACY_QUARANTINE_FILE", "QUARANTINE_FILE",
]
