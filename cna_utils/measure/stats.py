"""Sampling noise of the numbers a verdict reads: each one as a ``Measure`` with its n and a 95% interval.

Usage::

    proportion(flipped)                          # share (%) of cases, Wilson interval
    mean(per_case_values)                        # mean over cases, bootstrap interval
    bootstrap(n, lambda idx: f(idx))             # any statistic of the cases, percentile interval
    bootstrap(n, f, strata=groups)               # resampled within each group (op, digit count)

Every bootstrap is seeded (``SEED``) and draws ``RESAMPLES`` resamples of the cases with
replacement; the statistic gets the resampled case indices, so paired comparisons (ablated vs
not on the same cases) stay paired. A proportion uses the Wilson score interval, which stays
honest at 0 or n successes where the bootstrap collapses to one point.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Measure", "wilson", "proportion", "mean", "bootstrap", "relative_drop", "resample_indices", "Z95", "RESAMPLES", "SEED"]

Z95 = 1.959963984540054
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Measure:
    """A measured number: its value, the n behind it, a 95% interval [low, high] in the same unit,
    and how the interval was made ("wilson", "bootstrap", "exact" for a number without sampling noise)."""
    value: float
    n: int
    interval: tuple[float, float]
    method: str = "bootstrap"
    unit: str = ""
    note: str = field(default="", compare=False)

    def __post_init__(self):
        lo, hi = (float(x) for x in self.interval)
        if not (lo <= hi) and not (math.isnan(lo) or math.isnan(hi)):
            raise ValueError(f"interval low {lo} above high {hi}")
        object.__setattr__(self, "interval", (lo, hi))
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "n", int(self.n))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interval"] = list(self.interval)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Measure":
        f = lambda x: float("nan") if x is None else x               # a results file writes NaN as null
        return cls(f(d["value"]), d["n"], tuple(f(x) for x in d["interval"]), d.get("method", "bootstrap"),
                   d.get("unit", ""), d.get("note", ""))

    @classmethod
    def exact(cls, value: float, n: int = 1, unit: str = "", note: str = "") -> "Measure":
        """A number with no sampling noise of its own (a count of heads, a paper's printed value)."""
        return cls(value, n, (value, value), "exact", unit, note)


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n, as fractions."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(hits, n: int | None = None, unit: str = "%") -> Measure:
    """The share of cases (in %) that are True in ``hits`` (or ``hits`` successes of ``n``), Wilson interval."""
    if n is None:
        arr = np.asarray(hits, dtype=bool)
        k, n = int(arr.sum()), int(arr.size)
    else:
        k = float(hits)
    lo, hi = wilson(k, n)
    return Measure(100 * k / n if n else float("nan"), n, (100 * lo, 100 * hi), "wilson", unit)


def resample_indices(n: int, resamples: int, seed: int, strata=None) -> np.ndarray:
    """[resamples, n] case indices drawn with replacement (within each stratum when given)."""
    gen = np.random.default_rng(seed)
    if strata is None:
        return gen.integers(0, n, size=(resamples, n))
    strata = np.asarray(strata)
    idx = np.empty((resamples, n), dtype=np.int64)
    col = 0
    for s in dict.fromkeys(strata.tolist()):
        members = np.flatnonzero(strata == s)
        idx[:, col:col + len(members)] = members[gen.integers(0, len(members), size=(resamples, len(members)))]
        col += len(members)
    return idx


def bootstrap(n: int, stat, strata=None, resamples: int = RESAMPLES, seed: int = SEED, unit: str = "",
              vectorized: bool = False) -> Measure:
    """``stat(idx)`` on all ``n`` cases (its value) and on ``resamples`` resamples of them (its 2.5 and
    97.5 percentiles). ``vectorized``: ``stat`` takes the whole [resamples, n] index matrix at once and
    returns one value per row (much faster for means)."""
    if n <= 0:
        raise ValueError("no cases to resample: a measure needs at least one case")
    base = np.arange(n)
    value = float(stat(base[None])[0]) if vectorized else float(stat(base))
    idx = resample_indices(n, resamples, seed, strata)
    draws = np.asarray(stat(idx), dtype=float) if vectorized else np.array([stat(i) for i in idx], dtype=float)
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return Measure(value, n, (float("nan"), float("nan")), "bootstrap", unit)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return Measure(value, n, (min(lo, value), max(hi, value)), "bootstrap", unit)


def mean(values, strata=None, unit: str = "%", **kw) -> Measure:
    """The mean of per-case ``values`` with a bootstrap interval over cases (NaN values, e.g. a case
    whose coefficient scores are all zero, are left out and do not count in n)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    return bootstrap(len(x), lambda idx: x[idx].mean(axis=-1), strata=strata, unit=unit, vectorized=True, **kw)


def relative_drop(base_correct, ablated_correct, strata=None, **kw) -> Measure:
    """The paper's relative decrease 100 x (base - ablated) / base of accuracy, paired over cases
    (``base_correct`` and ``ablated_correct`` are per-case 0/1 on the same cases). 0 when the
    base accuracy of a resample is 0."""
    b = np.asarray(base_correct, dtype=float)
    a = np.asarray(ablated_correct, dtype=float)

    def stat(idx):
        mb, ma = b[idx].mean(axis=-1), a[idx].mean(axis=-1)
        return np.where(mb > 0, 100 * (mb - ma) / np.where(mb > 0, mb, 1), 0.0)

    return bootstrap(len(b), stat, strata=strata, unit="%", vectorized=True, **kw)
