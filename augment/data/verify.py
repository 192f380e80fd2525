"""Checking a dataset on disk without using it: what `augment verify` does for any folder with a dataset info file
(`_dataset.json`, or `dataset.json` as written before that name).

`verify_dataset` checks that every file the info lists exists and has the dataset's schema, reads each one in
full (row group by row group, so memory holds one row group) with Parquet page checksum verification, and compares
what the files hold with what the info says: the row count, the rows per image size and per split, and that ids
are unique; a dataset card that no longer has the content written with the dataset is noted (not a problem: the
rows are what counts). Every finding is one line, printed as it is found and kept in a `Findings`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from augment.data import fs as afs
from augment.data.dataset import Dataset, open_parquet, own_card_files
from augment.data.schema import check_schema
from augment.core.errors import AugmentError


@dataclass
class Findings:
    """The one-line results of a verification: checks that passed, problems, and notes (neither)."""

    prefix: str = ""
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.checked.append(line)
        print(f"{self.prefix}ok: {line}", flush=True)

    def problem(self, line: str) -> None:
        self.problems.append(line)
        print(f"{self.prefix}problem: {line}", flush=True)

    def note(self, line: str) -> None:
        self.notes.append(line)
        print(f"{self.prefix}note: {line}", flush=True)


@dataclass
class _Content:
    """What the files of a dataset hold, tallied while reading them."""

    rows: int = 0
    sizes: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)
    ids: Counter[str] = field(default_factory=Counter)


def _read_file(ds: Dataset, relative: str, content: _Content) -> str | None:
    """Read one listed file in full into `content`; returns the problem as one line, or None."""
    path = afs.join(ds.path, relative)
    if not afs.exists(ds.fs, path):
        return f"{relative}: listed in {ds.info_name} but missing"
    try:
        with ds.fs.open_input_file(path) as handle:
            parquet = open_parquet(handle)
            check_schema(parquet.schema_arrow, ds.schema_name, source=relative)
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g)
                content.rows += table.num_rows
                heights, widths = table.column("height").to_pylist(), table.column("width").to_pylist()
                content.sizes.update(f"{h}x{w}" for h, w in zip(heights, widths))
                content.splits.update(table.column("split").to_pylist())
                content.ids.update(table.column("id").to_pylist())
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError; a bad page CRC an OSError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{relative}: unreadable ({reason})"
    return None


def verify_dataset(uri: str, found: Findings) -> None:
    """Check the dataset at `uri` (see the module docstring); adds to `found`."""
    try:
        ds = Dataset(uri)
    except AugmentError as exc:
        found.problem(str(exc))
        return
    info = ds.info
    content = _Content()
    unreadable = [p for rel in info.files if (p := _read_file(ds, rel, content)) is not None]
    for problem in unreadable:
        found.problem(problem)
    if unreadable:
        return
    found.ok(f"{len(info.files)} files: present, schema {ds.schema_name!r}, every page checksum verified")
    listed_sizes = {f"{s['height']}x{s['width']}": s["rows"] for s in info.sizes}
    checks = [
        ("rows", content.rows, info.num_rows),
        ("rows per image size", dict(content.sizes), listed_sizes),
        ("rows per split", dict(content.splits), info.splits),
    ]
    for what, held, said in checks:
        if held == said:
            found.ok(f"{what}: {held} as {ds.info_name} says")
        else:
            found.problem(f"{what}: the files hold {held}, {ds.info_name} says {said}")
    duplicates = [i for i, n in content.ids.items() if n > 1]
    if duplicates:
        found.problem(f"ids: {len(duplicates)} appear more than once (first {duplicates[0]!r})")
    else:
        found.ok(f"ids: {len(content.ids)} unique")
    changed = sorted(set(info.card) - set(own_card_files(ds.fs, ds.path, info)))
    if changed:
        found.note(f"dataset card {', '.join(changed)}: missing or changed since it was written with the dataset")


__all__ = ["Findings", "verify_dataset"]
