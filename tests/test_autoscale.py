"""The user pool that grows and shrinks during a run (issue 11): the runner's set_active_users,
the autoscaler's qos and capacity policies, the SLA search, and the scaler's step figures."""

import math
from types import SimpleNamespace

import pytest
from test_load_runner import hand_trace, run

from pytest_kvcache.errors import ConfigError
from pytest_kvcache.load.autoscaler import (
    COOLDOWN_STEPS,
    CapacityPolicy,
    QosPolicy,
    SlaSearch,
    parse_sla_metric,
)
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.scaling import UserScaler
from pytest_kvcache.settings import build_settings


# -- the policies, on fed figures -------------------------------------------------------
def test_qos_scales_up_below_the_low_mark_then_cools_down():
    policy = QosPolicy(target=0.8, max_users=100)
    d = policy.decide(8, 0.5)
    assert (d.users, d.decision) == (10, "up") and "< low mark 0.70" in d.reason
    for _ in range(COOLDOWN_STEPS):  # the next decisions hold, however low the saturation
        assert policy.decide(10, 0.1).decision == "hold"
    assert policy.decide(10, 0.1).users == 20  # far below the low mark: doubles


def test_qos_scales_down_above_the_high_mark_and_holds_inside_the_band():
    policy = QosPolicy(target=0.8, max_users=100)
    d = policy.decide(8, 1.5)
    assert (d.users, d.decision) == (6, "down") and "high mark 0.90" in d.reason
    policy.decide(6, 1.5)  # cooldown
    assert policy.decide(6, 2.0).users == 3  # far above the high mark: halves
    policy.decide(3, 1.5)  # cooldown
    assert policy.decide(3, 0.85).decision == "hold"
    assert policy.decide(3, 0.75).decision == "hold"
    assert policy.decide(1, 5.0).decision == "hold"  # never below one user
    assert policy.decide(100, 0.0).decision == "hold"  # never above the most users
    assert policy.decide(6, None).decision == "hold"  # no sample: no figure to act on


def test_capacity_stops_after_two_steps_that_do_not_improve():
    policy = CapacityPolicy(max_users=100)
    users, seen = 2, []
    for gbps in (0.5, 0.9, 1.2, 1.21, 1.1):  # +2% is no gain: 1.21 and 1.1 are the two flat steps
        d = policy.decide(users, gbps)
        seen.append((users, d.decision))
        users = d.users
    assert seen == [(2, "up"), (3, "up"), (5, "up"), (8, "up"), (12, "stop")]
    assert (policy.peak_gbps, policy.peak_users) == (1.2, 5)


def test_capacity_a_new_peak_resets_the_count_and_max_users_stops():
    policy = CapacityPolicy(max_users=6)
    assert policy.decide(2, 1.0).decision == "up"
    assert policy.decide(3, 0.9).decision == "up"  # one flat step
    assert policy.decide(5, 2.0).users == 6  # a new peak resets it; growth capped at the most
    d = policy.decide(6, 3.0)
    assert d.decision == "stop" and "most users" in d.reason and policy.peak_users == 6


@pytest.mark.parametrize(("start", "knee"), [(1, 37), (4, 37), (64, 37), (1, 1), (2, 100)])
def test_sla_search_finds_the_knee_of_a_synthetic_p95(start, knee):
    """p95(users) rises with users and crosses the 100 ms target just after ``knee`` users."""
    def p95(users):
        return 0.1 * users / knee

    search, users, tried = SlaSearch(start, max_users=100), start, []
    while True:
        d = search.record(users, p95(users), 0.1)
        tried.append(users)
        if d.decision == "stop":
            break
        users = d.users
    assert search.knee == (knee, pytest.approx(0.1))
    assert len(tried) <= 2 * math.ceil(math.log2(100)) + 2  # doubling then bisecting


def test_sla_search_reports_no_knee_when_one_user_misses():
    search = SlaSearch(1, max_users=10)
    assert search.record(1, 0.5, 0.1).decision == "stop"
    assert search.knee == (None, None)
    search = SlaSearch(2, max_users=10)
    assert search.record(2, None, 0.1).users == 1  # no samples is no pass


@pytest.mark.parametrize(("text", "kind"), [("storage.read.p95", "io"), ("nvme.write.p99", "io"),
                                            ("e2e.p95", "e2e"), ("qos.interactive.p50", "qos")])
def test_sla_metric_parses(text, kind):
    assert parse_sla_metric(text).kind == kind


@pytest.mark.parametrize("text", ["storage.read", "nvme.read.p42", "throughput", "e2e.mean"])
def test_bad_sla_metric_names_the_fix(text):
    with pytest.raises(ConfigError, match="--kv-sla-metric .*storage.read.p95"):
        parse_sla_metric(text)


