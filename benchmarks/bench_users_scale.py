"""Users at scale: 1,000 and 10,000 closed-loop users on storage-only, generation none.

Runs the ``storage-only`` scenario through ``pytest_kvcache.engine`` (provision + run_scenario,
no pytest), llama3.1-8b, no warm-up, each case in a fresh child process so its peak resident
memory (``VmHWM``) is its own. Users are records served by a bounded worker pool (at most
``min(users, 256)`` requests in service, ``runner.DEFAULT_MAX_IN_SERVICE``), so threads and
staging buffers do not grow with the users. Figures per case, from the call of
``run_scenario`` (the trace is generated lazily, so generating it is part of these):

- first I/O: until the cache's first read or store;
- all users sent: until every user's first request was offered to the admission queue;
- all users served: until every user's first request started service (with more users than
  workers, the rest wait in the queue: that wait is the drive's, and shows as queue wait);
- peak RSS (``VmHWM`` of the child) and its resident memory before the run (imports, the 64 MiB
  noise buffer); staging bytes (``run.staging_bytes``); peak threads;
- window close -> workers ended (``run.drain_s``), -> result (figures, invariants), -> clean;
- the trace hash, which reads the whole trace (``users x requests_per_user`` requests): taken
  before the scenario starts, as ``engine.run_scenario`` does, and reported apart.

The BASELINE column holds the issue-10 targets (1,000 users: first I/O of every user within 1 s,
peak RSS under 1.5 GB, the end within 2 s of the window; 10,000 users: runs). Measured before
this change (one thread per user, a 4 MiB staging buffer each, the trace generated up front):
4.4 GB resident, 3.4 s to generate 500,000 requests, 235 s from start to result (issue 10).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import _common as C

NAME = "bench_users_scale"
CASES = ((1000, 500), (10000, 20))  # (users, requests_per_user)


def _vm(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child(args) -> dict:
    from pytest_kvcache.backends import default_registry
    from pytest_kvcache.cache import MultiTierCache
    from pytest_kvcache.engine import provision, run_scenario
    from pytest_kvcache.load import AdmissionQueue
    from pytest_kvcache.models import resolve_model
    from pytest_kvcache.serve import RequestServer
    from pytest_kvcache.session import workload_params
    from pytest_kvcache.settings import build_settings
    from pytest_kvcache.tiers import TIER_CONFIGS
    from pytest_kvcache.workload import Trace
    from pytest_kvcache.workload.prompts import generate_prompts

    settings = build_settings({
        "cache_dir": args.cache_dir, "duration": args.duration, "warmup": 0, "users": args.users,
        "requests_per_user": args.requests_per_user, "model": "llama3.1-8b", "generation_mode": "none",
        "nvme_capacity_gb": args.nvme_capacity_gb, "profile": "none"}, {}, {})
    model = resolve_model(settings.model, settings.models)
    first_io: list[int] = []
    first_served: dict[int, int] = {}
    put, read, serve = MultiTierCache.put, MultiTierCache.read, RequestServer.serve

    def put_(self, *a, **k):
        if not first_io:
            first_io.append(time.perf_counter_ns())
        return put(self, *a, **k)

    def read_(self, *a, **k):
        if not first_io:
            first_io.append(time.perf_counter_ns())
        return read(self, *a, **k)

    def serve_(self, req, layout, submit_ns):
        first_served.setdefault(req.user_id, time.perf_counter_ns())
        return serve(self, req, layout, submit_ns)

    late: list[int] = [0]  # most ns an offer came after its scheduled send time
    offered: dict[int, int] = {}
    hash_s: list[float] = []
    offer, sha = AdmissionQueue.offer, Trace.sha256

    def offer_(self, item, qos):
        now = time.perf_counter_ns()
        user, _, send_ns = item
        offered.setdefault(user.index, now)
        late[0] = max(late[0], now - send_ns)
        return offer(self, item, qos)

    def sha_(self):
        t = time.perf_counter()
        out = sha(self)
        hash_s.append(time.perf_counter() - t)
        return out

    MultiTierCache.put, MultiTierCache.read, RequestServer.serve = put_, read_, serve_
    AdmissionQueue.offer, Trace.sha256 = offer_, sha_
    threads = [threading.active_count()]
    seen = {}

    def tick(runner, elapsed_s):
        seen["runner"] = runner
        threads.append(threading.active_count())

    prov = provision(TIER_CONFIGS["storage-only"], settings, default_registry())
    rss_before = _vm("VmRSS")
    try:
        # the session's trace (the prompt generator), hashed before the scenario starts, as
        # engine.run_scenario does first: its cost is reported apart (run.trace_hash_s)
        trace = generate_prompts(workload_params(settings))
        trace.sha256()
        t0 = time.perf_counter_ns()
        result = run_scenario(prov, settings, model, trace, [], on_tick=tick)
        returned_ns = time.perf_counter_ns()
    finally:
        prov.close()
    clean_ns = time.perf_counter_ns()
    closed_ns = seen["runner"].recorder.window_end_ns
    started = seen["runner"].info.started_ns

    def after(ns):
        return None if ns is None else round((ns - t0) / 1e9, 3)

    all_served = max(first_served.values()) if len(first_served) == args.users else None
    return {"users": args.users, "requests_per_user": args.requests_per_user, "errors": result.errors[:3],
            "status": result.status, "workers": result.run["workers"],
            "trace_and_setup_s": after(started),
            "first_io_s": after(first_io[0] if first_io else None),
            "users_served_first": len(first_served),
            "all_users_sent_s": after(max(offered.values())) if len(offered) == args.users else None,
            "latest_first_send_scheduled_s": round(after(started) + max(u[0].think_time_s for u in trace.per_user), 3),
            "max_offer_lateness_ms": round(late[0] / 1e6, 3), "trace_hash_s": round(sum(hash_s), 3),
            "all_users_served_s": after(all_served),
            "peak_rss_bytes": _vm("VmHWM"), "rss_before_bytes": rss_before,
            "staging_bytes": result.run["staging_bytes"], "peak_threads": max(threads),
            "drain_s": result.run["drain_s"], "close_to_result_s": round((returned_ns - closed_ns) / 1e9, 3),
            "close_to_clean_s": round((clean_ns - closed_ns) / 1e9, 3),
            "requests": result.summary["total_requests"], "requests_started": result.trace["requests_started"],
            "queue_wait_p95_ms": result.summary["queue_wait_ms"].get("p95"),
            "generated_requests": sum(getattr(r, "generated", len(r)) for r in trace.per_user)}


def main() -> None:
    p = C.parser(NAME, __doc__, reps=None)
    p.add_argument("--cache-dir", default="/var/tmp", help="directory on the drive under test")
    p.add_argument("--duration", type=float, default=10.0, help="window in seconds")
    p.add_argument("--nvme-capacity-gb", type=float, default=8.0)
    p.add_argument("--users", type=int, help="(child) users of one case")
    p.add_argument("--requests-per-user", type=int, default=500, help="(child) requests per user")
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows, raw = [], {}
    for users, per_user in CASES:
        cmd = [sys.executable, __file__, "--child", "--users", str(users), "--requests-per-user", str(per_user),
               "--cache-dir", args.cache_dir, "--duration", str(args.duration),
               "--nvme-capacity-gb", str(args.nvme_capacity_gb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=dict(os.environ))
        if proc.returncode != 0:
            print(f"case {users} users failed:\n{proc.stderr[-3000:]}")
            raw[f"{users}_users"] = {"failed": proc.stderr[-3000:]}
            rows.append(C.row(f"{users} users: runs", "", [0], None, "runs", False, note="failed: see raw"))
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        raw[f"{users}_users"] = r
        big = users >= 10000
        rows += [
            C.row(f"{users} users: first I/O", "s", [r["first_io_s"]], None, "" if big else "<= 1 s",
                  None if big else (r["first_io_s"] is not None and r["first_io_s"] <= 1)),
            C.row(f"{users} users: every first request sent", "s", [r["all_users_sent_s"]], None,
                  "" if big else "<= 1 s after its think time",
                  None if big else r["max_offer_lateness_ms"] <= 1000,
                  note=f"latest scheduled {r['latest_first_send_scheduled_s']} s (think time); "
                       f"offers at most {r['max_offer_lateness_ms']} ms late"),
            C.row(f"{users} users: all served once", "s", [r["all_users_served_s"]], None, "",
                  note=f"{r['users_served_first']} of {users} served; {r['workers']} workers"),
            C.row(f"{users} users: peak RSS", "GB", [r["peak_rss_bytes"] / 1e9], None, "" if big else "< 1.5 GB",
                  None if big else r["peak_rss_bytes"] < 1.5e9, note=f"{r['rss_before_bytes'] / 1e9:.2f} GB before the run"),
            C.row(f"{users} users: staging", "MB", [r["staging_bytes"] / 1e6], None, "",
                  note=f"peak threads {r['peak_threads']}"),
            C.row(f"{users} users: close -> workers ended", "s", [r["drain_s"]], None, "<= 2 s", r["drain_s"] <= 2),
            C.row(f"{users} users: close -> result", "s", [r["close_to_result_s"]], None, "" if big else "<= 2 s",
                  None if big else r["close_to_result_s"] <= 2,
                  note=f"{r['requests']} finished in the window"),
            C.row(f"{users} users: trace hash, before the scenario", "s", [r["trace_hash_s"]], None, "", None,
                  note=f"{users * per_user:,} requests generated and hashed once per session"),
            C.row(f"{users} users: runs", "", [1 if r["status"] != "error" else 0], None, "runs",
                  r["status"] != "error", note=str(r["errors"]) if r["errors"] else ""),
        ]
    C.print_table(f"{NAME}: users at scale (llama3.1-8b, storage-only, generation none, {args.duration:g} s window)",
                  rows, "none: targets")
    C.write_json(args.json, NAME, "ok", vars(args) | {"cases": CASES}, rows, raw=raw, baseline_name="issue 10 targets")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
