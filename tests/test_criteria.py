"""Threshold parsing, unit conversion, judging, profiles and the failure table."""

from __future__ import annotations

import math

import pytest

from pytest_kvcache import criteria as cr
from pytest_kvcache.criteria import (
    Criterion,
    builtin_criteria,
    format_value,
    merge,
    metric_kind,
    profile_criteria,
)
from pytest_kvcache.errors import ConfigError
from pytest_kvcache.judging import Outcome, evaluate, passed, render_table, unjudged


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("nvme.read.p95<=200ms", "nvme.read.p95", "<=", 0.2),
        ("cache.hit_rate >= 30%", "cache.hit_rate", ">=", 0.3),
        ("cache.hit_rate>=0.3", "cache.hit_rate", ">=", 0.3),
        ("storage.read_gbps>=2", "storage.read_gbps", ">=", 2.0),
        ("storage.read_gbps>=2GB/s", "storage.read_gbps", ">=", 2.0),
        ("nvme.write.gbps>=500MB/s", "nvme.write.gbps", ">=", 0.5),
        ("system.tokens_per_sec>=100", "system.tokens_per_sec", ">=", 100.0),
        ("nvme.read.p95<=200", "nvme.read.p95", "<=", 0.2),  # bare latency = ms
        ("e2e.p99 < 1.5s", "e2e.p99", "<", 1.5),
        ("gpu.read.p50<=50us", "gpu.read.p50", "<=", 50e-6),
        ("gpu.read.p50<=50µs", "gpu.read.p50", "<=", 50e-6),
        ("gpu.read.p50<=50μs", "gpu.read.p50", "<=", 50e-6),  # Greek mu
        ("gpu.read.max<=800ns", "gpu.read.max", "<=", 800e-9),
        ("cpu.gbps>1GiB/s", "cpu.gbps", ">", 2**30 / 1e9),
        ("cpu.read.gbps>=100MiB/s", "cpu.read.gbps", ">=", 100 * 2**20 / 1e9),
        ("cpu.write.gbps>=2000KB/s", "cpu.write.gbps", ">=", 0.002),
        ("errors.count==0", "errors.count", "==", 0.0),
        ("requests.completed>=1", "requests.completed", ">=", 1.0),
        ("storage.read_tokens_per_generated_token<=1.5", "storage.read_tokens_per_generated_token", "<=", 1.5),
        ("nvme.write.bytes>=1GB", "nvme.write.bytes", ">=", 1e9),
    ],
)
def test_parse_examples(text, metric, op, value):
    c = Criterion.parse(text)
    assert (c.metric, c.op) == (metric, op)
    assert c.value == pytest.approx(value, rel=1e-12)
    assert c.source == "cli"


def test_exact_conversions():
    assert Criterion.parse("nvme.read.p95<=200ms").value == 0.2
    assert Criterion.parse("nvme.write.gbps>=500MB/s").value == 0.5
    assert Criterion.parse("cache.hit_rate>=30%").value == 0.3


def test_text_is_normalised_and_bare_units_are_shown():
    assert Criterion.parse("  nvme.read.p95 <=  200 ").text == "nvme.read.p95 <= 200ms"
    assert Criterion.parse("storage.read_gbps>=2").text == "storage.read_gbps >= 2GB/s"
    assert Criterion.parse("cache.hit_rate>=30 %").text == "cache.hit_rate >= 30%"
    assert Criterion.parse("errors.count==0", source="marker").source == "marker"


def test_metric_kind():
    assert metric_kind("nvme.read.p95") == "latency"
    assert metric_kind("redis.demote_write.count") == "count"
    assert metric_kind("gds.write.bytes") == "bytes"
    assert metric_kind("gds.evict.bytes") is None  # deletes and evictions move no bytes
    assert metric_kind("nvme.delete.gbps") is None
    assert metric_kind("object.delete.iops") == "per_second"
    assert metric_kind("nvme.gbps") == "throughput"
    assert metric_kind("cache.hit_rate.rag") == "fraction"
    assert metric_kind("ttft.p95") == "latency"
    assert metric_kind("storage.read_tokens_per_generated_token") == "ratio"
    assert metric_kind("read_amplification") is None
    assert metric_kind("nvme.read") is None
    assert metric_kind("tape.read.p95") is None
    assert metric_kind("cache.hit") is None


def test_describe_documents_namespace_and_bare_units():
    text = cr.describe()
    assert "a bare number means ms" in text and "a bare number means GB/s" in text
    for name in cr.FIXED_METRICS:
        assert name in text
    for tier in cr.known_tiers:
        assert tier in text


