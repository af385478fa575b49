"""Repeated runs (``--kv-trials N``): per-trial figures, their mean, a 95% confidence interval
and the coefficient of variation, and the metrics criteria gate on.

The interval is Student's t: ``mean ± t(0.975, n-1) · s / √n`` with ``s`` the sample standard
deviation (ddof 1). The t quantiles are the two-sided 95% critical values of the table in the
NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2 ("Critical values of the
Student's t distribution"), for 1 to 30 degrees of freedom, then 40, 60, 120 and the normal
1.960 (a larger df uses the next smaller row: a wider, conservative interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# two-sided 95% (upper 0.975) critical values of Student's t, df 1..30 (NIST/SEMATECH 1.3.6.7.2)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
T975_BEYOND = ((40, 2.021), (60, 2.000), (120, 1.980))
T975_INFINITY = 1.960

# fault counters: the worst trial counts, never an average that hides one bad trial
WORST_OF = ("errors.count", "verify.mismatches", "cache.entries_dropped", "storage.memory_tiers")
HEADLINE_WORST_OF = ("entries_dropped",)  # the headline's fault counts: the worst trial's
METRICS_RULE = ("each metric is the mean over the trials (a percentile such as nvme.read.p95 is the mean of the "
                "trials' p95s, not the p95 of all samples); fault counters (" + ", ".join(WORST_OF) +
                ") are the worst trial's; a metric that is n/a in any trial is n/a")


def t975(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom (>= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    value = T975[-1]
    for row, t in T975_BEYOND:
        if df >= row:
            value = t
    return T975_INFINITY if df > 1000 else value


def describe(values: Sequence[float | None]) -> dict:
    """``{n, values, mean, stdev, ci95: [low, high], cv}`` of one figure over the trials.

    Everything is None (n/a) when a trial has no figure; stdev, ci95 and cv need at least two
    trials; cv (stdev / mean) needs a mean other than 0.
    """
    out = {"n": len(values), "values": list(values), "mean": None, "stdev": None, "ci95": None, "cv": None}
    if not values or any(v is None or not _number(v) for v in values):
        return out
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    out["mean"] = mean
    if len(data) >= 2:
        stdev = float(data.std(ddof=1))
        half = t975(len(data) - 1) * stdev / math.sqrt(len(data))
        out["stdev"], out["ci95"] = stdev, [mean - half, mean + half]
        out["cv"] = stdev / abs(mean) if mean else None
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def combine_metrics(per_trial: Sequence[dict]) -> dict:
    """The flat metrics criteria gate on over several trials (``METRICS_RULE``)."""
    keys = list(dict.fromkeys(k for m in per_trial for k in m))
    out = {}
    for key in keys:
        values = [m.get(key) for m in per_trial]
        if any(v is None for v in values):
            out[key] = None
        elif not all(_number(v) for v in values):  # not a figure (a label): the last trial's
            out[key] = values[-1]
        elif key in WORST_OF:
            out[key] = max(values)
        else:
            out[key] = float(np.mean(values))
    return out


def summarize(headlines: Sequence[dict], seed: int, metrics: Sequence[dict] = (), tiers: Sequence[str] = ()) -> dict:
    """``summary.trials``: each trial's headline figures, and per numeric figure its mean, stdev,
    95% confidence interval and coefficient of variation (``describe``); the same for each
    tier's read, write and demote_write p95 (seconds) from the trials' flat ``metrics``."""
    keys = [k for k in dict.fromkeys(k for h in headlines for k in h)
            if any(_number(h.get(k)) for h in headlines)]
    return {
        "count": len(headlines), "seed": seed,
        "per_trial": [dict(h) for h in headlines],
        "figures": {k: describe([h.get(k) for h in headlines]) for k in keys},
        "latency_p95_s": {key: describe([m.get(key) for m in metrics]) for key in
                          (f"{tier}.{op}.p95" for tier in tiers for op in ("read", "write", "demote_write"))
                          if any(key in m for m in metrics)},
        "interval": "Student's t 95% confidence interval over the trials (mean ± t(0.975, n-1)·s/√n, s with ddof 1; "
                    "t from the NIST/SEMATECH e-Handbook table 1.3.6.7.2); cv = s / mean",
        "metrics_rule": METRICS_RULE,
        "detail": "the summary's other sections (tiers, latencies, QoS, ...) are the last trial's",
    }
