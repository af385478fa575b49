"""The user-pool autoscaler and SLA search at work: measure a step, decide, change the real load.

``UserScaler.tick`` runs in the runner's tick loop (about 4 times a second). From the window's
opening it measures steps of ``--kv-autoscale-interval`` seconds with the recorder's step
accounting (``Recorder.begin_step``/``end_step``: bytes of transfers and latencies of I/Os
that completed in the step, e2e of requests that finished in it), feeds them to the policy of
``load.autoscaler`` and applies its answer with ``Runner.set_active_users``. After a change
of the user count, half an interval passes unmeasured (the added users' first requests, the
removed users' last) before the next step starts, so each step's figures are those of one user
count. Capacity and SLA search end the run when they stop; qos runs the whole duration.

Every step is kept: its start (s into the run), seconds, users in the pool, the distinct users
that finished a request in it (the proof the load really changed), storage GB/s, the SLA
metric's p95 (and the saturation in qos mode), the decision and its reason.
"""

from __future__ import annotations

import time

from .load.autoscaler import CapacityPolicy, QosPolicy, SlaSearch, parse_sla_metric

SETTLE_FRACTION = 0.5  # of an interval, unmeasured after a change of the user count


class UserScaler:
    """Drives one run's user pool in mode ``settings.autoscale`` (qos, capacity, sla-search)."""

    def __init__(self, settings, storage_tier: str | None, clock=time.perf_counter_ns):
        self.mode = settings.autoscale
        self.interval_ns = int(settings.autoscale_interval * 1e9)
        self.metric = parse_sla_metric(settings.sla_metric)
        self.target_s = settings.sla_target_ms / 1e3
        self.storage_tier = storage_tier
        self.users = settings.users
        self.max_users = settings.autoscale_max_users
        self.clock = clock
        self.steps: list[dict] = []
        self.stopped: str | None = None  # why the scaler stopped (None: the window's end stopped it)
        if self.mode == "qos":
            self.policy = QosPolicy(settings.autoscale_target, self.max_users)
        elif self.mode == "capacity":
            self.policy = CapacityPolicy(self.max_users)
        else:
            self.policy = SlaSearch(settings.users, self.max_users)
        self._t0: int | None = None
        self._measure_from: int | None = None  # when the next step starts
        self._measuring = False
        self._step_started = 0

    def tick(self, runner, elapsed_s: float) -> None:
        """Called from the runner's loop; acts once the window is open."""
        if self.stopped is not None:
            return
        rec = runner.recorder
        now = self.clock()
        if self._t0 is None:
            self._t0 = runner.info.started_ns or now
        if rec.window_start_ns is None or now < rec.window_start_ns:
            return  # warm-up: the starting users run unmeasured
        if not self._measuring:
            if self._measure_from is None:
                self._measure_from = now
            if now >= self._measure_from:
                runner.take_served_users()  # served before the step: not this step's
                rec.begin_step(now)
                self._measuring, self._step_started = True, now
            return
        if now - self._step_started < self.interval_ns:
            return
        step = rec.end_step(now)
        self._measuring = False
        if step is None:
            return
        served = runner.take_served_users()
        self._record(step, served, runner)

    def _record(self, step, served: set[int], runner) -> None:
        gbps = step.gbps(self.storage_tier) if self.storage_tier else None
        p95 = self.p95(step)
        row = {"t_s": round((step.start_ns - self._t0) / 1e9, 3), "seconds": round(step.seconds, 3),
               "users": self.users, "users_served": len(served), "requests": step.requests,
               "storage_gbps": None if gbps is None else round(gbps, 6),
               "sla_p95_s": p95, "e2e_p95_s": step.percentile(step.e2e, 95.0)}
        if self.mode == "qos":
            saturation = None if p95 is None else p95 / self.target_s
            row["saturation"] = None if saturation is None else round(saturation, 4)
            decision = self.policy.decide(self.users, saturation)
        elif self.mode == "capacity":
            decision = self.policy.decide(self.users, gbps)
        else:
            decision = self.policy.record(self.users, p95, self.target_s)
        row.update(decision=decision.decision, reason=decision.reason, next_users=decision.users)
        self.steps.append(row)
        if decision.decision == "stop":
            self.stopped = decision.reason
            runner.end_run()
            return
        if decision.users != self.users:
            self.users = runner.set_active_users(decision.users)
            self._measure_from = self.clock() + int(self.interval_ns * SETTLE_FRACTION)
        else:
            self._measure_from = self.clock()

    def p95(self, step) -> float | None:
        """The SLA metric (its percentile) over ``step`` in seconds; None without samples."""
        m = self.metric
        if m.kind == "e2e":
            return step.percentile(step.e2e, m.percentile)
        if m.kind == "qos":
            return step.percentile(step.qos_e2e.get(m.cls), m.percentile)
        tier = self.storage_tier if m.tier == "storage" else m.tier
        return step.percentile(step.io.get((tier, m.op)), m.percentile)

    def summary(self) -> dict:
        """The JSON ``summary.autoscale`` (qos, capacity) or ``summary.sla_search`` block."""
        out = {"mode": self.mode, "interval_s": self.interval_ns / 1e9, "settle_s": self.interval_ns * SETTLE_FRACTION / 1e9,
               "start_users": self.steps[0]["users"] if self.steps else self.users, "max_users": self.max_users,
               "sla_metric": self.metric.text, "sla_target_s": self.target_s, "steps": self.steps,
               "stopped": self.stopped or "the run's duration ended before the scaler stopped"}
        if self.mode == "qos":
            out.update(target_saturation=self.policy.target, low_mark=self.policy.low, high_mark=self.policy.high,
                       formula="saturation = step p95 of sla_metric / sla_target_s",
                       settled_users=self.steps[-1]["users"] if self.steps else None,
                       peak_gbps=max((s["storage_gbps"] for s in self.steps if s["storage_gbps"] is not None), default=None))
        elif self.mode == "capacity":
            out.update(peak_gbps=self.policy.peak_gbps, peak_users=self.policy.peak_users)
        else:
            users, p95 = self.policy.knee
            out.update(knee_users=users, knee_p95_s=p95)
        return out

    def metrics(self) -> dict:
        """Flat criteria metrics: ``autoscale.users``/``autoscale.peak_gbps`` or
        ``sla_search.users``/``sla_search.p95`` (None when there is no figure)."""
        s = self.summary()
        if self.mode == "sla-search":
            return {"sla_search.users": s["knee_users"], "sla_search.p95": s["knee_p95_s"]}
        users = s["settled_users"] if self.mode == "qos" else s["peak_users"]
        return {"autoscale.users": users, "autoscale.peak_gbps": s["peak_gbps"]}
