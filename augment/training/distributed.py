"""The Ray Train harness of the trainers: one `run_training` call plus helpers for the per-worker loop.

A train loop is a plain function `loop(config: dict)` run by every worker. It reads its data with the
`TrainingStream`s of its config (augment.training.data: each worker runs its own seeded Ray Data pipeline per
pass, rather than a shard of Ray Train's `datasets`, so it knows which pass it reads), wraps its model with
`prepare_model`, and lets rank 0 (`world_rank() == 0`) write checkpoints straight into the run folder with
`augment.models.store`; Ray's own checkpoint storage is not used, so `--resume` reads `load_train_state(run)`.
The run folder must therefore be reachable from the rank-0 worker (local disk on one machine, shared or object
storage on a cluster).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

from augment.data import fs as afs
from augment.core.errors import AugmentError
from augment.core.cluster import (
    check_placeable, init_ray, is_local, relay_line, relayed_lines, with_line_sink,
)
from augment.core.progress import Eta
from augment.training.seeding import nondeterministic_op_message

RAY_STORAGE_DIR = "ray"


class TrainingError(AugmentError):
    """A training run failed on a worker."""


def resolve_gpus(gpus_per_worker: float | None) -> float:
    """`gpus_per_worker`, or 1 when the cluster has GPUs and 0 otherwise."""
    import ray

    if gpus_per_worker is not None:
        if gpus_per_worker < 0:
            raise AugmentError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
        return float(gpus_per_worker)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def worker_cpus(workers: int, gpus: float) -> float:
    """CPUs to reserve per worker: 1, or less when that would leave Ray Data no CPU to decode with.

    On a small CPU-only machine the train workers and the data tasks share the cores; reserving a fraction
    keeps one CPU free for Ray Data, so the two never wait on each other for CPUs.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1))
    if workers + 1 <= total:
        return 1.0
    free = max(total - 1.0, total / 2)
    return max(round(free / workers, 3), 0.001)


def run_training(
    train_loop: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    workers: int,
    gpus_per_worker: float | None,
    datasets: dict[str, Any] | None,
    run_dir: str,
    cpus_per_worker: float | None = None,
    address: str | None = None,
) -> Any:
    """Run `train_loop(config)` on `workers` Ray Train workers (DDP: NCCL on GPUs, gloo on CPUs).

    `datasets` (Ray Data datasets by name) are split evenly among the workers. Ray Train's own run state goes
    under `<run_dir>/ray`. The workers' `say` lines reach this process's stdout through a relay
    (augment.core.cluster.relayed_lines); Ray's own worker logs only with --verbose. Returns Ray's Result; a
    failure on a worker raises TrainingError with the worker's message (the worker's AugmentError unchanged, so its
    text reaches the CLI).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray(address)
    if workers < 1:
        raise AugmentError(f"--workers must be >= 1, got {workers}")
    gpus = resolve_gpus(gpus_per_worker)
    cpus = cpus_per_worker if cpus_per_worker is not None else worker_cpus(workers, gpus)
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    check_placeable(resources, workers, {"CPU": "CPUs per worker", "GPU": "--gpus-per-worker", "workers": "--workers"},
                    is_local(address))
    storage = _storage_path(run_dir)
    with relayed_lines() as sink:
        trainer = TorchTrainer(
            with_line_sink(train_loop, sink),
            train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(storage_path=storage, name=f"train-{int(time.time())}"),
            datasets=datasets or {},
        )
        try:
            return trainer.fit()
        except Exception as exc:  # Ray wraps worker errors in its own types, which differ between versions
            raise _worker_error(exc) from exc


def _storage_path(run_dir: str) -> str:
    """`<run_dir>/ray`, keeping a URI's query (e.g. s3://b/run?endpoint_override=...) at the end."""
    if "://" not in run_dir:
        return afs.join(os.path.abspath(run_dir), RAY_STORAGE_DIR)
    base, sep, query = run_dir.partition("?")
    return f"{base.rstrip('/')}/{RAY_STORAGE_DIR}{sep}{query}"


