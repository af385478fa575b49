"""Judging criteria against a scenario's figures: pass, fail, or n/a with the reason.

Design section 6: a figure with nothing behind it never passes. A criterion is n/a only where
the scenario cannot produce its metric (a tier, op or feature it lacks) or, for a profile's gate
on an op that only a load makes happen, where none happened; anything else with nothing measured
fails, and a user's criterion that no scenario of the session judged fails the session.
The criteria themselves (names, units, parsing, profiles) are ``criteria``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tabulate import tabulate

from .criteria import BUILTIN_SOURCE, Criterion, format_value, known_tiers
from .ops import COMPUTE_TIER, possible_ops, storage_tier


@dataclass(frozen=True)
class Outcome:
    criterion: Criterion
    measured: float | None  # canonical units; None when nothing was measured
    status: str  # "pass" | "fail" | "n/a"
    reason: str | None = None  # why a criterion is n/a, or failed with nothing measured


_LOAD_DEPENDENT_OPS = ("demote_read", "demote_write", "promote_write", "evict", "delete")


def _as_number(v: object) -> float | None:
    if v is None or isinstance(v, (str, bytes)):
        return None
    try:
        f = float(v)  # accepts numpy scalars
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def not_applicable(metric: str, tiers: list[str], absent: Mapping[str, str]) -> str | None:
    """Why ``metric`` cannot be produced by a scenario with ``tiers`` (fastest first) and the
    features named in ``absent`` (metric name or ``prefix.`` -> reason), or None if it can."""
    for key, reason in absent.items():
        if metric == key or (key.endswith(".") and metric.startswith(key)):
            return reason
    parts = metric.split(".")
    if parts[:2] == ["cache", "tier_hit_rate"] and len(parts) == 3 and parts[2] not in tiers:
        return f"no {parts[2]} tier in this scenario"
    if parts[0] in known_tiers:
        if parts[0] not in tiers and parts[0] != COMPUTE_TIER:  # compute: every scenario, on a GPU
            return f"no {parts[0]} tier in this scenario"
        if len(parts) == 3 and parts[1] not in possible_ops(tiers, parts[0]):
            if parts[1] == "demote_write":
                return f"nothing is demoted into {parts[0]}: it is the first tier"
            if parts[1] == "demote_read":
                return f"nothing is demoted out of {parts[0]}: it is the last tier"
            if parts[1] == "promote_write":
                return f"nothing is promoted into {parts[0]}: only the first of two or more tiers receives promotions"
            return f"{parts[1]} cannot happen on {parts[0]} in {' > '.join(tiers)}"
    if parts[0] in ("storage", "device") and storage_tier(tiers) is None:
        return "no storage tier in this scenario"
    return None


def _load_dependent(metric: str, tiers: list[str]) -> str | None:
    """For a per-tier metric whose op happens only under some loads (a read from a lower tier
    needs something demoted there first; demotions, evictions and deletes need a full tier or a
    rewrite), the words for 'none happened'; else None."""
    parts = metric.split(".")
    if len(parts) == 3 and parts[0] == COMPUTE_TIER:  # copies only loads from a host-side tier
        return "no load was copied host-to-device (from cpu or a file tier) in the window under this load"
    if len(parts) != 3 or parts[0] not in tiers:
        return None
    if parts[1] in _LOAD_DEPENDENT_OPS or tiers.index(parts[0]) > 0:
        return f"no {parts[1]} on the {parts[0]} tier completed in the window under this load"
    return None


def evaluate(criteria: Iterable[Criterion], metrics: Mapping[str, object],
             tiers: Iterable[str] = (), absent: Mapping[str, str] | None = None) -> list[Outcome]:
    """Judge each criterion against a scenario's flat metrics (design section 6).

    - A metric the scenario cannot produce (a tier or op it does not have, or a feature named
      in ``absent``) is "n/a", with the reason: a profile or a session-wide threshold applies
      to every scenario.
    - A profile's criterion on an op that only happens under some loads (demotions,
      evictions, reads from a lower tier) is "n/a" when none happened, and says so.
    - Any other metric with nothing measured fails: a gate must not pass because nothing
      was judged.
    """
    tiers, absent = list(tiers), dict(absent or {})
    out = []
    for c in criteria:
        measured = _as_number(metrics.get(c.metric))
        if measured is not None:
            out.append(Outcome(c, measured, "pass" if c.check(measured) else "fail"))
            continue
        reason = not_applicable(c.metric, tiers, absent)
        if reason:
            out.append(Outcome(c, None, "n/a", reason))
            continue
        quiet = _load_dependent(c.metric, tiers)
        if quiet and c.source.startswith("profile"):
            out.append(Outcome(c, None, "n/a", quiet))
        else:
            out.append(Outcome(c, None, "fail", quiet or "nothing was measured for this metric in the window"))
    return out


def passed(outcomes: Iterable[Outcome]) -> bool:
    """True unless some criterion failed; n/a never fails."""
    return all(o.status != "fail" for o in outcomes)


def unjudged(criteria: Iterable[Criterion], outcomes_per_scenario: Iterable[list[Outcome]]) -> list[tuple[Criterion, list[str]]]:
    """The user's criteria (not a profile's or the built-in ones) that no scenario judged,
    each with the reasons the scenarios gave; the session fails on each (design section 6)."""
    per = list(outcomes_per_scenario)
    if not per:
        return []
    out = []
    for c in criteria:
        if c.source.startswith("profile") or c.source == BUILTIN_SOURCE:
            continue
        found = [o for outs in per for o in outs if o.criterion == c]
        if found and all(o.status == "n/a" for o in found):
            out.append((c, sorted({o.reason or "n/a" for o in found})))
    return out


STATUS_LABEL = {"pass": "PASS", "fail": "FAIL", "n/a": "n/a"}


def render_table(outcomes: Iterable[Outcome]) -> str:
    """Every criterion with its measured value, so a CI log shows what passed as well as what not."""
    outcomes = list(outcomes)
    rows = [
        [
            o.criterion.text,
            "n/a" if o.measured is None else format_value(o.criterion.metric, o.measured),
            STATUS_LABEL[o.status],
            o.criterion.source,
        ]
        + ([o.reason or ""] if any(x.reason for x in outcomes) else [])
        for o in outcomes
    ]
    headers = ["criterion", "measured", "status", "source"]
    if any(o.reason for o in outcomes):
        headers.append("why")
    return tabulate(rows, headers=headers, tablefmt="simple")
