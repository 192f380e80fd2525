"""Reproducible training: seeds derived from the run's --seed, and --deterministic.

Every random draw of a training run comes from a seed derived from the run's seed and a few keys, never from
a process's own global state, so two runs with the same seed, machine, software and worker count make the same
draws in the same order:

  data order      the read units of every pass over a training dataset are permuted with
                  `derive_seed(seed, "order", stream, *pass_key)` (the same permutation on every rank, which then
                  takes its own run of rows), and Ray Data keeps that order (`preserve_order`);
  shuffle buffer  the local shuffle buffer of `iter_torch_batches` is seeded per (seed, stream, pass, rank);
  augmentation    each sample's random transform runs on the torch generator seeded with
                  `derive_seed(seed, "sample", stream, *pass_key, sample_id)` (`seeded_rng`), so it does not depend
                  on which Ray Data task or process decodes it;
  initialisation  the model is built after `torch.manual_seed(derive_seed(seed, "init"))`, the same on every rank;
  GAN noise       drawn from per-rank generators seeded from (seed, rank, start step) (augment.training.gan).

`--deterministic` also makes torch choose deterministic kernels (`configure_determinism`): on CPU training is
already bit-reproducible without it; on GPUs it is what makes cuDNN and cuBLAS reproducible, and an operation
without a deterministic implementation then stops the run with a one-line error naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Iterator

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""cuBLAS's setting for reproducible results (see the CUDA docs' 'Results reproducibility')."""

SEED_BITS = 63
NONDETERMINISTIC_MARK = "does not have a deterministic implementation"


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**63) determined by `parts` alone: the same in every process and on every machine (it does
    not use Python's per-process `hash`). Different parts give unrelated seeds."""
    digest = hashlib.sha256(json.dumps(list(parts), separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


@contextlib.contextmanager
def seeded_rng(seed: int | None) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded with `seed`, and restore its state afterwards.

    For code that draws from the global generator (torchvision's random transforms take no generator argument).
    `None` leaves the global generator alone (unseeded draws).
    """
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_model_init(seed: int) -> None:
    """Seed torch's global generator for building a model: the same initial weights on every rank."""
    import torch

    torch.manual_seed(derive_seed(seed, "init"))


def seed_worker(seed: int, rank: int, start: int) -> None:
    """Seed torch's global generator for what a worker draws from it while training (e.g. dropout), per rank and
    per start point (epoch or step) so a resumed run does not replay the draws of its first part."""
    import torch

    torch.manual_seed(derive_seed(seed, "worker", rank, start))


def configure_determinism(deterministic: bool) -> None:
    """With `deterministic`, make torch use deterministic algorithms in this process: use_deterministic_algorithms,
    cuDNN's deterministic kernels without benchmarking, and the cuBLAS workspace setting (when not already set; it
    must be in place before the process's first cuBLAS call). Without it, nothing changes."""
    if not deterministic:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def reproducibility_record(seed: int, deterministic: bool) -> dict[str, Any]:
    """What a model card records about how reproducible its run is: seed, --deterministic, and the software
    versions that the bit-for-bit promise depends on."""
    import ray
    import torch

    return {"seed": int(seed), "deterministic": bool(deterministic), "torch": torch.__version__,
            "ray": ray.__version__}


def nondeterministic_op_message(exc: BaseException) -> str | None:
    """The one-line explanation for torch's error about an operation without a deterministic implementation under
    --deterministic, or None when `exc` is another error."""
    before, mark, _ = str(exc).partition(NONDETERMINISTIC_MARK)
    if not mark:
        return None
    words = before.split()
    op = words[-1] if words else "an operation"
    return (f"--deterministic: {op} has no deterministic implementation on this device; run without "
            "--deterministic (--seed alone still fixes the data order, augmentations and initialisation)")