def test_register_tier():
    assert metric_kind("cxl.read.p95") is None
    try:
        cr.register_tier("cxl")
        assert metric_kind("cxl.read.p95") == "latency"
        assert Criterion.parse("cxl.read.p95<=1ms").value == 0.001
    finally:
        cr.known_tiers.remove("cxl")
    with pytest.raises(ConfigError, match="clashes"):
        cr.register_tier("cache")
    with pytest.raises(ConfigError, match="lowercase"):
        cr.register_tier("Bad.Tier")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("nvme.read.p95 200ms", ["no comparison operator", "<=", "e.g. nvme.read.p95<=200ms"]),
        ("nvme.read.p95=>200ms", ["unknown operator '=>'"]),
        ("nvme.read.p95=200ms", ["unknown operator '='", "=="]),
        ("a<b<c", ["more than one comparison operator"]),
        ("<=200ms", ["no metric name"]),
        ("nvme read p95<=200ms", ["unknown metric", "nvme.read.p95"]),
        ("nvme.reed.p95<=200ms", ["unknown metric 'nvme.reed.p95'", "nvme.read.p95", "python -m"]),
        ("cache.hitrate>=30%", ["did you mean", "cache.hit_rate"]),
        ("tape.read.p95<=1s", ["unknown tier 'tape'", "nvme", "register_tier"]),
        ("nvme.read.p95<=200xs", ["unknown unit 'xs'", "ns, us, µs, ms, s"]),
        ("nvme.read.gbps>=2Gbit", ["unknown unit 'Gbit'", "GB/s, MB/s", "MiB/s"]),
        ("cache.hit_rate>=30pct", ["unknown unit 'pct'", "%"]),
        ("requests.completed>=5ms", ["takes a bare number", "requests.completed>=1"]),
        ("system.tokens_per_sec>=10k", ["takes a bare number"]),
        (
            "nvme.read.p95<=fast",
            [
                "bad threshold 'nvme.read.p95<=fast': value must be a number with an optional "
                "unit (ns, us, ms, s), e.g. nvme.read.p95<=200ms"
            ],
        ),
        ("nvme.read.p95<=", ["value must be a number"]),
        ("errors.count<=few", ["plain number", "errors.count<=1"]),
        ("cache.hit_rate>=30", ["fraction 0..1", "30%"]),
        ("cache.hit_rate>=130%", ["outside 0%..100%"]),
    ],
)
def test_bad_thresholds_name_the_fix(text, fragments):
    with pytest.raises(ConfigError) as info:
        Criterion.parse(text)
    msg = str(info.value)
    assert msg.startswith("bad threshold")
    for fragment in fragments:
        assert fragment in msg


def test_non_string_threshold():
    with pytest.raises(ConfigError, match="string"):
        Criterion.parse(0.3)  # type: ignore[arg-type]


def test_evaluate_pass_fail_na_and_boundaries():
    crits = [
        Criterion.parse("nvme.read.p95<=200ms"),
        Criterion.parse("nvme.write.p95<200ms"),
        Criterion.parse("cache.hit_rate>=30%"),
        Criterion.parse("storage.gbps>0.5"),
        Criterion.parse("errors.count==0"),
        Criterion.parse("gpu.read.p95<=1ms"),
        Criterion.parse("cpu.read.p95<=1ms"),
    ]
    metrics = {
        "nvme.read.p95": 0.2,  # equal: passes <=
        "nvme.write.p95": 0.2,  # equal: fails <
        "cache.hit_rate": 0.25,
        "storage.gbps": 0.5,  # equal: fails >
        "errors.count": 0,
        "cpu.read.p95": math.nan,
    }
    out = evaluate(crits, metrics)
    assert [o.status for o in out] == ["pass", "fail", "fail", "fail", "pass", "n/a", "n/a"]
    assert out[0].measured == 0.2
    assert out[5].measured is None and out[6].measured is None
    assert not passed(out)
    assert passed([o for o in out if o.status != "fail"])
    assert passed([])


def test_evaluate_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    (o,) = evaluate([Criterion.parse("e2e.p95<=1s")], {"e2e.p95": np.float64(0.5)})
    assert o.status == "pass" and o.measured == 0.5


def test_profiles():
    lat = profile_criteria("latency")
    assert [c.text for c in lat] == [
        "nvme.read.p95 <= 200ms",
        "nvme.write.p95 <= 500ms",
        "nvme.demote_write.p95 <= 500ms",
        "cpu.read.p95 <= 150ms",
        "cpu.write.p95 <= 150ms",
        "cache.hit_rate >= 30%",
        "requests.completed >= 1",
    ]
    assert {c.source for c in lat} == {"profile:latency"}
    thr = {c.metric: c for c in profile_criteria("throughput")}
    assert thr["storage.gbps"].value == 0.5 and thr["storage.gbps"].op == ">="
    assert thr["requests.completed"].value >= 1
    # a run that moved one byte does not pass the throughput profile
    out = evaluate(profile_criteria("throughput"), {"storage.gbps": 1e-9, "requests.completed": 1})
    assert not passed(out)
    assert profile_criteria("none") == []
    with pytest.raises(ConfigError, match="latency, throughput, none"):
        profile_criteria("fast")


