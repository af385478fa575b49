"""One scenario's outcome: figures, criteria, invariants and how each figure was measured."""

from __future__ import annotations

from dataclasses import dataclass, field

from .criteria import Criterion, format_value
from .judging import Outcome, passed, render_table


def scenario_id(scenario: dict) -> str:
    """A saved scenario's id (``ScenarioResult.id``), also for reports written before it existed."""
    nodeid = scenario.get("nodeid") or ""
    return scenario.get("id") or (nodeid.rsplit("::", 1)[-1] if nodeid else scenario["name"])


@dataclass
class ScenarioResult:
    name: str
    question: str
    tiers: list[str]
    metrics: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    invariant_problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    backends: list[dict] = field(default_factory=list)
    occupancy: dict = field(default_factory=dict)
    device_counters: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    nodeid: str = ""
    samples: dict = field(default_factory=dict, repr=False)  # (tier, op) -> latencies in s; not saved
    absent: dict = field(default_factory=dict, repr=False)  # metric -> why it is n/a here (judging.evaluate); not saved

    @property
    def id(self) -> str:
        """What names this scenario in reports: its test's name with parameters (e.g.
        ``test_rag[storage-only]``), else its tier configuration's name. Several tests run the
        same configuration, so ``name`` alone does not tell them apart."""
        return scenario_id({"name": self.name, "nodeid": self.nodeid})

    @property
    def status(self) -> str:
        if self.run.get("aborted"):
            return "interrupted"
        if self.errors or self.invariant_problems or self.metrics.get("errors.count"):
            return "error"
        return "passed" if passed(self.outcomes) else "failed"

    @property
    def rank0_metrics(self) -> dict:
        """The flat metrics of rank 0 alone: under mpirun ``metrics`` is the ranks' aggregate (a
        user count summed) while sections such as ``summary.autoscale`` are rank 0's
        (``aggregate.RANK0_SECTIONS``); without MPI, ``metrics`` itself."""
        cluster = self.summary.get("cluster")
        return cluster["per_rank"][0]["metrics"] if cluster else self.metrics

    def failure_message(self) -> str | None:
        """None when the scenario passed; otherwise what went wrong, with every criterion."""
        lines = []
        if self.errors:
            lines.append(f"scenario {self.id}: the run failed: " + "; ".join(self.errors[:3]))
        elif self.metrics.get("errors.count"):
            first = self.summary.get("errors", {}).get("first", [])
            lines.append(f"scenario {self.id}: {self.metrics['errors.count']} I/O errors, first: " + "; ".join(first[:3]))
        if self.invariant_problems:
            lines.append(f"scenario {self.id}: cache invariants broken: " + "; ".join(self.invariant_problems))
        if not passed(self.outcomes):
            failed = sum(o.status == "fail" for o in self.outcomes)
            lines.append(f"scenario {self.id}: {failed} of {len(self.outcomes)} criteria failed")
        fix = self.summary.get("entries_dropped", {}).get("fix")
        if fix and any(o.criterion.metric == "cache.entries_dropped" and o.status == "fail" for o in self.outcomes):
            lines.append(f"scenario {self.id}: {fix}")
        if not lines:
            return None
        if self.outcomes:
            lines.append(render_table(self.outcomes))
        return "\n".join(lines)

    def headline(self) -> dict:
        """JUnit properties: the summary's headline figures (``metrics.HEADLINE``) and every
        criterion's outcome; n/a figures are the string "n/a"."""
        out = {"kv_trace_sha256": self.trace.get("sha256", ""),
               "kv_workload_sha256": self.trace.get("workload_sha256", "")}
        if self.summary.get("cluster"):  # an MPI run: the figures are the ranks' aggregate
            out["kv_ranks"] = self.summary["cluster"]["ranks"]
        figures = self.summary.get("headline") or {"status": self.status}
        for key, value in figures.items():
            out[f"kv_{key}"] = "n/a" if value is None else value
        arrivals = self.summary.get("arrivals") or {}
        if arrivals.get("open_loop"):
            out["kv_requests_offered"], out["kv_requests_rejected"] = arrivals["offered"], arrivals["rejected"]
        for name, c in (self.summary.get("qos") or {}).items():
            if c["requests"] or c.get("offered"):
                out[f"kv_qos_{name}_requests"] = c["requests"]
                if c.get("rejected") is not None:
                    out[f"kv_qos_{name}_rejected"] = c["rejected"]
                for key, value in (("e2e_p95_ms", c["e2e_ms"].get("p95")), ("queue_wait_p95_ms", c["queue_wait_ms"].get("p95")),
                                   ("ttft_p95_ms", c["ttft_ms"].get("p95")), ("sla_compliance", c["sla_compliance"])):
                    out[f"kv_qos_{name}_{key}"] = "n/a" if value is None else value
        for o in self.outcomes:
            out[f"kv_criterion {o.criterion.text}"] = f"{o.status} ({format_value(o.criterion.metric, o.measured)})"
        return out

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "nodeid": self.nodeid, "question": self.question, "tiers": self.tiers,
            "status": self.status, "summary": self.summary, "metrics": self.metrics,
            "criteria": [{"criterion": o.criterion.text, "metric": o.criterion.metric, "op": o.criterion.op,
                          "threshold": o.criterion.value, "measured": o.measured, "status": o.status,
                          "source": o.criterion.source, "reason": o.reason} for o in self.outcomes],
            "invariant_problems": self.invariant_problems, "errors": self.errors,
            "backends": self.backends, "occupancy": self.occupancy,
            "device_counters": self.device_counters, "trace": self.trace, "run": self.run,
            "settings": self.settings, "model": self.model,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ScenarioResult:
        """Rebuild a result from ``to_dict`` output (xdist workers send theirs this way)."""
        outcomes = [Outcome(Criterion(c["metric"], c["op"], c["threshold"], c["criterion"], c["source"]),
                            c["measured"], c["status"], c.get("reason")) for c in raw.get("criteria", [])]
        fields = {k: raw[k] for k in ("name", "question", "tiers", "metrics", "summary", "invariant_problems",
                                      "errors", "backends", "occupancy", "device_counters", "trace", "run",
                                      "settings", "model", "nodeid") if k in raw}
        return cls(outcomes=outcomes, **fields)
