"""Change-point detection over a metric's history: the commits where it stepped.

PELT (``ruptures``, least-squares cost) on the series in units of its noise, with a
BIC-like penalty. The noise is estimated from the series itself by the mean squared successive
difference (von Neumann), which a few steps barely move and, where the records carry
95% intervals, never taken below their median half-width / 1.96, so a step must stand
out from the sampling noise the runs themselves report. Like airspeed velocity's step
detection, it looks at the whole history at once, so a slow drift split over many
commits and a single jump are both found at their most likely positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: the penalty per change point is PENALTY_PER_LOG_N · ln(n) in squared noise units
PENALTY_PER_LOG_N = 4.0
#: fewest points on either side of a step
MIN_SEGMENT = 2


@dataclass(frozen=True)
class Step:
    """A change point: ``index`` is the first point of the new level."""

    index: int
    before: float
    after: float

    @property
    def delta(self) -> float:
        """after − before."""
        return self.after - self.before

    @property
    def relative(self) -> float | None:
        """delta / |before|, or None when before is 0."""
        return self.delta / abs(self.before) if self.before != 0 else None


def noise_sigma(values: np.ndarray, half_widths: np.ndarray | None = None) -> float:
    """Noise level from successive differences (√(mean Δ²/2)), floored by the intervals."""
    x = np.asarray(values, dtype=np.float64)
    sigma = 0.0
    if x.size >= 3:  # von Neumann: a step of size δ adds only δ²/(2(n−1)) to the variance
        sigma = math.sqrt(float(np.mean(np.diff(x) ** 2)) / 2.0)
    if half_widths is not None:
        hw = np.asarray(half_widths, dtype=np.float64)
        hw = hw[np.isfinite(hw) & (hw > 0)]
        if hw.size:
            sigma = max(sigma, float(np.median(hw)) / 1.96)
    if sigma <= 0.0:  # a noiseless series: any change is a step
        scale = float(np.max(np.abs(x))) if x.size else 1.0
        sigma = max(scale, 1.0) * 1e-9
    return sigma


def detect_steps(
    values: Sequence[float] | np.ndarray,
    *,
    half_widths: Sequence[float] | np.ndarray | None = None,
    penalty: float | None = None,
    min_size: int = MIN_SEGMENT,
) -> list[Step]:
    """The steps of a series (oldest first); none for a flat or too short series.

    ``half_widths`` are the points' interval half-widths (NaN where unknown); ``penalty``
    overrides ``PENALTY_PER_LOG_N · ln(n)`` (in squared noise units).
    """
    import ruptures

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("detect_steps needs a 1-D series of finite values")
    n = x.size
    if n < 2 * min_size or np.all(x == x[0]):
        return []
    hw = None if half_widths is None else np.asarray(half_widths, dtype=np.float64)
    sigma = noise_sigma(x, hw)
    z = (x - np.median(x)) / sigma
    pen = PENALTY_PER_LOG_N * math.log(n) if penalty is None else float(penalty)
    ends = (
        ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(z.reshape(-1, 1)).predict(pen=pen)
    )
    bounds = [0, *ends]
    steps = []
    for i in range(1, len(bounds) - 1):
        before = float(x[bounds[i - 1] : bounds[i]].mean())
        after = float(x[bounds[i] : bounds[i + 1]].mean())
        steps.append(Step(bounds[i], before, after))
    return steps
