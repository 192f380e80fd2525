"""The worker pool of a job: how many shard workers with how many GPUs and CPUs each, an actor pool that runs the
shards (augment.runner.shard.ShardProcessor) with retries, and the progress display.

A shard is attempted at most `Resources.max_shard_attempts` times, counted by the driver alone: Ray restarts no
actor and retries no task itself, so a failed attempt (the shard raised, or its worker was lost) comes back to the
driver, is counted, and the shard is queued again on a live worker (a lost worker is replaced); the last failure
stops the run with AugmentError naming the shard, its attempts and its last error. A worker reporting its run stale (a newer run claimed the output) stops the run with AugmentError.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from dataclasses import asdict, replace
from typing import Any

from augment.core import console
from augment.core.errors import AugmentError
from augment.core.progress import Eta
from augment.runner.jobfile import Resources
from augment.runner.markers import ShardStats
from augment.runner.shard import ShardProcessor, ShardSettings
from augment.synthesis.plan import PlannedSample

PROGRESS_INTERVAL_S = 10.0


class Progress:
    """Shards done, images generated and accepted, images/s and ETA: a tqdm bar on a terminal (none with --quiet),
    else log lines. The ETA is timed from the first shard this run finishes (which also paid for starting the
    workers and loading the models) and reads "estimating" until one shard per worker more is done
    (`set_workers`): shards finishing together at the start would otherwise promise a rate no worker keeps."""

    def __init__(self, total_shards: int, done_shards: int, total_samples: int, done_samples: int) -> None:
        self.total_shards, self.done_shards = total_shards, done_shards
        self.total_samples, self.done_samples = total_samples, done_samples
        self.generated = self.accepted = 0
        self.start = self.last_print = time.perf_counter()
        self.eta = Eta(total_shards)
        self.bar = None
        if sys.stderr.isatty() and not console.quiet():
            from tqdm import tqdm

            self.bar = tqdm(total=total_shards, initial=done_shards, unit="shard", desc="augment run")

    def rate(self) -> float:
        return self.generated / max(time.perf_counter() - self.start, 1e-9)

    def set_workers(self, workers: int) -> None:
        """The shards run `workers` at a time: that many more must finish after the first before an ETA."""
        self.eta.min_timed = max(1, workers)

    def line(self) -> str:
        return (f"shards {self.done_shards}/{self.total_shards}, generated {self.generated}, accepted "
                f"{self.accepted}, {self.rate():.1f} images/s, {self.eta.text(self.done_shards, time.perf_counter())}")

    def update(self, stats: ShardStats, planned: int) -> None:
        self.done_shards += 1
        self.done_samples += planned
        self.generated += stats.generated
        self.accepted += sum(stats.accepted.values())
        now = time.perf_counter()
        self.eta.update(self.done_shards, now)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"gen {self.generated} acc {self.accepted} {self.rate():.1f} img/s")
        elif now - self.last_print >= PROGRESS_INTERVAL_S or self.done_shards == self.total_shards:
            print(f"augment run: {self.line()}", flush=True)
            self.last_print = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def gpu_worker_cpus(nodes: list[dict[str, Any]], gpus_per_worker: float) -> float:
    """CPUs for a worker holding `gpus_per_worker` GPUs: its share of the CPUs of the GPU node with the fewest CPUs
    per GPU (so it fits on every GPU node), at least 1; 1 when no GPU node is up yet (an autoscaling cluster).

    A GPU worker encodes its images and masks to PNG on a thread pool sized by its CPUs, and one thread encodes
    far fewer images per second than a GPU generates, so one CPU per worker would starve the GPU.
    """
    ratios = [n["Resources"].get("CPU", 0.0) / n["Resources"]["GPU"] for n in nodes
              if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    return max(1.0, float(math.floor(min(ratios) * gpus_per_worker))) if ratios else 1.0


def worker_resources(res: Resources, pending: int, local: bool, quiet: bool = False) -> tuple[int, float, float]:
    """(workers, gpus_per_worker, cpus_per_worker) for the cluster Ray is connected to (`quiet`: print nothing)."""
    import ray

    total = ray.cluster_resources()
    cluster_gpus = float(total.get("GPU", 0))
    gpus = res.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    elif gpus > 0 and cluster_gpus == 0:
        if local:
            note = f"no GPU in this Ray instance; running {res.gpus_per_worker} GPU(s)/worker on CPU"
            gpus = 0.0
        else:
            note = "the cluster has no GPU yet; waiting for the autoscaler to add GPU workers"
        if not quiet:
            print(f"augment run: {note}", flush=True)
    cpus = res.cpus_per_worker
    if cpus is None:
        cpus = gpu_worker_cpus(ray.nodes(), gpus) if gpus > 0 else 1.0
    workers = res.workers
    if workers is None:
        by_gpu = int(cluster_gpus // gpus) if gpus > 0 else 0
        workers = max(1, by_gpu if gpus > 0 else int(float(total.get("CPU", 1)) // cpus))
    return max(1, min(workers, pending)), gpus, cpus


def workers_native_bf16(res: Resources, local: bool) -> bool:
    """Whether the job's workers' device computes bf16 natively, asked of one Ray task holding a worker's resources
    (so it runs where a worker would: on a GPU when the workers get GPUs). Ray must be initialised."""
    import ray

    from augment.core.device import local_native_bf16

    _, gpus, cpus = worker_resources(res, 1, local, quiet=True)
    probe = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(local_native_bf16)
    return bool(ray.get(probe.remote()))


def run_shards(
    shards: list[list[PlannedSample]], settings: ShardSettings, todo: list[int], res: Resources, progress: Progress,
    local: bool,
) -> set[int]:
    """Run the shards `todo` (indices into `shards`) on an actor pool sized by `res`; returns those made here (not
    found done by a worker).

    Attempts and staleness as the module docstring says."""
    import ray
    from ray.exceptions import RayActorError, RayError

    from augment.core.cluster import JOB_RESOURCE_NAMES, check_placeable

    n_workers, gpus, cpus = worker_resources(res, len(todo), local)
    check_placeable({"CPU": cpus, "GPU": gpus}, n_workers, JOB_RESOURCE_NAMES, local)
    settings = replace(settings, threads=max(1, int(cpus)))
    actor_cls = ray.remote(ShardProcessor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)
    actors = [actor_cls.remote(settings) for _ in range(n_workers)]
    depth = 2
    queue = deque(todo)
    attempts: dict[int, int] = {}
    in_flight: dict[Any, tuple[int, int, Any]] = {}
    made: set[int] = set()
    progress.set_workers(n_workers)
    print(f"augment run: {len(todo)} shards on {n_workers} workers ({gpus:g} GPU, {cpus:g} CPU each)", flush=True)
    try:
        while queue or in_flight:
            for slot in range(n_workers):
                while queue and sum(1 for a, _, _ in in_flight.values() if a == slot) < depth:
                    k = queue.popleft()
                    payload = [p.to_dict() if hasattr(p, "to_dict") else asdict(p) for p in shards[k]]
                    in_flight[actors[slot].run.remote(k, payload)] = (slot, k, actors[slot])
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROGRESS_INTERVAL_S)
            if not ready:
                if progress.bar is None:
                    print(f"augment run: {progress.line()}", flush=True)
                continue
            ref = ready[0]
            slot, k, actor = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayError as exc:
                attempts[k] = attempts.get(k, 0) + 1
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                if attempts[k] >= res.max_shard_attempts:
                    raise AugmentError(f"shard {k} failed {attempts[k]} times; last error: {reason}") from None
                print(f"augment run: shard {k} failed ({reason}); trying again", flush=True)
                if isinstance(exc, RayActorError) and actors[slot] is actor:  # not yet replaced for another shard
                    ray.kill(actor, no_restart=True)
                    actors[slot] = actor_cls.remote(settings)
                queue.appendleft(k)
                continue
            if result.get("stale"):
                raise AugmentError(f"{settings.output}: this run was taken over by a newer run and stopped "
                                   f"(a worker reports {result['message']})")
            skipped = result.pop("skipped", False)
            if not skipped:
                made.add(k)
            progress.update(ShardStats(**result), len(shards[k]))
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return made
