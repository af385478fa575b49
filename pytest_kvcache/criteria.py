"""Pass/fail criteria: ``METRIC OP VALUE[UNIT]`` thresholds judged against a scenario's metrics.

Criteria are data, not code, so the same text works from the CLI, ini, YAML, a marker or a
profile, and the failure table can show every one of them with where it came from.

Scenario results are a flat ``{name: number}`` dict in canonical units: latencies in seconds,
throughput in GB/s (1e9 bytes/s), rates as fractions 0..1, counts and per-second rates as plain
numbers. Thresholds are converted to those units when parsed, so judging is a plain comparison.

The metric namespace below is the single source for validation, suggestions and docs
(``python -m pytest_kvcache.criteria`` prints it). Judging them is ``judging``.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError
from .ops import DATA_OPS, OPS
from .workload.personas import QOS_CLASSES

# --------------------------------------------------------------------------- namespace (data)

#: Tiers that may appear as ``<tier>.<op>.<stat>``; backends add theirs with ``register_tier``.
known_tiers: list[str] = ["gpu", "cpu", "nvme", "object", "redis", "gds", "compute"]  # compute: ops.COMPUTE_TIER

TIER_OPS = OPS

LATENCY_STATS = ("p50", "p95", "p99", "p999", "max", "mean")

#: ``<tier>.<op>.<stat>`` -> kind of the value.
TIER_STATS: dict[str, str] = {
    **dict.fromkeys(LATENCY_STATS, "latency"),
    "count": "count",
    "bytes": "bytes",
    "gbps": "throughput",
    "iops": "per_second",
}

_BYTE_STATS = ("bytes", "gbps")

#: Names outside the per-tier pattern -> kind.
FIXED_METRICS: dict[str, str] = {
    "cache.hit_rate": "fraction",
    "cache.hit_rate.multi_turn": "fraction",
    "cache.hit_rate.prefix": "fraction",
    "cache.hit_rate.rag": "fraction",
    "cache.hit_rate.decode": "fraction",
    "cache.hit_rate.new": "fraction",
    # the same per kind in blocks (hit blocks ÷ looked-up blocks); cache.hit_rate.* are in tokens
    **{f"cache.block_hit_rate.{kind}": "fraction" for kind in ("multi_turn", "prefix", "rag", "decode", "new")},
    # the headline hit rate split by the tier that served each hit (they sum to cache.hit_rate)
    **{f"cache.tier_hit_rate.{tier}": "fraction" for tier in known_tiers},
    "cache.entries_dropped": "count",
    "storage.throughput_tokens_per_sec": "tokens_per_second",
    "storage.read_tokens_per_generated_token": "ratio",
    "storage.read_gbps": "throughput",
    "storage.write_gbps": "throughput",
    "storage.gbps": "throughput",
    "system.tokens_per_sec": "tokens_per_second",
    "requests.per_sec": "per_second",
    "requests.completed": "count",
    **{
        f"{group}.{stat}": "latency"
        for group in ("e2e", "queue_wait", "storage_time", "ttft", "retrieval")
        for stat in LATENCY_STATS
    },
    "window.edge_fraction": "fraction",
    "errors.count": "count",
    "verify.mismatches": "count",
    # device counters' bytes ÷ ours on the storage tier over the window (present only when we
    # moved at least devstats.RATIO_FLOOR_BYTES that way); storage tiers whose files are in RAM
    "device.read_ratio": "ratio",
    "device.write_ratio": "ratio",
    "storage.memory_tiers": "count",
    # --kv-autoscale (scaling.UserScaler): qos = the users it settled on, capacity = the users at
    # the peak storage GB/s of a step; sla-search = the most users whose step p95 met the target
    "autoscale.users": "count",
    "autoscale.peak_gbps": "throughput",
    "sla_search.users": "count",
    "sla_search.p95": "latency",
    # open-loop arrivals (--kv-request-rate) in the window, and those refused (queue full or no
    # idle user): figures of the load, not errors
    "requests.offered": "count",
    "requests.rejected": "count",
    # per QoS class: qos.<class>.<stat> is the class's end-to-end latency (queue wait included,
    # what its SLA targets bound); sla_compliance = fraction of its requests within its p95 target
    **{
        f"qos.{cls}.{name}": kind
        for cls in QOS_CLASSES
        for name, kind in (
            ("requests", "count"), ("offered", "count"), ("rejected", "count"), ("sla_compliance", "fraction"),
            *((stat, "latency") for stat in LATENCY_STATS),
            *((f"{timing}.{stat}", "latency") for timing in ("queue_wait", "ttft") for stat in LATENCY_STATS),
        )
    },
}

# Units per kind as (multiplier, divisor) to canonical. Dividing by exact powers of ten keeps
# 200ms == 0.2 and 30% == 0.3 bit-exact, so boundary thresholds compare as the user expects.
UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "latency": {"ns": (1, 1e9), "us": (1, 1e6), "µs": (1, 1e6), "ms": (1, 1e3), "s": (1, 1)},
    "throughput": {
        "GB/s": (1, 1),
        "MB/s": (1, 1e3),
        "KB/s": (1, 1e6),
        "GiB/s": (2**30, 1e9),
        "MiB/s": (2**20, 1e9),
    },
    "fraction": {"%": (1, 100)},
    "bytes": {
        "B": (1, 1),
        "KB": (1e3, 1),
        "MB": (1e6, 1),
        "GB": (1e9, 1),
        "TB": (1e12, 1),
        "KiB": (2**10, 1),
        "MiB": (2**20, 1),
        "GiB": (2**30, 1),
    },
}

#: What a number without a unit means, per kind (said in errors and in ``describe``).
BARE_MEANS: dict[str, str] = {
    "latency": "ms",
    "throughput": "GB/s",
    "fraction": "",  # a fraction 0..1
    "bytes": "B",
}

_KIND_WORDS = {
    "latency": "latency, kept in seconds",
    "throughput": "throughput, kept in GB/s (1e9 B/s)",
    "fraction": "fraction 0..1",
    "bytes": "bytes",
    "count": "count",
    "per_second": "rate per second",
    "tokens_per_second": "tokens per second",
    "ratio": "ratio",
}


def kind_help(kind: str) -> str:
    """One line on a kind and the units its thresholds take, built from ``UNITS``."""
    units = UNITS.get(kind)
    if not units:
        return f"{_KIND_WORDS[kind]}; bare number"
    bare = BARE_MEANS.get(kind) or "the fraction itself (0.3 = 30%)"
    return f"{_KIND_WORDS[kind]}; units {', '.join(units)}; a bare number means {bare}"


_EXAMPLE_VALUE = {
    "latency": "200ms",
    "throughput": "2GB/s",
    "fraction": "30%",
    "bytes": "1GB",
    "count": "1",
    "per_second": "100",
    "tokens_per_second": "100",
    "ratio": "1.5",
}

_WHERE_DOCUMENTED = "all names: python -m pytest_kvcache.criteria"
_TIER_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def register_tier(name: str) -> None:
    """Let ``<name>.<op>.<stat>`` metrics validate, for a backend that adds a new tier."""
    if not isinstance(name, str) or not _TIER_RE.match(name):
        raise ConfigError(
            f"tier name {name!r} must be lowercase letters, digits and '_' (e.g. 'cxl')"
        )
    if any(m.split(".")[0] == name for m in FIXED_METRICS):
        raise ConfigError(
            f"tier name {name!r} clashes with the metric group {name!r}; pick another"
        )
    if name not in known_tiers:
        known_tiers.append(name)


def metric_kind(name: str) -> str | None:
    """Kind of a metric name ('latency', 'throughput', 'fraction', ...), or None if unknown."""
    if name in FIXED_METRICS:
        return FIXED_METRICS[name]
    parts = name.split(".")
    if parts[0] not in known_tiers:
        return None
    if len(parts) == 2 and parts[1] == "gbps":
        return "throughput"
    if len(parts) == 3 and parts[1] in TIER_OPS:
        if parts[1] not in DATA_OPS and parts[2] in _BYTE_STATS:
            return None  # deletes and evictions move no bytes: counts and latencies only
        return TIER_STATS.get(parts[2])
    return None


def metric_names() -> list[str]:
    """Every valid metric name, for suggestions and docs."""
    names = [f"{t}.gbps" for t in known_tiers]
    names += [f"{t}.{o}.{s}" for t in known_tiers for o in TIER_OPS for s in TIER_STATS
              if metric_kind(f"{t}.{o}.{s}")]
    return names + list(FIXED_METRICS)


def describe() -> str:
    """The metric namespace, units and threshold syntax as text (generated from the data)."""
    lines = [
        "Threshold syntax: METRIC OP VALUE[UNIT], OP one of <=, <, >=, >, ==",
        "  e.g. nvme.read.p95<=200ms   cache.hit_rate>=30%   storage.read_gbps>=2GB/s",
        "",
        f"Per tier and op: <tier>.<op>.<stat>   tiers: {', '.join(known_tiers)}",
        f"  ops: {', '.join(TIER_OPS)}",
    ]
    for stat, kind in TIER_STATS.items():
        only = f" (data ops only: {', '.join(DATA_OPS)})" if stat in _BYTE_STATS else ""
        lines.append(f"  .{stat:<6} {kind_help(kind)}{only}")
    lines.append(f"  <tier>.gbps  all data ops, {kind_help('throughput')}")
    lines.append("")
    lines.append("Other metrics:")
    for name, kind in FIXED_METRICS.items():
        lines.append(f"  {name:<36} {kind_help(kind)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parsing

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": None}
_OP_DIRECTION = {"<=": "upper", "<": "upper", ">=": "lower", ">": "lower", "==": "both"}
_THRESHOLD_RE = re.compile(
    r"^\s*(?P<metric>[^<>=!]*?)\s*(?P<op><=|>=|==|<|>)\s*(?P<value>[^<>=!]*?)\s*$"
)
_NUMBER_RE = re.compile(r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>.*)$")


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"bad threshold {text!r}: {why}")


def _example(metric: str, op: str = "<=") -> str:
    kind = metric_kind(metric)
    return f"{metric}{op}{_EXAMPLE_VALUE.get(kind or '', '1')}"


def _unknown_metric(text: str, metric: str) -> ConfigError:
    parts = metric.split(".")
    if (
        len(parts) == 3
        and parts[0] not in known_tiers
        and parts[1] in TIER_OPS
        and parts[2] in TIER_STATS
    ):
        return _bad(
            text,
            f"unknown tier {parts[0]!r}; known tiers: {', '.join(known_tiers)} "
            "(a backend adds its tier with pytest_kvcache.criteria.register_tier)",
        )
    close = difflib.get_close_matches(metric, metric_names(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return _bad(text, f"unknown metric {metric!r}; {hint}({_WHERE_DOCUMENTED})")


def _convert(text: str, metric: str, op: str, raw: str) -> tuple[float, str]:
    """Value text -> (canonical value, normalised value text)."""
    kind = metric_kind(metric) or ""
    units = UNITS.get(kind, {})
    m = _NUMBER_RE.match(raw)
    if not m:
        if units:
            allowed = ", ".join(u for u in units if u != "µs")
            what = f"a number with an optional unit ({allowed})"
        else:
            what = f"a plain number ({metric} is a {kind.replace('_', ' ')} and takes no unit)"
        raise _bad(text, f"value must be {what}, e.g. {_example(metric, op)}")
    num, unit = m.group("num"), m.group("unit").replace("μ", "µ")  # Greek mu -> micro sign
    value = float(num)
    if unit == "" and kind == "fraction" and not 0 <= value <= 1:
        raise _bad(
            text,
            f"{metric} is a fraction 0..1; a bare {num} is out of range — "
            f"write {num}% for a percentage, e.g. {metric}{op}30%",
        )
    if unit == "":
        unit = BARE_MEANS.get(kind, "")  # bare latency = ms, bare throughput = GB/s
        if unit not in units:  # fractions and unit-less kinds: the number is canonical
            return value, num + unit
    if unit not in units:
        if units:
            allowed = ", ".join(units)
            why = f"unknown unit {unit!r} for a {kind} metric; use one of {allowed}"
        else:
            why = f"{metric} is a {kind.replace('_', ' ')} and takes a bare number, not {unit!r}"
        raise _bad(text, f"{why}, e.g. {_example(metric, op)}")
    mul, div = units[unit]
    canonical = value * mul / div
    if kind == "fraction" and not 0 <= canonical <= 1:
        raise _bad(text, f"{metric} is a fraction; {num}% is outside 0%..100%")
    return canonical, num + unit


def _check_possible(text: str, metric: str, op: str, value: float) -> None:
    """Raise ConfigError for a threshold no measurement can ever meet: every metric is >= 0,
    and fractions are <= 1, so e.g. ``nvme.read.p95<0`` or ``cache.hit_rate>100%`` is a typo."""
    kind = metric_kind(metric)
    never = ((op == "<" and value <= 0) or (op in ("<=", "==") and value < 0)
             or (kind == "fraction" and ((op == ">" and value >= 1) or (op in (">=", "==") and value > 1))))
    if never:
        bound = "between 0 and 1" if kind == "fraction" else "0 or more"
        raise _bad(text, f"{metric} is always {bound}, so this can never pass; fix the value or the "
                         f"operator, e.g. {_example(metric, op if op != '<' else '<=')}")


@dataclass(frozen=True)
class Criterion:
    """One threshold. ``value`` is canonical (seconds, GB/s, fraction); ``text`` is for people."""

    metric: str
    op: str
    value: float
    text: str
    source: str = "cli"

    @classmethod
    def parse(cls, text: str, source: str = "cli") -> Criterion:
        """Parse ``METRIC OP VALUE[UNIT]``; raise ConfigError naming the fix on bad input."""
        if not isinstance(text, str):
            raise ConfigError(
                f"bad threshold {text!r}: write it as a string METRIC OP VALUE, "
                "e.g. 'nvme.read.p95<=200ms'"
            )
        m = _THRESHOLD_RE.match(text)
        if not m:
            found = re.findall(r"[<>=!]+", text)
            if len(found) > 1:
                why = "more than one comparison operator"
            elif found:
                why = f"unknown operator {found[0]!r}"
            else:
                why = "no comparison operator"
            raise _bad(
                text,
                f"{why}; write METRIC OP VALUE with OP one of <=, <, >=, >, ==, "
                "e.g. nvme.read.p95<=200ms",
            )
        metric, op, raw = m.group("metric"), m.group("op"), m.group("value")
        if not metric:
            raise _bad(text, f"no metric name before {op!r}, e.g. nvme.read.p95<=200ms")
        if metric_kind(metric) is None:
            raise _unknown_metric(text, metric)
        value, shown = _convert(text, metric, op, raw)
        _check_possible(text, metric, op, value)
        return cls(metric=metric, op=op, value=value, text=f"{metric} {op} {shown}", source=source)

    @property
    def direction(self) -> str:
        """'upper' (<=, <), 'lower' (>=, >) or 'both' (==): what ``merge`` matches on."""
        return _OP_DIRECTION[self.op]

    def check(self, measured: float) -> bool:
        if self.op == "==":  # exact float equality is never what a user means
            return math.isclose(measured, self.value, rel_tol=1e-9, abs_tol=1e-12)
        return _OPS[self.op](measured, self.value)

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------- profiles

PROFILES: dict[str, list[str]] = {
    "latency": [
        "nvme.read.p95<=200ms",
        "nvme.write.p95<=500ms",
        "nvme.demote_write.p95<=500ms",  # with RAM in front, every nvme write is a demotion
        "cpu.read.p95<=150ms",
        "cpu.write.p95<=150ms",
        "cache.hit_rate>=30%",
        "requests.completed>=1",  # a window in which nothing finished measured nothing
    ],
    "throughput": [
        # A floor, not a target: one datacenter NVMe drive sustains several GB/s, many times
        # this. It only catches a broken or badly throttled path (the reference passed as soon
        # as any byte moved). Set your own with --kv-threshold 'storage.gbps>=...'.
        "storage.gbps>=0.5GB/s",
        "requests.completed>=1",
    ],
}


BUILTIN_SOURCE = "built-in"

BUILTIN: list[str] = [
    # an entry that no tier could hold was never stored: the run measured less than the
    # workload asked for (raise the budget the failure message names, or set your own bound)
    "cache.entries_dropped<=0",
    # design section 6: memory or the page cache is never passed as a drive. A storage tier on
    # a memory file system fails storage.memory_tiers; a window in which the drive's counters
    # saw under 90% of the bytes we report read or written on the storage tier (the page cache
    # served the rest) fails the ratio; counters also count other processes' I/O, so above 1
    # is fine
    "storage.memory_tiers==0",
    "device.read_ratio>=0.9",
    "device.write_ratio>=0.9",
]
"""Criteria every scenario is judged on, whatever ``--kv-profile``; a user's bound on the same
metric and direction replaces one (``merge``)."""


def builtin_criteria() -> list[Criterion]:
    return [Criterion.parse(t, source=BUILTIN_SOURCE) for t in BUILTIN]


def profile_criteria(name: str) -> list[Criterion]:
    """The default criteria of a profile; "none" gives no defaults."""
    if name == "none":
        return []
    if name not in PROFILES:
        known = ", ".join([*PROFILES, "none"])
        raise ConfigError(f"unknown criteria profile {name!r}; use one of {known} (--kv-profile)")
    return [Criterion.parse(t, source=f"profile:{name}") for t in PROFILES[name]]


def merge(profile: Iterable[Criterion], extra: Iterable[Criterion]) -> list[Criterion]:
    """Profile defaults plus the user's criteria. A user bound on the same metric and direction
    (upper: <=, <; lower: >=, >) replaces the profile's, so tightening or loosening a default
    does not leave the default in force too; a user == replaces both bounds."""
    extra = list(extra)

    def replaced(p: Criterion) -> bool:
        return any(
            e.metric == p.metric
            and (e.direction == p.direction or "both" in (e.direction, p.direction))
            for e in extra
        )

    return [p for p in profile if not replaced(p)] + extra


# --------------------------------------------------------------------------- rendering


def _num(x: float) -> str:
    """2-3 significant digits, thousands separators for big numbers, no exponent for them."""
    if x == 0:
        return "0"
    if abs(x) >= 99.95:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def format_value(metric: str, value: float | None) -> str:
    """A canonical value in a unit people read: µs/ms/s, GB/s, %, or a plain number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    kind = metric_kind(metric)
    if kind == "latency":
        a = abs(value)
        if a >= 10:
            return f"{_num(value)} s"
        if a >= 1e-3 or a == 0:
            return f"{_num(value * 1e3)} ms"
        if a >= 1e-6:
            return f"{_num(value * 1e6)} µs"
        return f"{_num(value * 1e9)} ns"
    if kind == "throughput":
        return f"{_num(value)} GB/s"
    if kind == "fraction":
        return f"{_num(value * 100)}%"
    if kind == "ratio":
        return f"{value:#.3g}" if abs(value) < 99.95 else _num(value)  # 1.00, not 1: a ratio keeps its digits
    if float(value).is_integer():
        return f"{value:,.0f}"
    return _num(value)


if __name__ == "__main__":
    print(describe())
