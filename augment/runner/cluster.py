"""Starting or joining Ray, and running many small remote calls with bounded memory."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray instance; no-op if connected."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)


def imap_unordered(
    remote_fn: Callable[..., Any], args: Iterable[tuple[Any, ...]], max_in_flight: int
) -> Iterator[Any]:
    """Call `remote_fn.remote(*a)` for each `a`, at most `max_in_flight` at once; yield results as they finish.

    Arguments are drawn lazily, so the driver never holds more than `max_in_flight` tasks' worth of work.
    Closing the iterator early (an error, Ctrl-C) cancels the tasks still in flight.
    """
    pending: list[ray.ObjectRef] = []
    try:
        for a in args:
            if len(pending) >= max_in_flight:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
            pending.append(remote_fn.remote(*a))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))
