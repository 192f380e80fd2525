"""Rows of a dataset by id, reading only the row groups that hold the ids asked for.

`RowLookup` builds its index (id -> file, row group) once from the `id` column, so a job never scans a whole image or
mask column, however large the dataset; `read` returns the encoded bytes of the columns asked for. `LabelMaps` is a
read-only mapping id -> decoded label map over it, keeping at most `cache` decoded maps (least recently used first
out), so planning over a dataset holds a bounded number of maps in memory whatever its size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from augment.data.codec import decode_mask
from augment.data.dataset import Dataset, open_parquet

ENCODED_COLUMNS = ("image", "mask")


class RowLookup:
    """Encoded images and masks of `dataset`'s rows by id (module docstring)."""

    def __init__(self, dataset: Dataset, ids: Iterable[str] | None = None) -> None:
        """Index every row, or only `ids` when given (ids the dataset lacks are simply not indexed)."""
        self.dataset = dataset
        wanted = None if ids is None else set(ids)
        self.index: dict[str, tuple[int, int]] = {}
        for f, path in enumerate(dataset.files):
            with dataset.fs.open_input_file(path) as handle:
                parquet = open_parquet(handle)
                for g in range(parquet.num_row_groups):
                    for sample_id in parquet.read_row_group(g, columns=["id"]).column("id").to_pylist():
                        if wanted is None or sample_id in wanted:
                            self.index[sample_id] = (f, g)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.index

    def ids(self) -> list[str]:
        """The indexed ids, sorted."""
        return sorted(self.index)

    def read(self, ids: Iterable[str], columns: tuple[str, ...] = ("mask",)) -> dict[str, dict[str, bytes]]:
        """{id: {column: encoded bytes}} of `columns` (of ENCODED_COLUMNS) for the ids found; missing ids are left
        out."""
        unknown = [c for c in columns if c not in ENCODED_COLUMNS]
        if unknown:
            raise ValueError(f"RowLookup reads {ENCODED_COLUMNS}, not {unknown}")
        wanted = set(ids)
        groups: dict[int, set[int]] = {}
        for sample_id in wanted:
            if sample_id in self.index:
                f, g = self.index[sample_id]
                groups.setdefault(f, set()).add(g)
        out: dict[str, dict[str, bytes]] = {}
        for f, row_groups in sorted(groups.items()):
            with self.dataset.fs.open_input_file(self.dataset.files[f]) as handle:
                table = open_parquet(handle).read_row_groups(sorted(row_groups), columns=["id", *columns])
            values = {c: table.column(c).combine_chunks().field("bytes").to_pylist() for c in columns}
            for i, sample_id in enumerate(table.column("id").to_pylist()):
                if sample_id in wanted:
                    out[sample_id] = {c: values[c][i] for c in columns}
        return out

    def masks(self, ids: Iterable[str]) -> dict[str, bytes]:
        """{id: mask PNG bytes} for the ids found."""
        return {k: v["mask"] for k, v in self.read(ids).items()}


class LabelMaps(Mapping[str, np.ndarray]):
    """id -> decoded label map (H x W uint8) of the rows `lookup` indexes, decoding on demand and keeping the last
    `cache` maps used. A map that does not decode raises BadSample naming the dataset and row."""

    def __init__(self, lookup: RowLookup, cache: int = 4096) -> None:
        self.lookup = lookup
        self.cache = max(1, cache)
        self._ids = lookup.ids()
        self._decoded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._groups: dict[tuple[int, int], list[str]] = {}
        for sample_id, where in lookup.index.items():
            self._groups.setdefault(where, []).append(sample_id)
        self._encoded: dict[str, bytes] = {}  # the masks of the row group read last (a scan reads each group once)

    def __getitem__(self, sample_id: str) -> np.ndarray:
        if sample_id in self._decoded:
            self._decoded.move_to_end(sample_id)
            return self._decoded[sample_id]
        if sample_id not in self.lookup:
            raise KeyError(sample_id)
        if sample_id not in self._encoded:
            self._encoded = self.lookup.masks(self._groups[self.lookup.index[sample_id]])
        data = self._encoded[sample_id]
        mask = decode_mask(data, f"{self.lookup.dataset.uri} row {sample_id}")
        self._decoded[sample_id] = mask
        if len(self._decoded) > self.cache:
            self._decoded.popitem(last=False)
        return mask

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)
