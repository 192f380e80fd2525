"""Time left of a long run, estimated honestly: timed from the first unit (step, shard) done in this process, since
that first one also pays for start-up (starting workers, loading models, the first data reads), and given only once
enough units after it are timed; until then the estimate reads "estimating"."""

from __future__ import annotations

from dataclasses import dataclass


def format_duration(seconds: float) -> str:
    """`1h06m` from an hour up, else `5m12s`."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class Eta:
    """Time left until `total` units are done. `update(done, now)` with the units done so far (the first call sets
    the origin); `text(done, now)` is "ETA 5m12s", or "ETA estimating" while fewer than `min_timed` units after the
    origin are timed."""

    total: int
    min_timed: int = 3
    _origin: tuple[float, int] | None = None

    def update(self, done: int, now: float) -> None:
        if self._origin is None:
            self._origin = (now, done)

    def seconds_left(self, done: int, now: float) -> float | None:
        """Seconds until `total`, or None while it is still estimating."""
        if self._origin is None:
            return None
        start, start_done = self._origin
        timed = done - start_done
        if done >= self.total:
            return 0.0
        if timed < max(self.min_timed, 1) or now <= start:
            return None
        return (now - start) / timed * (self.total - done)

    def text(self, done: int, now: float) -> str:
        left = self.seconds_left(done, now)
        return "ETA estimating" if left is None else f"ETA {format_duration(left)}"
