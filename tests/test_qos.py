"""QoS classes: defaults from the reference, YAML overrides, and SLA compliance."""

from __future__ import annotations

import pytest

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.load.qos import DEFAULT_QOS, class_mix, load_qos, sla_compliance
from pytest_kvcache.workload import QOS_CLASSES, QOS_P95_SLA_S


def test_defaults_from_the_reference():
    assert tuple(DEFAULT_QOS) == QOS_CLASSES
    assert {n: c.p95_s for n, c in DEFAULT_QOS.items()} == QOS_P95_SLA_S == {
        "interactive": 0.05, "responsive": 0.1, "batch": 1.0}
    assert {n: c.p99_s for n, c in DEFAULT_QOS.items()} == {"interactive": 0.1, "responsive": 0.2, "batch": 5.0}
    assert [c.priority for c in DEFAULT_QOS.values()] == [0, 1, 2]
    assert class_mix(DEFAULT_QOS) == pytest.approx({"interactive": 0.15, "responsive": 0.35, "batch": 0.5})
    assert load_qos(None) == DEFAULT_QOS


def test_overrides():
    classes = load_qos({"interactive": {"p95_ms": 40, "p99_ms": None, "share": 1},
                        "batch": {"target_latency_p95_ms": 2000, "target_latency_p99_ms": 8000, "share": 0}})
    assert classes["interactive"].p95_s == pytest.approx(0.04) and classes["interactive"].p99_s is None
    assert classes["batch"].p95_s == pytest.approx(2.0) and classes["batch"].p99_s == pytest.approx(8.0)
    assert classes["responsive"] == DEFAULT_QOS["responsive"]
    mix = class_mix(classes)
    assert mix["batch"] == 0 and mix["interactive"] == pytest.approx(1 / 1.35)


@pytest.mark.parametrize("raw, match", [
    ({"gold": {"p95_ms": 10}}, "known classes are \\['interactive', 'responsive', 'batch'\\]"),
    ({"batch": {"p90_ms": 10}}, "allowed"),
    ({"batch": {"p95_ms": 0}}, "positive number of milliseconds"),
    ({"batch": {"p95_ms": -3}}, "positive number"),
    ({"batch": {"p95_ms": True}}, "positive number"),
    ({"batch": {"p99_ms": 500}}, "below the p95"),
    ({"batch": {"share": -1}}, "share"),
    ({"batch": 5}, "mapping"),
    ([1, 2], "mapping"),
    ({c: {"share": 0} for c in QOS_CLASSES}, "all zero"),
])
def test_bad_qos_settings(raw, match):
    with pytest.raises(ConfigError, match=match):
        load_qos(raw)


def test_sla_compliance():
    assert sla_compliance([0.01, 0.05, 0.051, 0.2], 0.05) == 0.5  # the target itself passes
    assert sla_compliance(iter([0.01] * 19 + [1.0]), 0.05) == 0.95
    assert sla_compliance([], 0.05) is None