def test_merge_replaces_same_metric_and_direction():
    profile = profile_criteria("latency")
    user = [
        Criterion.parse("nvme.read.p95<50ms"),  # same direction: replaces <=200ms
        Criterion.parse("cache.hit_rate<=90%"),  # other direction: both stay
        Criterion.parse("cpu.write.p95==0.1s"),  # == replaces either bound
        Criterion.parse("e2e.p95<=1s"),
    ]
    merged = merge(profile, user)
    texts = [c.text for c in merged]
    assert "nvme.read.p95 <= 200ms" not in texts
    assert "nvme.read.p95 < 50ms" in texts
    assert "cache.hit_rate >= 30%" in texts and "cache.hit_rate <= 90%" in texts
    assert "cpu.write.p95 <= 150ms" not in texts
    assert "nvme.write.p95 <= 500ms" in texts and "e2e.p95 <= 1s" in texts
    assert len(merged) == len(profile) - 2 + len(user)
    assert merge([], user) == user and merge(profile, []) == profile


@pytest.mark.parametrize(
    ("metric", "value", "shown"),
    [
        ("nvme.read.p95", 0.2, "200 ms"),
        ("nvme.read.p95", 0.0123456, "12.3 ms"),
        ("nvme.read.p95", 9.5, "9,500 ms"),
        ("nvme.read.p95", 12.0, "12 s"),
        ("gpu.read.p50", 45.6e-6, "45.6 µs"),
        ("gpu.read.p50", 120e-9, "120 ns"),
        ("storage.gbps", 2.345, "2.35 GB/s"),
        ("cache.hit_rate", 0.3, "30%"),
        ("cache.hit_rate", 0.4567, "45.7%"),
        ("requests.completed", 12345, "12,345"),
        ("system.tokens_per_sec", 1234.6, "1,235"),
        ("storage.read_tokens_per_generated_token", 1.25, "1.25"),
        ("nvme.read.p95", None, "-"),
    ],
)
def test_format_value(metric, value, shown):
    assert format_value(metric, value) == shown


def test_render_table():
    crits = merge(profile_criteria("latency"), [Criterion.parse("e2e.p95<=1s", source="marker")])
    out = evaluate(crits, {"nvme.read.p95": 0.35, "cpu.read.p95": 0.01, "cache.hit_rate": 0.5})
    table = render_table(out)
    header = table.splitlines()[0].split()
    assert header == ["criterion", "measured", "status", "source", "why"]
    for c in crits:
        assert c.text in table
    assert "FAIL" in table and "PASS" in table and "n/a" in table
    assert "350 ms" in table and "profile:latency" in table and "marker" in table
    fail_line = next(line for line in table.splitlines() if "nvme.read.p95" in line)
    assert "FAIL" in fail_line
    assert isinstance(out[0], Outcome)


def test_a_user_gate_on_a_tier_the_scenario_has_fails_when_nothing_was_measured():
    gate = Criterion.parse("nvme.read.p95<=200ms", "cli")
    profile = Criterion.parse("nvme.read.p95<=200ms", "profile:latency")
    # nvme below cpu is read only once something spilled: a profile gate says 'none happened'
    out = evaluate([gate, profile], {}, tiers=["cpu", "nvme"])
    assert [o.status for o in out] == ["fail", "n/a"]
    assert "no read on the nvme tier" in out[1].reason
    (o,) = evaluate([gate], {}, tiers=["cpu"])
    assert (o.status, o.reason) == ("n/a", "no nvme tier in this scenario")


def test_a_profile_gate_on_the_first_tier_fails_when_nothing_was_measured():
    """Every request writes to the first tier: no samples there means nothing was measured."""
    profile = Criterion.parse("nvme.read.p95<=200ms", "profile:latency")
    (o,) = evaluate([profile], {}, tiers=["nvme"])
    assert o.status == "fail" and "nothing was measured" in o.reason
    hit = Criterion.parse("cache.hit_rate>=30%", "profile:latency")
    assert evaluate([hit], {}, tiers=["nvme"])[0].status == "fail"  # no lookups: not a pass


