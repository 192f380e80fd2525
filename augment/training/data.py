"""Training and evaluation data streams, shared by the segmenter and GAN trainers.

Training (distributed):
    on the driver, one `TrainingStream` per source, `training_stream(ds, transform, seed, index)`: the dataset's
    Parquet row-group slices ("read units"), the per-sample transform and the run's seed; it travels to the Ray
    Train workers in the loop's config;
    in each Ray Train worker, `BatchMixer([(stream, weight), ...], batch, device, rank=, world=)` draws fixed
    shares of every batch from the streams: e.g. weights (0.7, 0.3) make 30% of each batch synthetic. The first
    stream defines the epoch; the others cycle. Every pass over a stream is a Ray Data pipeline the worker runs
    itself over its own run of rows, read, decoded and transformed in Ray Data tasks (no dataset is ever loaded
    whole), in an order and with augmentations drawn from the run's seed (see `TrainingStream` and
    augment.training.seeding): the same seed and worker count give the same batches.

Evaluation (one process, no Ray): `iter_eval_batches(open_dataset(uri), ...)` streams with pyarrow.

One's own loop: `SampleDataset(ds)` (what `augment.open_dataset(uri).to_torch()` returns) is a map-style
`torch.utils.data.Dataset` of the rows train-seg trains on, decoded as the trainers decode them.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from torchvision.transforms.v2 import functional as TF

from augment.data.dataset import Dataset, DatasetInfo, decode_row, open_dataset, open_parquet
from augment.core.errors import DatasetError
from augment.training.seeding import derive_seed, seeded_rng
from augment.training.transforms import NORMALIZATIONS, JointTransform, apply_joint, normalize

COLUMNS = ["id", "image", "mask"]


@dataclass
class Source:
    """A training dataset and its share of every batch (weights are normalised over all sources)."""

    uri: str
    weight: float = 1.0


def open_sources(sources: Sequence[Source | str]) -> list[tuple[Dataset, float]]:
    """Open every source, refusing empty ones, bad weights, and datasets whose classes differ."""
    if not sources:
        raise DatasetError("no training dataset given")
    opened = []
    for s in sources:
        s = Source(s) if isinstance(s, str) else s
        if not (s.weight > 0 and math.isfinite(s.weight)):
            raise DatasetError(f"{s.uri}: batch share weight must be > 0, got {s.weight}")
        ds = open_dataset(s.uri)
        if ds.info.num_rows == 0:
            raise DatasetError(f"{s.uri}: dataset has no rows")
        opened.append((ds, float(s.weight)))
    common_classes([ds for ds, _ in opened])
    return opened


def common_classes(datasets: Sequence[Dataset]) -> DatasetInfo:
    """The first dataset's info, after checking that all datasets share classes and ignore index."""
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.info.classes != first.info.classes:
            raise DatasetError(
                f"{ds.uri} has classes {ds.info.classes}, but {first.uri} has {first.info.classes}; "
                "datasets trained together must share one class list"
            )
        if ds.info.ignore_index != first.info.ignore_index:
            raise DatasetError(
                f"{ds.uri} uses ignore index {ds.info.ignore_index}, {first.uri} uses {first.info.ignore_index}"
            )
    return first.info


def common_size(datasets: Sequence[Dataset]) -> tuple[int, int]:
    """The one image size all datasets share; refuses mixed sizes (the caller should then ask for --size)."""
    sizes = {ds.uri: ds.info.image_size for ds in datasets}
    distinct = set(sizes.values())
    if None in distinct or len(distinct) != 1:
        detail = ", ".join(
            f"{uri}: {'x'.join(map(str, s)) if s else 'mixed sizes'}" for uri, s in sizes.items()
        )
        raise DatasetError(f"images differ in size ({detail}); choose a training size with --size HxW")
    return distinct.pop()


