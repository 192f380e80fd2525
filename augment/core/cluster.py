"""Starting or joining Ray, refusing workers it could never place, running many small remote calls with bounded
memory, and relaying the product's own lines from Ray workers to the driver (`relayed_lines`), so that Ray's
worker logs can stay out of the user's terminal (augment.core.console)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from typing import Any, Callable, Iterable, Iterator

import ray

from augment.core import console
from augment.core.errors import AugmentError


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray instance; no-op if connected.

    Ray's workers' output and Ray's own INFO logs reach this process only with --verbose (console.verbose()):
    otherwise they stay in Ray's session logs, and the product's worker lines come through `relayed_lines`."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    loud = console.verbose()
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": loud, "log_to_driver": loud}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)


JOB_RESOURCE_NAMES = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker",
                      "workers": "resources.workers"}
"""The job-file keys that set a shard worker's resources and their count (for `check_placeable`'s messages)."""


def is_local(address: str | None) -> bool:
    """Whether `init_ray(address)` starts a local instance rather than joining a cluster."""
    return address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def check_placeable(per_worker: dict[str, float], workers: int, names: dict[str, str], local: bool) -> None:
    """Refuse, before anything waits on them, workers that Ray could never place (it would wait forever).

    `per_worker` maps Ray resources ("CPU", "GPU") to one worker's need; `names` says how the user sets each and the
    worker count (e.g. {"CPU": "resources.cpus_per_worker", "workers": "resources.workers"}), for the message.

    One worker that fits no node raises AugmentError naming the key and the most any node has: on a local instance
    (`local`), and on a cluster when the autoscaler's node types are visible (Ray's cluster config) and none of them
    fits either; when they are not visible a warning says it waits for an autoscaler to add a node. `workers` that
    together need more than the instance has are refused on a local instance (nothing would ever add resources) and
    warned about on a cluster.
    """
    need = {k: float(v) for k, v in per_worker.items() if v and v > 0}
    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    if not any(_fits(need, n) for n in nodes):
        types = None if local else autoscaler_node_types()
        if types is not None and any(_fits(need, t) for t in types):
            return
        shapes = nodes + (types or [])
        most = {k: max([s.get(k, 0.0) for s in shapes] or [0.0]) for k in need}
        short = [k for k in need if need[k] > most[k] + 1e-9] or list(need)
        what = ", ".join(f"{names.get(k, k)} {need[k]:g}" for k in short)
        has = ", ".join(f"{most[k]:g} {k}" for k in need)
        if local:
            raise AugmentError(f"{what}: no node of this local Ray instance can hold one worker (the most a node has: "
                               f"{has})")
        if types is not None:
            raise AugmentError(f"{what}: no node of the cluster, and no node type its autoscaler can add, can hold "
                               f"one worker (the most any has: {has})")
        print(f"waiting for resources: no node up now can hold one worker ({what}; the most a node has: {has}); "
              "the autoscaler's node types are not visible from here, so this waits until one that fits joins",
              file=sys.stderr, flush=True)
        return
    total = ray.cluster_resources()
    over = [k for k in need if workers * need[k] > total.get(k, 0.0) + 1e-9]
    if over:
        detail = ", ".join(f"{workers * need[k]:g} {k} (it has {total.get(k, 0.0):g})" for k in over)
        if local:
            raise AugmentError(f"{names.get('workers', 'workers')} {workers}: the workers need {detail} together, "
                               f"more than this local Ray instance has; lower it")
        print(f"waiting for resources: {workers} worker(s) need {detail}; lower {names.get('workers', 'workers')} "
              "unless an autoscaler will add nodes", file=sys.stderr, flush=True)


def _fits(need: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type the cluster's autoscaler may add, or None when Ray publishes no autoscaler
    config (a local instance, a fixed cluster, an autoscaler that does not report its node types)."""
    try:
        from ray._private.state import state  # Ray's own reader of the autoscaler's cluster config

        config = state.get_cluster_config()
    except Exception:  # a private API: its absence or failure only means the node types are not visible
        return None
    if config is None or not config.node_group_configs:
        return None
    return [{k: float(v) for k, v in g.resources.items()} for g in config.node_group_configs if g.max_count != 0]


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


_line_sink: Any = None
"""In a Ray worker running under `with_line_sink`: the driver's relay queue, which `relay_line` writes to."""


@contextlib.contextmanager
def relayed_lines(poll_s: float = 0.25) -> Iterator[Any]:
    """A relay for the product's lines from Ray workers, shown on this driver's stdout as they arrive, in order.

    Yields the sink to hand to the workers (see `with_line_sink`); when the block ends, the lines still queued are
    printed and the relay (a Ray queue actor holding no CPU) is shut down. Ray must be initialised."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()

    def drain() -> None:
        try:
            while not stop.is_set():
                try:
                    print(queue.get(timeout=poll_s), flush=True)
                except Empty:
                    continue
            for line in queue.get_nowait_batch(queue.qsize()):
                print(line, flush=True)
        except Exception as exc:  # a lost relay must not stop the work it reports on; say so once
            print(f"(progress lines from the workers are no longer shown: {type(exc).__name__})", file=sys.stderr,
                  flush=True)

    thread = threading.Thread(target=drain, name="augment-line-relay", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join()
        queue.shutdown()


def with_line_sink(fn: Callable[[Any], Any], sink: Any) -> Callable[[Any], Any]:
    """`fn(arg)` that, run in a Ray worker, first points `relay_line` at `sink` (a `relayed_lines` relay)."""
    return functools.partial(_call_with_sink, fn, sink)


def _call_with_sink(fn: Callable[[Any], Any], sink: Any, arg: Any) -> Any:
    global _line_sink
    _line_sink = sink
    return fn(arg)


def relay_line(line: str) -> bool:
    """Send `line` to the driver when this worker runs under `with_line_sink` (it waits until the line is queued,
    so none is lost when the worker ends); False when there is no relay here."""
    if _line_sink is None:
        return False
    _line_sink.put(line)
    return True