@pytest.mark.parametrize(("cli", "match"), [({"autoscale": "qos", "request_rate": "5"}, "open-loop"),
                                            ({"autoscale": "capacity", "users": "8", "autoscale_max_users": "4"},
                                             "--kv-autoscale-max-users 4 is below --kv-users 8"),
                                            ({"autoscale": "qos", "autoscale_target": "0.05"}, "above 0.1"),
                                            ({"autoscale": "bogus"}, "one of off, qos, capacity, sla-search")])
def test_bad_autoscale_settings_name_the_fix(cli, match):
    with pytest.raises(ConfigError, match=match):
        build_settings(cli, {}, {})


# -- the runner's pool --------------------------------------------------------------------
def test_users_are_really_added_and_removed_while_the_run_goes_on():
    """2 users start; at 0.5 s the pool grows to 6, at 1.5 s shrinks to 3: the users that
    finish requests in each phase are exactly the pool's (after a removed user's last turn)."""
    phases = {}

    def tick(runner, elapsed):
        phase = 0 if elapsed < 0.5 else 1 if elapsed < 1.5 else 2
        if phase not in phases:
            phases[phase] = set()
            if phase == 1:
                runner.set_active_users(6)
            if phase == 2:
                runner.set_active_users(3)
            runner.take_served_users()  # requests in flight at the change belong to no phase
            return
        phases[phase] |= runner.take_served_users()

    trace = hand_trace(10, turns=400, context=64, think=(0.0,))
    info, rec, runner, _ = run(trace, latency=0.002, on_tick=tick, duration_s=2.5, start_users=2)
    assert info.errors == []
    assert phases[0] and phases[0] <= {0, 1}  # only the 2 starting users
    assert phases[1] == set(range(6))  # 4 users added, each running its own trace requests
    assert phases[2] <= set(range(6)) and {0, 1, 2} <= phases[2]
    assert runner.active_users() == 3


def test_removed_user_finishes_its_request_and_readded_user_goes_on():
    trace = hand_trace(4, turns=400, context=64)
    state = {}

    def tick(runner, elapsed):
        if "down" not in state and elapsed > 0.3:
            state["down"] = runner.set_active_users(1)
        elif "up" not in state and elapsed > 1.0:
            state["pos"] = runner._users[3].pos
            state["up"] = runner.set_active_users(4)

    info, rec, runner, _ = run(trace, latency=0.002, on_tick=tick, duration_s=1.6, start_users=4)
    assert info.errors == [] and (state["down"], state["up"]) == (1, 4)
    assert 0 < state["pos"] < runner._users[3].pos  # went on from where it stopped
    assert info.requests_started - info.requests_finished <= runner.workers  # only the run's end cuts


# -- the scaler on a mock run ---------------------------------------------------------------
def _scaler(mode, **kw):
    s = SimpleNamespace(autoscale=mode, autoscale_interval=0.6, sla_metric="gpu.read.p95", sla_target_ms=50.0,
                        users=2, autoscale_max_users=8, autoscale_target=0.8)
    s.__dict__.update(kw)
    return UserScaler(s, storage_tier="gpu")


def test_capacity_scaler_changes_the_real_load_and_records_each_step():
    """The mock's I/O takes a fixed time, so GB/s grows with users: the scaler grows the pool to
    its most and stops there; each step's users_served is the pool's size."""
    scaler = _scaler("capacity")
    trace = hand_trace(8, turns=2000, context=128)
    info, rec, runner, _ = run(trace, latency=0.003, on_tick=scaler.tick, duration_s=20.0, start_users=2)
    steps = scaler.steps
    assert info.errors == [] and scaler.stopped is not None
    assert len(steps) >= 3
    assert [s["users"] for s in steps[:3]] == [2, 3, 5]
    assert [s["users_served"] for s in steps[:3]] == [2, 3, 5]  # distinct users that finished requests
    assert all(s["storage_gbps"] > 0 for s in steps)
    summary = scaler.summary()
    assert summary["peak_users"] in [s["users"] for s in steps]
    assert summary["peak_gbps"] == max(s["storage_gbps"] for s in steps) or summary["peak_gbps"] is not None
    assert scaler.metrics()["autoscale.users"] == summary["peak_users"]
    assert info.finished_ns and rec.window_s < 20.0  # the scaler ended the run


def test_sla_search_scaler_reports_the_knee_from_its_own_steps():
    """A mock with a fixed I/O latency and one worker per user: every count meets a loose
    target, so the search doubles to the most users and reports it with its step p95."""
    scaler = _scaler("sla-search", sla_target_ms=1000.0, autoscale_max_users=4, users=1)
    trace = hand_trace(4, turns=2000, context=128)
    info, rec, runner, _ = run(trace, latency=0.002, on_tick=scaler.tick, duration_s=20.0, start_users=1)
    assert [s["users"] for s in scaler.steps] == [1, 2, 4]
    assert [s["users_served"] for s in scaler.steps] == [1, 2, 4]
    m = scaler.metrics()
    assert m["sla_search.users"] == 4 and m["sla_search.p95"] == scaler.steps[-1]["sla_p95_s"] > 0