def _decode_batch(
    batch: pa.Table, transform: JointTransform | None, source: str, sample_key: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Decode and transform rows; with `sample_key`, each row's transform draws from the generator seeded with
    derive_seed(*sample_key, row id), so its augmentation depends on the key and the sample alone."""
    images, masks = [], []
    for row in batch.to_pylist():
        sample = decode_row(row, source=source)
        seed = derive_seed(*sample_key, row["id"]) if sample_key is not None and transform is not None else None
        with seeded_rng(seed):
            img, msk = apply_joint(transform, sample["image"], sample["mask"])
        images.append(img.numpy())
        masks.append(msk.numpy())
    shapes = {m.shape for m in masks}
    if len(shapes) > 1:
        raise DatasetError(
            f"{source}: transformed samples differ in size {sorted(shapes)}; the training transform must "
            "produce one size"
        )
    return {"image": np.stack(images), "mask": np.stack(masks)}


def read_units(ds: Dataset, rows_per_unit: int = 16) -> list[dict[str, Any]]:
    """The dataset cut into read units {path, row_group, start, stop} of at most `rows_per_unit` rows.

    A synthetic dataset contributes only its accepted rows: rows the quality filter rejected (present when the
    job kept them, `accepted` false) fall between units, found by reading the `accepted` column alone.
    """
    synthetic = ds.info.kind == "synthetic"
    units = []
    for path in ds.files:
        with ds.fs.open_input_file(path) as f:
            parquet = open_parquet(f)
            for rg in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(rg).num_rows
                runs = [(0, n)]
                if synthetic:
                    runs = _true_runs(parquet.read_row_group(rg, columns=["accepted"]).column(0))
                units += [{"path": path, "row_group": rg, "start": a, "stop": min(a + rows_per_unit, stop)}
                          for start, stop in runs for a in range(start, stop, rows_per_unit)]
    return units


class SampleDataset(torch.utils.data.Dataset):
    """A dataset's rows as a map-style torch Dataset of (image, mask): image uint8 3×H×W (float32 3×H×W with
    `normalization` "imagenet" or "tanh", see augment.training.transforms.normalize), mask int64 H×W (class indices,
    the dataset's ignore index where unlabelled).

    The rows are those train-seg trains on (`read_units`): all of them, except a synthetic dataset's rows the quality
    filter rejected (present when its job kept them), in file order. Each sample is decoded and, with `transform`
    (a joint image + mask transform, e.g. torchvision.transforms.v2 or `train_transform`), transformed as in training
    (`decode_row`, `apply_joint`). Sample i is read with the Parquet row group that holds it; the last `cache` row
    groups read are kept (not pickled: each DataLoader worker keeps its own), so reading in order reads each row
    group once, while a uniformly shuffled sampler reads about one row group per sample.
    """

    def __init__(self, ds: Dataset, transform: JointTransform | None = None, normalization: str | None = None,
                 cache: int = 4) -> None:
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise DatasetError(f"normalization must be None or one of {', '.join(NORMALIZATIONS)}, got "
                               f"{normalization!r}")
        self.uri, self.filesystem = ds.uri, ds.fs
        self.transform, self.normalization, self.cache = transform, normalization, max(1, cache)
        self.units = read_units(ds, rows_per_unit=2**62)  # one unit per run of rows: the index stays small
        self.starts = np.cumsum([0] + [u["stop"] - u["start"] for u in self.units]).tolist()
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.uri}: sample {index} out of range (the dataset has {len(self)})")
        index %= len(self)
        k = bisect.bisect_right(self.starts, index) - 1
        unit = self.units[k]
        row = self._row_group(unit["path"], unit["row_group"]).slice(unit["start"] + index - self.starts[k], 1)
        sample = decode_row(row.to_pylist()[0], source=self.uri)
        image, mask = apply_joint(self.transform, sample["image"], sample["mask"])
        if self.normalization is not None:
            image = normalize(image, self.normalization)
        return image, mask.long()

    def _row_group(self, path: str, row_group: int) -> pa.Table:
        key = (path, row_group)
        if key not in self._groups:
            with self.filesystem.open_input_file(path) as f:
                self._groups[key] = open_parquet(f).read_row_group(row_group, columns=COLUMNS)
            while len(self._groups) > self.cache:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_groups": OrderedDict()}


def _true_runs(flags: pa.ChunkedArray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive true values (nulls count as false)."""
    values = np.asarray(flags.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], values, [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def row_run(units: Sequence[dict[str, Any]], start: int, count: int) -> list[dict[str, Any]]:
    """The read units covering rows [start, start + count) of the row sequence `units` spell out, the first and
    last cut to fit."""
    out, pos, end = [], 0, start + count
    for u in units:
        n = u["stop"] - u["start"]
        a, b = max(start, pos), min(end, pos + n)
        if a < b:
            out.append({**u, "start": u["start"] + a - pos, "stop": u["start"] + b - pos})
        pos += n
        if pos >= end:
            break
    return out


def _read_and_decode(
    units: dict[str, np.ndarray], filesystem: Any, transform: JointTransform | None, source: str,
    sample_key: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    tables = []
    for path, rg, start, stop in zip(units["path"], units["row_group"], units["start"], units["stop"]):
        with filesystem.open_input_file(str(path)) as f:
            table = open_parquet(f).read_row_group(int(rg), columns=COLUMNS)
        tables.append(table.slice(int(start), int(stop - start)))
    return _decode_batch(pa.concat_tables(tables), transform, source, sample_key)


@dataclass
class TrainingStream:
    """One training dataset as the train workers read it, one pass (epoch) after another.

    Built on the driver by `training_stream` and sent to the workers (it pickles: read units, filesystem,
    transform). A pass is named by a key of integers (the epoch). Its order: all read units permuted with
    derive_seed(seed, "order", index, *key), the same on every rank; that row sequence is cut into `world` runs of
    rows // world rows (the remaining rows sit this pass out) and rank r reads run r, in order (Ray Data's
    `preserve_order`), through a local shuffle buffer seeded per (seed, index, key, rank). Each sample is
    transformed on a generator seeded from (seed, index, key, sample id). So a pass is the same for the same seed,
    key and worker count, whichever Ray Data tasks decode it; `seed` None draws everything unseeded.
    `index` is the stream's place in a mix, so two streams of one run draw independently.
    """

    uri: str
    filesystem: Any
    units: list[dict[str, Any]]
    transform: JointTransform | None
    seed: int | None = None
    index: int = 0

    @property
    def rows(self) -> int:
        return sum(u["stop"] - u["start"] for u in self.units)

    def pass_units(self, key: Sequence[int], rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
        """The read units of rank `rank`'s run of rows in pass `key`, in reading order."""
        seed = None if self.seed is None else derive_seed(self.seed, "order", self.index, *key)
        order = np.random.default_rng(seed).permutation(len(self.units))
        share = self.rows // world
        return row_run([self.units[i] for i in order], rank * share, share)

    def dataset(self, key: Sequence[int] = (0,), rank: int = 0, world: int = 1) -> Any:
        """The lazily read `ray.data.Dataset` of {'image': uint8 3×h×w, 'mask': uint8 h×w} of one rank's run of one
        pass. Each Ray Data task reads and decodes one unit (a slice of a Parquet row group), so memory holds a
        few units at a time. A row that cannot be decoded fails the run naming its dataset and id (rows were
        validated at ingest, so that is damage, not noise)."""
        import ray.data

        units = self.pass_units(key, rank, world)
        if not units:
            raise DatasetError(f"{self.uri}: {self.rows} rows leave none for worker {rank} of {world}")
        sample_key = None if self.seed is None else [self.seed, self.index, *key]
        out = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            _read_and_decode,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"filesystem": self.filesystem, "transform": self.transform, "source": self.uri,
                       "sample_key": sample_key},
        )
        out.context.execution_options.preserve_order = True
        out.context.enable_progress_bars = False  # the trainers print their own progress: no bars or plan per pass
        out.context.print_on_execution_start = False
        return out

    def iter_batches(
        self, key: Sequence[int], batch_size: int, device: torch.device, shuffle_buffer: int | None,
        rank: int = 0, world: int = 1,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One rank's pass `key` as {'image', 'mask'} uint8 tensors on `device`, `batch_size` rows at a time."""
        shuffle_seed = None
        if self.seed is not None and shuffle_buffer:
            shuffle_seed = derive_seed(self.seed, "shuffle", self.index, *key, rank) % 2**32
        return iter(self.dataset(key, rank, world).iter_torch_batches(
            batch_size=batch_size,
            dtypes={"image": torch.uint8, "mask": torch.uint8},
            device=device,
            local_shuffle_buffer_size=shuffle_buffer,
            local_shuffle_seed=shuffle_seed,
        ))


def training_stream(
    ds: Dataset | str, transform: JointTransform | None, seed: int | None = None, index: int = 0,
    rows_per_unit: int = 16,
) -> TrainingStream:
    """The `TrainingStream` of a dataset: its read units of at most `rows_per_unit` rows (`read_units`).

    (Reading row groups directly spares every pass the planning and extra stages of Ray Data's read_parquet.)
    """
    ds = open_dataset(ds) if isinstance(ds, str) else ds
    units = read_units(ds, rows_per_unit)
    if not units:
        raise DatasetError(f"{ds.uri}: dataset has no {'accepted ' if ds.info.kind == 'synthetic' else ''}rows")
    return TrainingStream(ds.uri, ds.fs, units, transform, seed, index)


def batch_shares(batch_size: int, weights: Sequence[float], step: int) -> list[int]:
    """How many samples of batch number `step` come from each stream.

    Streams after the first get floor((step+1)·B·p) - floor(step·B·p) (p = its normalised weight): per batch
    within one of B·p, and exactly B·p per batch over time. The first stream fills the rest.
    """
    total = float(sum(weights))
    counts = [0]
    for w in weights[1:]:
        share = batch_size * w / total
        counts.append(math.floor((step + 1) * share + 1e-9) - math.floor(step * share + 1e-9))
    counts[0] = batch_size - sum(counts[1:])
    return counts


def steps_per_epoch(rows: int, batch_size: int, weights: Sequence[float] = (1.0,)) -> int:
    """Batches one epoch of `rows` primary-stream rows gives (about, for several streams)."""
    primary = batch_size * weights[0] / float(sum(weights))
    return int(math.floor(rows / primary + 1e-9)) if primary > 0 else 0


class _Stream:
    """One rank's samples of a TrainingStream, handed out in any amounts.

    The primary stream reads pass (epoch,) when `start_epoch(epoch)` is called and ends with it; a cycled stream
    reads passes (salt, 0), (salt, 1), ... back to back.
    """

    def __init__(self, stream: TrainingStream, chunk: int, device: torch.device, cycle: bool,
                 shuffle_buffer: int | None, rank: int, world: int, salt: int):
        self.stream, self.chunk, self.device, self.cycle = stream, chunk, device, cycle
        self.shuffle_buffer, self.rank, self.world, self.salt = shuffle_buffer, rank, world, salt
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._buf: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._have = 0
        self._passes = 0

    def _batches(self, key: Sequence[int]) -> Iterator[dict[str, torch.Tensor]]:
        return self.stream.iter_batches(key, self.chunk, self.device, self.shuffle_buffer, self.rank, self.world)

    def _next_pass(self) -> Iterator[dict[str, torch.Tensor]]:
        self._passes += 1
        return self._batches((self.salt, self._passes - 1))

    def start_epoch(self, epoch: int) -> None:
        self._it, self._buf, self._have = self._batches((epoch,)), [], 0

    def _fill(self) -> bool:
        if self._it is None:
            if not self.cycle:
                return False
            self._it = self._next_pass()
        try:
            b = next(self._it)
        except StopIteration:
            if not self.cycle:
                return False
            self._it = self._next_pass()
            try:
                b = next(self._it)
            except StopIteration:
                raise DatasetError("a cycled training stream yielded no rows on this worker") from None
        self._buf.append((b["image"], b["mask"]))
        self._have += len(b["image"])
        return True

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """n samples, or None when the (non-cycling) stream has fewer than n left: the rest are dropped."""
        while self._have < n:
            if not self._fill():
                self._it = None
                return None
        images = torch.cat([b[0] for b in self._buf]) if len(self._buf) > 1 else self._buf[0][0]
        masks = torch.cat([b[1] for b in self._buf]) if len(self._buf) > 1 else self._buf[0][1]
        self._buf = [(images[n:], masks[n:])] if len(images) > n else []
        self._have -= n
        return images[:n], masks[:n]


class BatchMixer:
    """Fixed-size training batches drawn from one or more streams with fixed shares (see `batch_shares`).

    `streams`: [(TrainingStream, weight), ...]; the first stream is the epoch, the others cycle (their passes
    keyed (salt, n): pass a resumed run's start as `salt` so it does not replay the first part's order). `rank`
    and `world` pick this worker's run of every pass. Batches are (images, masks) on `device`: float B×3×H×W
    normalised by `norm` ('imagenet' or 'tanh' = [-1, 1]) and long B×H×W.
    """

    def __init__(
        self,
        streams: Sequence[tuple[TrainingStream, float]],
        batch_size: int,
        device: torch.device | str = "cpu",
        norm: str = "imagenet",
        shuffle_buffer: int | None = None,
        rank: int = 0,
        world: int = 1,
        salt: int = 0,
    ) -> None:
        if not streams:
            raise ValueError("BatchMixer needs at least one stream")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.norm = norm
        self.weights = [float(w) for _, w in streams]
        buf = shuffle_buffer if shuffle_buffer is not None else 4 * batch_size
        self._streams = [
            _Stream(stream, batch_size, self.device, cycle=i > 0, shuffle_buffer=buf or None, rank=rank,
                    world=world, salt=salt)
            for i, (stream, _) in enumerate(streams)
        ]
        self.step = 0

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pass `epoch` over the first stream; the last incomplete batch is dropped."""
        self._streams[0].start_epoch(epoch)
        while True:
            parts = []
            for stream, count in zip(self._streams, batch_shares(self.batch_size, self.weights, self.step)):
                got = stream.take(count) if count > 0 else None
                if got is None and count > 0:
                    return  # only the first stream runs out; the others cycle
                if got is not None:
                    parts.append(got)
            images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            masks = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            self.step += 1
            yield normalize(images, self.norm), masks.long()


@dataclass
class EvalBatch:
    images: torch.Tensor
    """uint8 B×3×h×w, resized to the evaluation size."""
    masks: torch.Tensor
    """long B×H×W at the dataset's native resolution (all rows of a batch share it)."""
    ids: list[str]


def iter_eval_batches(
    ds: Dataset,
    batch_size: int,
    size: tuple[int, int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    read_rows: int = 64,
) -> Iterator[EvalBatch]:
    """Stream a dataset in order with pyarrow (no Ray): images resized to `size`, masks kept native.

    With `world_size` > 1 this process takes rows rank, rank + world_size, ...; consecutive rows of one native
    size form a batch.
    """
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    ids: list[str] = []

    def flush() -> EvalBatch:
        batch = EvalBatch(torch.stack(images), torch.stack(masks).long(), list(ids))
        images.clear(), masks.clear(), ids.clear()
        return batch

    index = -1
    for record_batch in ds.iter_batches(COLUMNS, batch_size=read_rows):
        for row in record_batch.to_pylist():
            index += 1
            if index % world_size != rank:
                continue
            sample = decode_row(row, source=ds.uri)
            img, msk = apply_joint(None, sample["image"], sample["mask"])
            if size is not None and tuple(img.shape[-2:]) != tuple(size):
                img = TF.resize(img, list(size), antialias=True)
            if masks and (masks[0].shape != msk.shape or len(images) == batch_size):
                yield flush()
            images.append(img)
            masks.append(msk)
            ids.append(row["id"])
    if images:
        yield flush()
