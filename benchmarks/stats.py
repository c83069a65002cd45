"""How the benchmarks judge a difference: the mean difference with its 95% interval, and whether
the interval leaves 0 out (a goal inside the spread of its repeats does not hold).

    from stats import difference
    d = difference(mine, theirs, paired=True)   # per-seed values of two arms
    d.verdict("higher")                         # 'holds' | 'within noise' | 'MISSED'
    str(d)                                      # '+1.20 [+0.15, +2.25]' (in the values' own unit)

Paired (the same seeds, data order or search seeds on both sides): Student's t on the per-pair
differences. Unpaired: Welch's t. With one value a side there is no interval: 'within noise'.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    mean: float  # mean of a - b
    low: float  # its 95% interval (nan when it cannot be computed)
    high: float
    n: int  # pairs (paired) or the smaller side (unpaired)

    def verdict(self, want: str = "higher") -> str:
        """'holds' when the interval is on the wanted side of 0 ('higher': a > b, 'lower': a < b,
        'no worse': not beyond noise on the wrong side); 'MISSED' when it is on the other side;
        'within noise' when it holds 0."""
        if math.isnan(self.low):
            return "within noise"
        if want == "no worse":
            return "MISSED" if self.high < 0 else "holds"
        above, below = self.low > 0, self.high < 0
        if want == "lower":
            above, below = below, above
        return "holds" if above else "MISSED" if below else "within noise"

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        def f(v: float) -> str:
            return f"{v * scale:+.{digits}f}"

        if math.isnan(self.low):
            return f"{f(self.mean)} (no interval: one value a side)"
        return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]"

    def __str__(self) -> str:
        return self.format()


def _t(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def difference(a: list[float], b: list[float], paired: bool = True) -> Difference:
    """a - b with its 95% interval."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired values need as many on each side, got {len(a)} and {len(b)}")
        d = [x - y for x, y in zip(a, b)]
        mean = statistics.fmean(d)
        if len(d) < 2:
            return Difference(mean, math.nan, math.nan, len(d))
        half = _t(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        return Difference(mean, mean - half, mean + half, len(d))
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, math.nan, math.nan, min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(mean, mean, mean, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(df) * se
    return Difference(mean, mean - half, mean + half, min(len(a), len(b)))
