"""The Python API for one's own code: `augment.open_dataset(path)`.

`open_dataset(uri)` opens a dataset folder augment wrote (ingested, an augmentation job's output, a subset; a local
folder or a pyarrow URI; written with either layout, see augment.data.layout) and returns an `OpenedDataset`: the
dataset (augment.data.dataset.Dataset: `info`, `len()`, `iter_samples()`, `arrow`, `files`, `uris`) plus

    classes, palette, ignore_index, splits   from its info
    to_arrow(columns)                        a pyarrow Table of its rows (page checksums verified)
    to_torch(transform, normalization)       a map-style torch.utils.data.Dataset of (image, mask) tensors: the rows
                                             train-seg trains on (augment.training.data.SampleDataset)
    to_hf(split)                             a Hugging Face datasets.Dataset with image columns (needs `datasets`)

torch and `datasets` are imported only by the calls that need them. Errors are AugmentError (one line).
"""

from __future__ import annotations

from typing import Any

from augment.core.errors import AugmentError
from augment.data.dataset import Dataset


class OpenedDataset(Dataset):
    """A dataset opened with `augment.open_dataset` (see the module docstring)."""

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def palette(self) -> list[list[int]]:
        """One RGB colour per class, in class order."""
        return [list(c) for c in self.info.palette]

    @property
    def ignore_index(self) -> int:
        """The mask value of unlabelled pixels."""
        return self.info.ignore_index

    @property
    def splits(self) -> dict[str, int]:
        """{split: rows}."""
        return dict(self.info.splits)

    def to_arrow(self, columns: list[str] | None = None) -> Any:
        """The rows (all columns, or `columns`) as one pyarrow Table, in file order."""
        return self.arrow.to_table(columns=columns)

    def to_torch(self, transform: Any = None, normalization: str | None = None, cache: int = 4) -> Any:
        """A map-style torch Dataset of (image, mask): image uint8 3×H×W (float32 with `normalization` "imagenet" or
        "tanh"), mask int64 H×W; `transform` is a joint image + mask transform (torchvision.transforms.v2). A
        synthetic dataset's rows rejected by the filter are left out, as in training. See
        augment.training.data.SampleDataset (also for what random access reads)."""
        from augment.training.data import SampleDataset

        return SampleDataset(self, transform=transform, normalization=normalization, cache=cache)

    def to_hf(self, split: str | None = None, cache_dir: str | None = None) -> Any:
        """The rows (of `split` only, when given) as a Hugging Face `datasets.Dataset`, its `image` and `mask`
        columns decoding to PIL images; built from the Parquet files (`datasets.Dataset.from_parquet`, which keeps
        an Arrow copy in its cache, `cache_dir` or the HF default)."""
        try:
            import datasets
        except ImportError:
            raise AugmentError(f"{self.uri}: to_hf() needs the Hugging Face `datasets` package "
                               f"(python3 -m pip install datasets)") from None
        if split is not None and split not in self.info.splits:
            raise AugmentError(f"{self.uri}: no split {split!r} (splits: {', '.join(self.info.splits) or 'none'})")
        out = datasets.Dataset.from_parquet(self.uris, cache_dir=cache_dir)
        return out if split is None else out.filter(lambda s: s == split, input_columns="split")


def open_dataset(uri: str) -> OpenedDataset:
    """Open the augment dataset at `uri` (a folder or pyarrow URI); AugmentError (one line) when it is not one."""
    return OpenedDataset(uri)


__all__ = ["OpenedDataset", "open_dataset"]
