"""--seed and --deterministic: derived seeds, seeded passes over the data, and bit-identical weights on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from augment.cli import main
from augment.training import distributed as dist_utils
from augment.models.store import CheckpointError, load_card
from augment.training.data import BatchMixer, TrainingStream, row_run, training_stream
from augment.training.gan import GANTrainConfig, train_gan
from augment.training.seeding import derive_seed, seeded_rng
from augment.training.segmenter import SegTrainConfig, train_segmenter
from augment.training.transforms import apply_joint, train_transform
from conftest import PROJECT_ROOT, ensure_local_ray
from helpers import blob_sample, make_dataset

SIZE = (32, 32)
TINY_GAN = {"g_width": 8, "spade_hidden": 16, "z_dim": 8, "d_width": 16}


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(str(run), "model.safetensors"))


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_derived_seeds_do_not_depend_on_the_process():
    value = derive_seed(3, "sample", 0, 1, "train/0-7")
    assert 0 <= value < 2**63 and value == derive_seed(3, "sample", 0, 1, "train/0-7")
    assert len({value, derive_seed(4, "sample", 0, 1, "train/0-7"), derive_seed(3, "sample", 0, 2, "train/0-7"),
                derive_seed(3, "sample", 0, 1, "train/0-8"), derive_seed(3, "sample", 0, "1", "train/0-7")}) == 5
    code = "from augment.training.seeding import derive_seed; print(derive_seed(3, 'sample', 0, 1, 'train/0-7'))"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(PROJECT_ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert int(out.stdout) == value


def test_seeded_transform_depends_on_its_seed_alone():
    import numpy as np

    image, mask = blob_sample(np.random.default_rng(0), (40, 48), 4)
    transform = train_transform(SIZE)
    before = torch.get_rng_state()
    with seeded_rng(11):
        a = apply_joint(transform, image, mask)
    torch.rand(5)  # global draws in between change nothing
    with seeded_rng(11):
        b = apply_joint(transform, image, mask)
    with seeded_rng(12):
        c = apply_joint(transform, image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    torch.set_rng_state(before)
    with seeded_rng(11):
        pass
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was


def test_row_runs_cut_units():
    units = [{"path": "p", "row_group": 0, "start": 0, "stop": 4}, {"path": "p", "row_group": 1, "start": 2, "stop": 5}]
    assert row_run(units, 3, 3) == [{"path": "p", "row_group": 0, "start": 3, "stop": 4},
                                    {"path": "p", "row_group": 1, "start": 2, "stop": 4}]
    assert row_run(units, 0, 7) == units and row_run(units, 7, 2) == []


def _rows(units) -> list[tuple[str, int, int]]:
    return [(u["path"], u["row_group"], r) for u in units for r in range(u["start"], u["stop"])]


def test_pass_order_is_seeded_and_ranks_split_it_evenly(tmp_path):
    stream = training_stream(make_dataset(tmp_path / "d", 21, SIZE), None, seed=5, rows_per_unit=4)
    everything = _rows(stream.units)
    assert len(everything) == stream.rows == 21
    for world in (1, 2, 3):
        runs = [_rows(stream.pass_units((0,), rank, world)) for rank in range(world)]
        assert all(len(r) == 21 // world for r in runs)
        flat = [row for r in runs for row in r]
        assert len(set(flat)) == len(flat) and set(flat) <= set(everything)
    assert stream.pass_units((0,), 1, 2) == stream.pass_units((0,), 1, 2)
    orders = {tuple(map(tuple, _rows(stream.pass_units((e,))))) for e in range(4)}
    assert len(orders) == 4  # every epoch its own order
    other = TrainingStream(stream.uri, stream.filesystem, stream.units, None, seed=6)
    assert other.pass_units((0,)) != stream.pass_units((0,))
    second = TrainingStream(stream.uri, stream.filesystem, stream.units, None, seed=5, index=1)
    assert second.pass_units((0,)) != stream.pass_units((0,))  # a mix's streams draw independently


def _pass(stream: TrainingStream, key, rank=0, world=1) -> list[torch.Tensor]:
    return [torch.cat([b["image"].flatten(1), b["mask"].flatten(1)], 1)
            for b in stream.iter_batches(key, 4, torch.device("cpu"), 16, rank, world)]


def test_a_pass_is_the_same_batches_for_the_same_seed_and_key(tmp_path, ray_session):
    data = make_dataset(tmp_path / "d", 24, (40, 40))
    stream = training_stream(data, train_transform(SIZE), seed=3, rows_per_unit=4)
    first, again, later = _pass(stream, (0,)), _pass(stream, (0,)), _pass(stream, (1,))
    assert len(first) == 6 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, later))
    rank1 = _pass(stream, (0,), 1, 2)
    assert len(rank1) == 3 and all(torch.equal(a, b) for a, b in zip(rank1, _pass(stream, (0,), 1, 2)))
    mixer = BatchMixer([(stream, 1.0)], 4)
    assert [m.shape for _, m in mixer.epoch(0)] == [(4, 32, 32)] * 6


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory):
    """train-seg on one worker: seed 0 twice, seed 1 once."""
    ensure_local_ray()
    root = tmp_path_factory.mktemp("seed-seg")
    data = make_dataset(root / "train", 16, (40, 40), num_classes=4)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        runs[name] = str(root / name)
        train_segmenter(SegTrainConfig(data=[data], out=runs[name], size=SIZE, epochs=2, batch=4, seed=seed,
                                       log_every=100))
    return data, runs


@pytest.mark.slow
def test_train_seg_same_seed_same_weights(seg_runs):
    _, runs = seg_runs
    assert same_weights(runs["a"], runs["b"])
    assert not same_weights(runs["a"], runs["c"])
    card = load_card(runs["a"])
    assert card.step == 8 and card.reproducibility["seed"] == 0 and card.reproducibility["deterministic"] is False
    assert card.reproducibility["torch"] == torch.__version__


@pytest.mark.slow
def test_resume_keeps_seed_and_deterministic(seg_runs):
    data, runs = seg_runs
    with pytest.raises(CheckpointError, match="trained with --seed 0, not 1"):
        train_segmenter(SegTrainConfig(data=[data], out=runs["a"], size=SIZE, epochs=3, batch=4, seed=1, resume=True))
    with pytest.raises(CheckpointError, match="trained without --deterministic; resume it without"):
        train_segmenter(SegTrainConfig(data=[data], out=runs["a"], size=SIZE, epochs=3, batch=4, resume=True,
                                       deterministic=True))


@pytest.mark.slow
def test_train_seg_two_workers_deterministic_matches_itself(tmp_path, ray_session, capsys):
    data = make_dataset(tmp_path / "train", 16, SIZE, num_classes=3)
    for name in ("a", "b"):
        assert main(["train-seg", "--data", data, "--out", str(tmp_path / name), "--epochs", "2", "--batch", "2",
                     "--workers", "2", "--seed", "7", "--deterministic"]) == 0
    assert same_weights(tmp_path / "a", tmp_path / "b")
    card = load_card(str(tmp_path / "a"))
    assert card.step == 8 and card.reproducibility["deterministic"] is True and card.reproducibility["seed"] == 7


@pytest.mark.slow
def test_train_gan_same_seed_same_weights(tmp_path, ray_session):
    data = make_dataset(tmp_path / "train", 12, SIZE, num_classes=4)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_gan(GANTrainConfig(data=data, out=str(tmp_path / name), steps=4, batch=4, seed=seed, log_every=2,
                                 sample_rows=2, model=TINY_GAN))
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert not same_weights(tmp_path / "a", tmp_path / "c")
    assert load_card(str(tmp_path / "a")).reproducibility["seed"] == 0


def test_deterministic_refusal_reaches_the_cli_as_one_line():
    class WorkerGroupError(Exception):
        def __init__(self, message, worker_failures):
            super().__init__(message)
            self.worker_failures = worker_failures

    refusal = RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, but "
                           "you set 'torch.use_deterministic_algorithms(True)'. You can turn off determinism ...")
    err = dist_utils._worker_error(WorkerGroupError("w", {0: refusal}))
    assert isinstance(err, dist_utils.TrainingError)
    assert str(err).startswith("--deterministic: upsample_bilinear2d_backward_out_cuda has no deterministic "
                               "implementation on this device; run without --deterministic")
    assert "\n" not in str(err)