def test_step_figures_count_only_what_completed_in_the_step():
    rec = Recorder()
    from pytest_kvcache.backends.base import IOResult

    rec.io("nvme", "read", IOResult(nbytes=100, end_ns=1_000, dur_ns=10), 1)  # before any step
    rec.begin_step(2_000)
    rec.io("nvme", "read", IOResult(nbytes=100, end_ns=1_500, dur_ns=10), 1)  # ended before the step
    rec.io("nvme", "read", IOResult(nbytes=300, end_ns=3_000, dur_ns=500), 1)
    rec.request(3_000, {"e2e": 7_000}, {}, qos="interactive")
    step = rec.end_step(1_000_002_000)
    rec.io("nvme", "read", IOResult(nbytes=100, end_ns=1_000_003_000, dur_ns=10), 1)  # after
    assert step.bytes == {("nvme", "read"): 300} and step.requests == 1
    assert step.gbps("nvme") == pytest.approx(300 / 1e9) and step.gbps("cpu") is None
    assert step.percentile(step.io[("nvme", "read")], 95) == pytest.approx(500e-9)
    assert step.percentile(step.qos_e2e["interactive"], 95) == pytest.approx(7e-6)


# -- the report ---------------------------------------------------------------------------------
def test_sla_search_scenario_reports_its_steps_knee_and_criteria(tmp_path):
    from test_engine import settings_for

    from pytest_kvcache.backends import default_registry
    from pytest_kvcache.criteria import Criterion
    from pytest_kvcache.engine import provision, run_scenario
    from pytest_kvcache.models import resolve_model
    from pytest_kvcache.report import scenario_text
    from pytest_kvcache.tiers import TIER_CONFIGS
    from pytest_kvcache.workload import WorkloadParams, generate_trace

    s = settings_for(tmp_path, autoscale="sla-search", users=1, autoscale_max_users=2, autoscale_interval=0.3,
                     duration=20, requests_per_user=400, sla_metric="storage.write.p95", sla_target_ms=60_000)
    trace = generate_trace(WorkloadParams(seed=1, users=2, requests_per_user=400, think_time_scale=0,
                                          max_context_tokens=512))
    criteria = [Criterion.parse(t, "cli") for t in ("sla_search.users>=1", "sla_search.p95<=60s", "autoscale.users>=1")]
    prov = provision(TIER_CONFIGS["storage-only"], s, default_registry())
    try:
        result = run_scenario(prov, s, resolve_model(s.model), trace, criteria)
    finally:
        prov.close()
    block = result.to_dict()["summary"]["sla_search"]
    assert [st["users"] for st in block["steps"]] == [1, 2] and block["knee_users"] == 2
    assert {"t_s", "users", "users_served", "storage_gbps", "sla_p95_s", "decision", "reason"} <= set(block["steps"][0])
    assert result.metrics["sla_search.users"] == 2 and result.metrics["sla_search.p95"] == block["knee_p95_s"]
    status = {o.criterion.metric: (o.status, o.reason) for o in result.outcomes}
    assert status["sla_search.users"][0] == status["sla_search.p95"][0] == "pass"
    assert status["autoscale.users"][0] == "n/a" and "does not autoscale" in status["autoscale.users"][1]
    assert "SLA search (storage.write.p95 <= 60000 ms): knee at 2 users" in scenario_text(result)


def test_scaling_plot_is_drawn_for_autoscale_scenarios(tmp_path):
    pytest.importorskip("matplotlib")
    from pytest_kvcache.plots import render_plots

    steps = [{"t_s": 1.0, "users": 2, "storage_gbps": 0.5}, {"t_s": 3.0, "users": 3, "storage_gbps": None}]
    report = {"scenarios": [{"name": "storage-only", "id": "a", "summary": {"autoscale": {"steps": steps}}},
                            {"name": "storage-only", "id": "b", "summary": {}}]}
    render_plots(report, tmp_path)
    assert (tmp_path / "a-scaling.png").stat().st_size > 0 and not (tmp_path / "b-scaling.png").exists()


def test_the_trace_and_the_memory_check_count_the_most_users_of_the_pool():
    from pytest_kvcache.memory import host_bytes_needed
    from pytest_kvcache.session import workload_params

    fixed = build_settings({"users": "4"}, {}, {})
    scaled = fixed.replace(autoscale="capacity", autoscale_max_users=40)
    assert (fixed.most_users, scaled.most_users) == (4, 40)
    assert workload_params(scaled).users == 40 and workload_params(fixed).users == 4
    assert sum(host_bytes_needed(("nvme",), scaled).values()) > sum(host_bytes_needed(("nvme",), fixed).values())
