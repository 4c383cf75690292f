"""Change-point detection: planted steps are found where they are, flat noise gives none."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.changepoint import detect_steps, noise_sigma


@pytest.mark.parametrize("seed", range(5))
def test_a_planted_step_is_found_at_its_commit(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(10.0, 0.5, 40)
    x[25:] += 2.0  # a 4-sigma step at index 25
    steps = detect_steps(x)
    assert len(steps) == 1
    assert abs(steps[0].index - 25) <= 1
    assert steps[0].delta == pytest.approx(2.0, abs=0.5)


@pytest.mark.parametrize("seed", range(5))
def test_flat_noise_has_no_step(seed):
    rng = np.random.default_rng(100 + seed)
    assert detect_steps(rng.normal(10.0, 0.5, 40)) == []


def test_two_steps_up_and_down_are_both_found():
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, 60)
    x[20:40] += 5.0
    assert [s.index for s in detect_steps(x)] == [20, 40]


def test_a_noiseless_step_is_found_and_a_constant_series_has_none():
    assert [s.index for s in detect_steps([1.0] * 5 + [2.0] * 5)] == [5]
    assert detect_steps([3.0] * 10) == []
    assert detect_steps([1.0, 2.0, 3.0]) == []  # too short for two segments of 2


def test_reported_intervals_set_a_floor_on_the_noise():
    x = np.array([0.5, 0.52, 0.51, 0.5, 0.6, 0.61, 0.6, 0.62])
    assert len(detect_steps(x)) == 1
    # the runs said each value is only known to +-0.2: a 0.1 move is not a step
    assert detect_steps(x, half_widths=np.full(8, 0.2)) == []
    assert noise_sigma(x, np.full(8, 0.2)) == pytest.approx(0.2 / 1.96)


def test_nan_values_are_refused():
    with pytest.raises(ValueError, match="finite"):
        detect_steps([1.0, float("nan"), 2.0, 3.0])