def _worker_error(exc: BaseException) -> AugmentError:
    """The innermost AugmentError inside a Ray Train failure (Ray wraps the worker's exception, and a Ray Data
    task's, in its own types), else a TrainingError naming the failure (for torch's refusal of an operation
    under --deterministic, which one and what to do)."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    found: AugmentError | None = None
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, AugmentError):
            found = e
        elif found is None and (message := nondeterministic_op_message(e)):
            found = TrainingError(message)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            queue.extend(v for _, v in sorted(failures.items()) if isinstance(v, BaseException))
        for attr in ("cause", "controller_failure", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                queue.append(inner)
    if found is not None:
        return found
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank, first = min(failures.items())
        return TrainingError(f"training failed on worker {rank}: {_last_line(first)}")
    return TrainingError(f"training failed: {_last_line(exc)}")


def _last_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    exc = cause if isinstance(cause, BaseException) else exc
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def world_rank() -> int:
    """This worker's rank (0 outside a Ray Train worker)."""
    try:
        import ray.train

        return ray.train.get_context().get_world_rank()
    except Exception:
        return 0


def world_size() -> int:
    try:
        import ray.train

        return ray.train.get_context().get_world_size()
    except Exception:
        return 1


def train_device() -> torch.device:
    """This worker's device (its GPU, else CPU)."""
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_model(model: nn.Module) -> nn.Module:
    """Move to the worker's device and wrap in DistributedDataParallel when there is more than one worker."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for state_dict, evaluation, or calls that must not sync)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over all ranks (the value itself without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()


def say(line: str, stream: Any = None) -> None:
    """Print one line from a train worker: to the driver through its relay when the run has one (run_training sets
    it up: the line then reaches the user's terminal without Ray's own worker logs), else to `stream` or stdout.
    Written to the stream directly: Ray Train patches `print` in workers and would echo each line twice."""
    if stream is None and relay_line(line):
        return
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


MIN_TIMED_STEPS = 5
"""Steps timed after the first before a progress line gives an ETA (the first step pays for start-up)."""


class Progress:
    """Prints one progress line every `every_steps` steps or `every_seconds` seconds, whichever comes first:

    `[seg] epoch 3/30 step 120/900 loss 0.5231 lr 0.00091 | 41.2 img/s | ETA 5m12s`

    Rates and the ETA are timed from the end of the first step seen (augment.core.progress.Eta); a line before any
    time is measured has no rate, and the ETA reads "estimating" until MIN_TIMED_STEPS steps are timed.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        every_steps: int = 50,
        every_seconds: float = 30.0,
        prefix: str = "",
        stream: Any = None,
    ) -> None:
        self.total_steps = total_steps
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.prefix = prefix
        self.stream = stream
        self._eta = Eta(total_steps, MIN_TIMED_STEPS)
        self._last_time: float | None = None
        self._last_step = start_step
        self._images = 0

    def update(self, step: int, images: int, epoch: str = "", **scalars: float) -> str | None:
        """Count `images` for step `step` (the number of steps done); print and return the line when due."""
        now = time.monotonic()
        if self._last_time is None:  # the first step: its time includes start-up, so timing starts after it
            self._eta.update(step, now)
            self._last_time = now
        else:
            self._images += images
        due = step >= self.total_steps or (self.every_steps and step - self._last_step >= self.every_steps)
        if not due and now - self._last_time < self.every_seconds:
            return None
        line = self.line(step, epoch, now, **scalars)
        self._last_time, self._last_step, self._images = now, step, 0
        say(line, self.stream)
        return line

    def line(self, step: int, epoch: str, now: float, **scalars: float) -> str:
        seconds = now - self._last_time if self._last_time is not None else 0.0
        parts = [self.prefix] if self.prefix else []
        if epoch:
            parts.append(f"epoch {epoch}")
        parts.append(f"step {step}/{self.total_steps}")
        parts += [f"{k} {v:.4g}" for k, v in scalars.items()]
        rate = f" | {self._images / seconds:.1f} img/s" if self._images and seconds > 0 else ""
        return " ".join(parts) + rate + f" | {self._eta.text(step, now)}"
