"""Paired differences over seeds and their Student-t intervals (augment.report.stats), checked by hand."""

from __future__ import annotations

import math

import pytest

from augment.report.stats import PairedDifference, format_difference, paired_difference, t_quantile


def test_t_quantiles_match_the_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile(0.975, 30) == pytest.approx(2.042, abs=1e-3)
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        t_quantile(0.975, 0)


def test_three_seeds_by_hand():
    # differences 0.02, 0.03, 0.04: mean 0.03, s.d. 0.01, half width 4.3027 * 0.01 / sqrt(3) = 0.024841
    d = paired_difference([0.50, 0.52, 0.55], [0.48, 0.49, 0.51], seeds=[0, 1, 2])
    assert d.values == pytest.approx([0.02, 0.03, 0.04]) and d.seeds == [0, 1, 2] and d.n == 3
    assert d.mean == pytest.approx(0.03) and d.sd == pytest.approx(0.01)
    assert (d.low, d.high) == pytest.approx((0.005159, 0.054841), abs=1e-6)
    assert d.within_noise is False
    assert format_difference(d) == "+3.00 [+0.52, +5.48]"
    # differences 0.01, -0.02, 0.04: mean 0.01, s.d. 0.03, half width 4.3027 * 0.03 / sqrt(3) = 0.074524
    d = paired_difference([0.41, 0.38, 0.44], [0.40, 0.40, 0.40])
    assert d.mean == pytest.approx(0.01) and d.sd == pytest.approx(0.03)
    assert (d.low, d.high) == pytest.approx((-0.064524, 0.084524), abs=1e-6)
    assert d.within_noise is True and format_difference(d) == "+1.00 [-6.45, +8.45], within noise"


def test_missing_values_and_single_seeds():
    d = paired_difference([0.5, None, 0.7, float("nan")], [0.4, 0.3, None, 0.1], seeds=[3, 4, 5, 6])
    assert d.seeds == [3] and d.values == pytest.approx([0.1]) and d.mean == pytest.approx(0.1)
    assert d.low is None and d.within_noise is None and format_difference(d) == "+10.00"
    empty = paired_difference([None], [0.2])
    assert empty.n == 0 and empty.mean is None and format_difference(empty) == "-"
    same = paired_difference([0.5, 0.5], [0.5, 0.5])
    assert same.low == same.high == 0.0 and same.within_noise is True
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_difference([0.1, 0.2], [0.1])


def test_record_round_trip():
    d = paired_difference([0.5, 0.6], [0.4, 0.4], seeds=[1, 2])
    record = d.to_dict()
    assert record["n"] == 2 and record["within_noise"] is True and math.isclose(record["mean"], 0.15)
    assert PairedDifference.from_dict(record) == d