def test_ops_a_configuration_cannot_have_and_absent_features_are_na_with_the_reason():
    crits = [Criterion.parse(t) for t in ("nvme.demote_write.p95<=1s", "cpu.demote_read.count>=1",
                                          "cache.hit_rate.rag>=50%")]
    out = evaluate(crits, {}, tiers=["nvme"], absent={"cache.hit_rate.rag": "no RAG documents"})
    assert [o.status for o in out] == ["n/a"] * 3
    assert out[0].reason == "nothing is demoted into nvme: it is the first tier"
    assert out[1].reason == "no cpu tier in this scenario"
    assert out[2].reason == "no RAG documents"
    storage = Criterion.parse("storage.read_gbps>=1")
    assert evaluate([storage], {}, tiers=["gpu", "cpu"])[0].reason == "no storage tier in this scenario"
    assert evaluate([storage], {}, tiers=["nvme"])[0].status == "fail"  # it has one: nothing measured fails


def test_a_user_criterion_no_scenario_could_judge_is_reported():
    rag = Criterion.parse("cache.hit_rate.rag>=0.5", "cli")
    read = Criterion.parse("nvme.read.p95<=1s", "cli")
    profile = Criterion.parse("gpu.read.p95<=1s", "profile:latency")
    per = [evaluate([rag, read, profile], {"nvme.read.p95": 0.1}, ["nvme"], {"cache.hit_rate.rag": "no RAG"}),
           evaluate([rag, read, profile], {}, ["cpu"], {"cache.hit_rate.rag": "no RAG"})]
    assert unjudged([rag, read, profile], per) == [(rag, ["no RAG"])]
    assert unjudged([rag], []) == []  # no scenario ran: nothing to say


@pytest.mark.parametrize("text", ["nvme.read.p95<0", "nvme.read.p95<=-1ms", "storage.gbps<0GB/s",
                                  "requests.completed==-1", "cache.hit_rate>100%", "cache.hit_rate>1"])
def test_a_threshold_that_can_never_pass_is_a_config_error(text):
    with pytest.raises(ConfigError, match="can never pass"):
        Criterion.parse(text)


def test_bounds_at_the_edge_of_the_domain_are_fine():
    for text in ("nvme.read.p95>=0", "cache.hit_rate<=100%", "cache.hit_rate>=100%", "errors.count==0"):
        Criterion.parse(text)


def test_builtin_criteria_are_replaced_by_a_user_bound_on_the_same_metric():
    user = Criterion.parse("cache.entries_dropped<=10")
    merged = merge(builtin_criteria(), [user])
    assert [c.text for c in merged if c.metric == "cache.entries_dropped"] == ["cache.entries_dropped <= 10"]
    assert {c.source for c in builtin_criteria()} == {"built-in"}


def test_honesty_criteria_are_on_whatever_the_profile_and_a_user_bound_replaces_one():
    from pytest_kvcache.session import KVSession
    from pytest_kvcache.settings import Settings

    honesty = cr.builtin_criteria()
    assert [c.text for c in honesty] == ["cache.entries_dropped <= 0", "storage.memory_tiers == 0",
                                         "device.read_ratio >= 0.9", "device.write_ratio >= 0.9"]
    assert {c.source for c in honesty} == {"built-in"}
    for profile in ("latency", "throughput"):
        texts = [c.text for c in KVSession.criteria_for(Settings(profile=profile))]
        assert {c.text for c in honesty} < set(texts)
    assert KVSession.criteria_for(Settings(profile="none")) == honesty
    mine = KVSession.criteria_for(Settings(profile="none", threshold=("device.read_ratio>=0.5",
                                                                     "storage.memory_tiers<=1")))
    assert [(c.text, c.source) for c in mine] == [("cache.entries_dropped <= 0", "built-in"),
                                                  ("device.write_ratio >= 0.9", "built-in"),
                                                  ("device.read_ratio >= 0.5", "default"),
                                                  ("storage.memory_tiers <= 1", "default")]


HONESTY = [c for c in cr.builtin_criteria() if c.metric != "cache.entries_dropped"]


def test_honesty_criteria_fail_page_cache_and_memory_and_pass_a_drive():
    judged = {o.criterion.metric: o.status for o in evaluate(HONESTY, {
        "storage.memory_tiers": 1, "device.read_ratio": 0.02, "device.write_ratio": 1.7}, ["nvme"])}
    assert judged == {"storage.memory_tiers": "fail", "device.read_ratio": "fail", "device.write_ratio": "pass"}
    drive = evaluate(HONESTY, {"storage.memory_tiers": 0, "device.read_ratio": 0.9,
                                                "device.write_ratio": 1.0}, ["nvme"])
    assert [o.status for o in drive] == ["pass", "pass", "pass"]
    # too few bytes to judge (ratio absent) or no storage tier: n/a, never a pass
    assert [o.status for o in evaluate(HONESTY, {}, ["cpu"])] == ["n/a", "n/a", "n/a"]
    assert cr.metric_kind("device.read_ratio") == "ratio" and cr.metric_kind("storage.memory_tiers") == "count"
