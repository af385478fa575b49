"""QoS classes: priority, latency targets and the class mix, and the SLA compliance figure.

Defaults are those of the MLPerf reference ``kv-cache.py`` that seed 003 describes (its
``QOS_PROFILES`` and ``qos_distribution``):

========== ======== ========== ========== =========
class      priority p95 target p99 target mix share
========== ======== ========== ========== =========
interactive   0        50 ms     100 ms     15 %
responsive    1       100 ms     200 ms     35 %
batch         2      1000 ms    5000 ms     50 %
========== ======== ========== ========== =========

Priority 0 is served first. The targets apply to end-to-end latency (queue wait included), as
the reference checks them. ``load_qos`` overrides any of them from a YAML-style mapping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..errors import ConfigError
from ..workload.personas import QOS_CLASSES


@dataclass(frozen=True, slots=True)
class QoSClass:
    """One class. ``priority``: 0 first; ``p95_s``/``p99_s``: latency targets in seconds
    (``p99_s`` None = no target); ``share``: weight of the class in the request mix."""

    name: str
    priority: int
    p95_s: float
    p99_s: float | None
    share: float


DEFAULT_QOS: dict[str, QoSClass] = {
    "interactive": QoSClass("interactive", 0, 0.050, 0.100, 0.15),
    "responsive": QoSClass("responsive", 1, 0.100, 0.200, 0.35),
    "batch": QoSClass("batch", 2, 1.000, 5.000, 0.50),
}

_KEYS = {"p95_ms": "p95_ms", "target_latency_p95_ms": "p95_ms",
         "p99_ms": "p99_ms", "target_latency_p99_ms": "p99_ms", "share": "share"}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def load_qos(raw: Mapping | None) -> dict[str, QoSClass]:
    """The default classes with the overrides in ``raw`` applied.

    ``raw`` is a YAML-style mapping ``{class: {p95_ms, p99_ms, share}}`` (the reference's
    ``target_latency_p95_ms``/``target_latency_p99_ms`` are accepted too; ``p99_ms: null``
    drops the p99 target). Raises ``ConfigError`` naming the fix for an unknown class or key,
    a target that is not a positive number of milliseconds, a p99 below the p95, a negative
    share, or shares that are all zero.
    """
    classes = dict(DEFAULT_QOS)
    if raw is None:
        return classes
    if not isinstance(raw, Mapping):
        raise ConfigError(f"qos must be a mapping of class name to settings, e.g. "
                          f"{{interactive: {{p95_ms: 50, p99_ms: 100, share: 0.15}}}}, not {type(raw).__name__}")
    for name, settings in raw.items():
        if name not in classes:
            raise ConfigError(f"unknown QoS class {name!r} in the qos settings; the known classes are "
                              f"{list(QOS_CLASSES)}: rename it to one of them or remove it")
        if not isinstance(settings, Mapping):
            raise ConfigError(f"qos.{name} must be a mapping such as {{p95_ms: 50, p99_ms: 100, share: 0.15}}")
        cls = classes[name]
        for key, value in settings.items():
            field = _KEYS.get(key)
            if field is None:
                raise ConfigError(f"unknown key qos.{name}.{key}; allowed: {sorted(_KEYS)}")
            if field == "share":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                    raise ConfigError(f"qos.{name}.share must be a number >= 0 (a weight of the mix), not {value!r}")
                cls = replace(cls, share=float(value))
            elif field == "p99_ms" and value is None:
                cls = replace(cls, p99_s=None)
            elif not _positive(value):
                raise ConfigError(f"qos.{name}.{key} must be a positive number of milliseconds, not {value!r}")
            else:
                cls = replace(cls, **{field[:3] + "_s": value / 1000.0})
        if cls.p99_s is not None and cls.p99_s < cls.p95_s:
            raise ConfigError(f"qos.{name}: the p99 target ({cls.p99_s * 1e3:g} ms) is below the p95 target "
                              f"({cls.p95_s * 1e3:g} ms); raise p99_ms or lower p95_ms")
        classes[name] = cls
    if sum(c.share for c in classes.values()) <= 0:
        raise ConfigError("the qos shares are all zero; give at least one class a positive share")
    return classes


def class_mix(classes: Mapping[str, QoSClass]) -> dict[str, float]:
    """Shares normalised to fractions that sum to 1, in priority order."""
    total = sum(c.share for c in classes.values())
    return {c.name: c.share / total for c in sorted(classes.values(), key=lambda c: c.priority)}


def sla_compliance(latencies_s: Iterable[float], target_s: float) -> float | None:
    """Fraction of requests whose latency is within ``target_s`` (seconds; ``<=`` passes).

    None when there are no requests (n/a, never a pass). A class meets its p95 SLA when this is
    at least 0.95.
    """
    n = hits = 0
    for value in latencies_s:
        n += 1
        hits += value <= target_s
    return hits / n if n else None
