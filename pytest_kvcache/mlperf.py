"""The MLPerf Storage KV-cache CLOSED options (``--kv-preset mlperf-closed``) and how the rules
score them (design section 10: mlcommons/storage ``Rules.md`` section 6).

Three fixed workloads, all with no GPU tier, generation ``none``, a 300 s window, seed 42 and
3 trials, with 90 s between options:

- **Option 1**: llama3.1-8b, 200 users, no CPU tier, at most 16 concurrent allocations;
- **Option 2**: llama3.1-8b, 100 users, a 4 GB CPU tier, 16 allocations;
- **Option 3**: llama3.1-70b-instruct, 70 users, no CPU tier, 4 allocations.

Scored per option: read and write GB/s and storage tokens/s averaged across the trials, and the
storage device's P95 (here: the storage tier's read and write p95 per trial, averaged; the write
p95 is of the tier's ``write`` op, or of ``demote_write`` when, as in option 2 behind its CPU
tier, every write reaches the drive as a demotion; ``device_write_op`` names which), each
with its spread and a 95% confidence interval over the trials (``trials.describe``). Settings
the rules do not fix keep this project's defaults (2 s warm-up before each window, 256-token
chunks, the chat personas), so the figures are ours under the rules' load, not the reference
implementation's; ``--kv-nvme-backend npy`` adds its file I/O.

``SMOKE`` is the same shape (three options, trials, aggregation) sized to run in seconds on
tiny-1b: a check that the preset runs, never a result.
"""

from __future__ import annotations

from .result import ScenarioResult
from .trials import describe

PRESET = "mlperf-closed"
COMMON = {"gpu_mem_gb": 0.0, "generation_mode": "none", "duration": 300.0, "warmup": 2.0, "seed": 42,
          "trials": 3, "request_rate": 0.0, "profile": "none"}
# option -> (tier configuration, settings)
OPTIONS = {
    "option1": ("storage-only", {"model": "llama3.1-8b", "users": 200, "cpu_mem_gb": 0.0, "max_concurrent_allocs": 16}),
    "option2": ("cpu+storage", {"model": "llama3.1-8b", "users": 100, "cpu_mem_gb": 4.0, "max_concurrent_allocs": 16}),
    "option3": ("storage-only", {"model": "llama3.1-70b-instruct", "users": 70, "cpu_mem_gb": 0.0,
                                 "max_concurrent_allocs": 4}),
}
PAUSE_S = 90.0
SMOKE = {"model": "tiny-1b", "duration": 2.0, "warmup": 0.3, "trials": 2, "requests_per_user": 20,
         "think_time_scale": 0.0}
SMOKE_USERS = {"option1": 6, "option2": 4, "option3": 3}
SMOKE_CPU_GB = 0.25
SMOKE_PAUSE_S = 0.0


def option_settings(option: str, smoke: bool) -> tuple[str, dict]:
    """(tier configuration name, setting changes) of ``option`` (``OPTIONS``), or of its smoke form."""
    tiers, own = OPTIONS[option]
    settings = {**COMMON, **own}
    if smoke:
        settings.update(SMOKE, users=SMOKE_USERS[option])
        if settings["cpu_mem_gb"]:
            settings["cpu_mem_gb"] = SMOKE_CPU_GB
    return tiers, settings


def pause_s(smoke: bool) -> float:
    """Seconds between two options (the rules' 90 s; none in the smoke form)."""
    return SMOKE_PAUSE_S if smoke else PAUSE_S


def score(option: str, result: ScenarioResult) -> dict:
    """One option's figures as the rules score them, each ``trials.describe``'s dict (mean,
    stdev, ci95, cv, values); latencies in ms."""
    trials = result.summary.get("trials")
    storage = result.tiers[-1]
    if trials:
        figures = trials["figures"]
        p95 = trials["latency_p95_s"]
    else:  # one trial: its own figures
        head = result.summary.get("headline", {})
        figures = {k: describe([head.get(k)]) for k in ("storage_read_gbps", "storage_write_gbps", "storage_tokens_per_sec")}
        p95 = {f"{storage}.{op}.p95": describe([result.metrics.get(f"{storage}.{op}.p95")])
               for op in ("read", "write", "demote_write")}
    none = describe([None])
    write_op = "write" if p95.get(f"{storage}.write.p95", none)["mean"] is not None else "demote_write"

    def ms(d: dict) -> dict:
        def scale(v):
            return None if v is None else v * 1e3

        return {**d, "values": [scale(v) for v in d["values"]], "mean": scale(d["mean"]), "stdev": scale(d["stdev"]),
                "ci95": None if d["ci95"] is None else [scale(v) for v in d["ci95"]]}

    return {
        "option": option, "model": result.model.get("name"), "users": result.settings.get("users"),
        "trials": trials["count"] if trials else 1, "status": result.status,
        "read_gbps": figures.get("storage_read_gbps", none),
        "write_gbps": figures.get("storage_write_gbps", none),
        "storage_tokens_per_sec": figures.get("storage_tokens_per_sec", none),
        "device_read_p95_ms": ms(p95.get(f"{storage}.read.p95", none)),
        "device_write_p95_ms": ms(p95.get(f"{storage}.{write_op}.p95", none)),
        "device_write_op": write_op,
    }


def table(scores: list[dict]) -> str:
    """The options side by side: mean [95% CI] of each scored figure."""
    def cell(d: dict, digits: int) -> str:
        if d["mean"] is None:
            return "n/a"
        ci = "" if d["ci95"] is None else f" [{d['ci95'][0]:.{digits}f}, {d['ci95'][1]:.{digits}f}]"
        return f"{d['mean']:.{digits}f}{ci}"

    rows = ["option   model                  users trials  read GB/s          write GB/s         "
            "storage tok/s            read p95 ms          write p95 ms"]
    for s in scores:
        rows.append(f"{s['option']:<8} {s['model'] or '?':<22} {s['users']:>5} {s['trials']:>6}  "
                    f"{cell(s['read_gbps'], 3):<18} {cell(s['write_gbps'], 3):<18} "
                    f"{cell(s['storage_tokens_per_sec'], 0):<24} {cell(s['device_read_p95_ms'], 2):<20} "
                    f"{cell(s['device_write_p95_ms'], 2)}")
    return "\n".join(rows)
