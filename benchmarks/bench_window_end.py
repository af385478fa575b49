"""How long a scenario goes on after its window closes, under heavy load on the file tier.

Runs the ``storage-only`` scenario through ``pytest_kvcache.engine`` (provision + run_scenario,
no pytest), generation ``none``, no warm-up, for each case: llama3.1-8b with 200 users (MLPerf
Storage Option 1's count) and llama3.1-70b-instruct with 70 users (Option 3's). Before the
prompt end, these took 35 s and 33 s after a 30 s window to finish the requests in flight.

OUR figures, from the window's close (``Recorder.window_end_ns``):
- ``drain_s``: until the last user stopped (the report's ``run.drain_s``);
- close -> result: until ``run_scenario`` returned (invariants checked, figures computed);
- close -> clean: until ``Provisioned.close`` had removed every file of the run.

The BASELINE is the floor of the rule "a backend call in flight finishes the transfer it is in"
(a call stops between transfers once the run ends, errors.IOCut): the bytes the drive still had
to move after the close, divided by the drive's own rate over the window. Both come from the
block device's counters over the window (``device_counters``; the run has no warm-up, so the
window starts with the run): bytes after the close = every data-op byte of the run
(``Recorder.total``) minus what the device moved in the window. A ratio near 1 means the end
waits for nothing but the transfers under way. Without readable device counters the baseline
is left out. Target (issue 9): the scenario ends within about 2 s of its window.
"""

from __future__ import annotations

import os
import time

import _common as C

from pytest_kvcache.backends import default_registry
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.models import resolve_model
from pytest_kvcache.ops import DATA_OPS
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace

NAME = "bench_window_end"
TARGET_S = 2.0
CASES = (("llama3.1-8b", 200), ("llama3.1-70b-instruct", 70))


def one_run(args, directory, model_name: str, users: int) -> dict:
    settings = build_settings({
        "cache_dir": str(directory), "duration": args.duration, "warmup": 0, "users": users,
        "model": model_name, "generation_mode": "none", "nvme_capacity_gb": args.nvme_capacity_gb,
        "profile": "none"}, {}, {})
    model = resolve_model(settings.model, settings.models)
    trace = generate_trace(WorkloadParams(seed=settings.seed, users=settings.users,
                                          requests_per_user=settings.requests_per_user,
                                          think_time_scale=settings.think_time_scale))
    seen = {}

    def keep_runner(runner, elapsed_s):  # the runner's recorder has the close time in perf_counter_ns
        seen["runner"] = runner

    prov = provision(TIER_CONFIGS["storage-only"], settings, default_registry())
    run_dir = prov.run_dir
    try:
        result = run_scenario(prov, settings, model, trace, [], on_tick=keep_runner)
        returned_ns = time.perf_counter_ns()
    finally:
        leftovers = prov.close()
    clean_ns = time.perf_counter_ns()
    if result.errors:
        raise SystemExit(f"the scenario failed: {result.errors[:3]}")
    rec = seen["runner"].recorder
    closed_ns = rec.window_end_ns
    run_bytes = sum(nbytes for (_, op), (_, nbytes) in rec.total.items() if op in DATA_OPS)
    dev = result.device_counters
    after_bytes = rate = None
    if dev.get("available") and dev.get("elapsed_s"):
        moved = dev["read_bytes"] + dev["write_bytes"]
        after_bytes, rate = max(0, run_bytes - moved), moved / dev["elapsed_s"]
    return {"model": model_name, "users": users, "drain_s": result.run["drain_s"],
            "close_to_result_s": (returned_ns - closed_ns) / 1e9, "close_to_clean_s": (clean_ns - closed_ns) / 1e9,
            "run_bytes": run_bytes, "window_app_bytes": rec.progress().data_bytes, "device": dev,
            "bytes_after_close": after_bytes, "device_gbps": rate / 1e9 if rate else None,
            "floor_s": after_bytes / rate if rate else None, "chunk_bytes": settings.chunk_tokens * model.bytes_per_token,
            "requests_cut": result.trace["requests_started"] - result.trace["requests_finished"],
            "status": result.status, "invariant_problems": result.invariant_problems,
            "leftovers": leftovers, "run_dir_gone": not os.path.exists(run_dir),
            "io_mode": result.backends[-1].get("io_mode"), "window_s": rec.window_s}


def main() -> None:
    p = C.parser(NAME, __doc__, reps=1)
    p.add_argument("--dir", default="/var/tmp", help="--kv-cache-dir: a directory on a real drive (not tmpfs)")
    p.add_argument("--duration", type=float, default=10.0, help="measurement window, seconds")
    p.add_argument("--nvme-capacity-gb", type=float, default=8.0, help="nvme tier budget (eviction churn included)")
    args = p.parse_args()
    params = {k: v for k, v in vars(args).items() if k != "json"}
    directory = C.bench_dir(args.dir, "winend")
    rows, raw = [], {}
    try:
        for model_name, users in CASES:
            case = f"{model_name}, {users} users"
            print(f"  {case}: storage-only, generation none, {args.duration:g} s window x {args.reps} ...", flush=True)
            runs = [one_run(args, directory, model_name, users) for _ in range(args.reps)]
            raw[case] = runs
            for r in runs:
                floor = ("device counters unavailable" if r["floor_s"] is None else
                         f"drive moved {r['bytes_after_close'] / 1e9:.2f} GB after the close at its window rate "
                         f"{r['device_gbps']:.2f} GB/s (floor {r['floor_s']:.2f} s)")
                print(f"    drain {r['drain_s']:.2f} s, close->result {r['close_to_result_s']:.2f} s, "
                      f"close->clean {r['close_to_clean_s']:.2f} s; {floor}; report's window bytes "
                      f"{r['window_app_bytes'] / 1e9:.2f} of {r['run_bytes'] / 1e9:.2f} GB in the run; "
                      f"{r['requests_cut']} requests cut; status {r['status']}, invariants "
                      f"{'ok' if not r['invariant_problems'] else r['invariant_problems']}, run dir "
                      f"{'removed' if r['run_dir_gone'] else 'LEFT: ' + str(r['leftovers'][:3])}", flush=True)
            floor = [r["floor_s"] for r in runs if r["floor_s"] is not None]
            for label, key in (("drain (run.drain_s)", "drain_s"), ("close -> result", "close_to_result_s"),
                               ("close -> files removed", "close_to_clean_s")):
                ours = [r[key] for r in runs]
                met = C.median(ours) <= TARGET_S if key == "close_to_clean_s" else None
                rows.append(C.row(f"{case}: {label}", "s", ours, floor,
                                  target=f"<= ~{TARGET_S:g} s" if met is not None else "", met=met,
                                  note=(f"{C.fmt_size(runs[0]['chunk_bytes'])} chunks, "
                                        f"{runs[0]['requests_cut']} requests cut") if key == "drain_s" else
                                  "files removed: unlink of the tier's files" if key == "close_to_clean_s" else ""))
        C.print_table("Time after the window's close (storage-only, generation none; "
                      "baseline = bytes the drive moved after the close / its window rate)", rows,
                      "transfers under way")
        C.write_json(args.json, NAME, "ok", params, rows, raw=raw,
                     baseline_name="bytes the drive moved after the close / its rate over the window")
    finally:
        C.cleanup_dir(directory)


if __name__ == "__main__":
    main()
