"""Paired differences over seeds and their Student-t confidence intervals, for comparing training settings.

An arm (e.g. real + filtered synthetic data) and its control (real data only) are trained with the same seeds;
seed s gives the paired difference d_s = arm_s - control_s. Over n seeds with mean m and sample standard
deviation sd (n - 1 in the denominator), the two-sided confidence interval at `level` is

    m ± t_{(1 + level) / 2, n - 1} · sd / sqrt(n)

(scipy.stats.t for the quantile). A difference whose interval contains 0 is "within noise": the seeds do not
tell it apart from no effect. One seed gives a difference but no interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

WITHIN_NOISE = "within noise"


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t distribution with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass
class PairedDifference:
    """Arm minus control over the seeds both have: per seed, mean, s.d. and the confidence interval."""

    seeds: list[int]
    values: list[float]
    """arm - control per seed, in `seeds` order (seeds where either value is missing are left out)."""
    mean: float | None
    sd: float | None
    low: float | None
    """Bounds of the `level` confidence interval of the mean; None with fewer than two seeds."""
    high: float | None
    level: float = 0.95

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def within_noise(self) -> bool | None:
        """True when the interval contains 0; None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        """The fields plus `n` and `within_noise` (JSON-ready)."""
        return {**asdict(self), "n": self.n, "within_noise": self.within_noise}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PairedDifference":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def paired_difference(
    arm: Sequence[float | None], control: Sequence[float | None], seeds: Sequence[int] | None = None,
    level: float = 0.95,
) -> PairedDifference:
    """`arm[i] - control[i]` for every i where both exist, with their mean, s.d. and Student-t interval."""
    if len(arm) != len(control):
        raise ValueError(f"{len(arm)} arm values for {len(control)} control values; pair them by seed")
    seeds = list(range(len(arm))) if seeds is None else list(seeds)
    pairs = [(s, a - c) for s, a, c in zip(seeds, arm, control) if _number(a) and _number(c)]
    kept, values = [s for s, _ in pairs], [d for _, d in pairs]
    if not values:
        return PairedDifference(kept, values, None, None, None, None, level)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return PairedDifference(kept, values, mean, None, None, None, level)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = t_quantile((1.0 + level) / 2.0, len(values) - 1) * sd / math.sqrt(len(values))
    return PairedDifference(kept, values, mean, sd, mean - half, mean + half, level)


def _number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def format_difference(d: PairedDifference, scale: float = 100.0, digits: int = 2) -> str:
    """`+m [low, high]` (values times `scale`, e.g. points of IoU), then ', within noise' when the interval
    contains 0; `+m` alone for one seed, '-' for none."""
    if d.mean is None:
        return "-"
    text = f"{d.mean * scale:+.{digits}f}"
    if d.low is None or d.high is None:
        return text
    text += f" [{d.low * scale:+.{digits}f}, {d.high * scale:+.{digits}f}]"
    return text + (f", {WITHIN_NOISE}" if d.within_noise else "")
