"""The user pool at scale: does adding or removing users take effect within one scale
interval, and do 500 users of llama3.1-8b stay under 2 GB resident beyond the tier budgets?

One child process (so its peak resident memory, ``VmHWM``, is its own) runs the storage-only
scenario through ``pytest_kvcache.engine`` with ``--kv-autoscale qos`` set up for 500 users
(the trace holds 500; 250 start) but an interval longer than the run, so the scaler never acts:
the benchmark itself calls ``Runner.set_active_users`` from the tick loop, 250 -> 500 at 3 s,
then 500 -> 100 at 7 s. With llama3.1-8b a request is hundreds of MB, so on a small drive few
finish in the window: a second case runs the same with tiny-1b (50 -> 100 -> 20 users), whose
requests finish, so the removed users really have turns to stop. Figures:

- added users: from the call until every added user's first turn was offered to the admission
  queue (it entered the system; being served then waits for a worker like any turn);
- removed users: turns a removed user offered after the call (must be 0: a removed user
  finishes the turn it has in the system and stops), and until the last removed user's turn in
  service finished;
- peak RSS of the child; the tier budgets are 0 (storage-only: the nvme tier is files).

Target (issue 11): both changes within one interval (the default ``--kv-autoscale-interval``,
2 s); peak RSS under 2 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import _common as C

NAME = "bench_autoscale"
INTERVAL_S = 2.0  # the default --kv-autoscale-interval
GROW_AT, SHRINK_AT = 3.0, 7.0


def _vm(key: str) -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


CASES = (("llama3.1-8b", 250, 500, 100), ("tiny-1b", 50, 100, 20))  # model, start, grow to, shrink to


def child(args) -> dict:
    from pytest_kvcache.backends import default_registry
    from pytest_kvcache.engine import provision, run_scenario
    from pytest_kvcache.load import AdmissionQueue
    from pytest_kvcache.models import resolve_model
    from pytest_kvcache.session import workload_params
    from pytest_kvcache.settings import build_settings
    from pytest_kvcache.tiers import TIER_CONFIGS
    from pytest_kvcache.workload.prompts import generate_prompts

    settings = build_settings({
        "cache_dir": args.cache_dir, "duration": args.duration, "warmup": 0, "users": args.start,
        "autoscale": "qos", "autoscale_max_users": args.grow_to, "autoscale_interval": 1000,
        "requests_per_user": 200, "model": args.model, "generation_mode": "none",
        "nvme_capacity_gb": args.nvme_capacity_gb, "profile": "none"}, {}, {})
    offers: list[tuple[int, int]] = []  # (ns, user index)
    offer = AdmissionQueue.offer

    def offer_(self, item, qos):
        offers.append((time.perf_counter_ns(), item[0].index))
        return offer(self, item, qos)

    AdmissionQueue.offer = offer_
    marks: dict[str, int] = {}
    finished: list[tuple[int, int]] = []

    def tick(runner, elapsed_s):
        if "grow" not in marks and elapsed_s >= GROW_AT:
            marks["grow"] = time.perf_counter_ns()
            runner.set_active_users(args.grow_to)
        elif "shrink" not in marks and elapsed_s >= SHRINK_AT:
            marks["shrink"] = time.perf_counter_ns()
            runner.set_active_users(args.shrink_to)
        if "shrink" in marks:
            now = time.perf_counter_ns()
            finished.extend((now, u) for u in runner.take_served_users())

    prov = provision(TIER_CONFIGS["storage-only"], settings, default_registry())
    try:
        trace = generate_prompts(workload_params(settings))
        result = run_scenario(prov, settings, resolve_model(settings.model), trace, [], on_tick=tick)
    finally:
        prov.close()
    grow, shrink = marks.get("grow"), marks.get("shrink")
    first_added: dict[int, int] = {}
    for t, u in offers:
        if grow and t >= grow and args.start <= u < args.grow_to:
            first_added.setdefault(u, t)
    late_removed = [t for t, u in offers if shrink and t >= shrink and u >= args.shrink_to]
    removed_done = [t for t, u in finished if u >= args.shrink_to]
    return {"status": result.status, "errors": result.errors[:3],
            "added_entered": len(first_added), "added_all_s": round((max(first_added.values()) - grow) / 1e9, 3)
            if len(first_added) == args.grow_to - args.start else None,
            "removed_finished_after": len(removed_done),
            "removed_offers_after": len(late_removed),
            "removed_last_finish_s": round((max(removed_done) - shrink) / 1e9, 3) if removed_done else None,
            "shrunk": shrink is not None, "peak_rss_bytes": _vm("VmHWM"),
            "requests": result.summary["total_requests"]}


def main() -> None:
    p = C.parser(NAME, __doc__, reps=None)
    p.add_argument("--cache-dir", default="/var/tmp", help="directory on the drive under test")
    p.add_argument("--duration", type=float, default=10.0, help="window in seconds")
    p.add_argument("--nvme-capacity-gb", type=float, default=8.0)
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    for flag, kind in (("--model", str), ("--start", int), ("--grow-to", int), ("--shrink-to", int)):
        p.add_argument(flag, type=kind, help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows, raw = [], {}
    for model, start, grow_to, shrink_to in CASES:
        cmd = [sys.executable, __file__, "--child", "--cache-dir", args.cache_dir, "--duration", str(args.duration),
               "--nvme-capacity-gb", str(args.nvme_capacity_gb), "--model", model, "--start", str(start),
               "--grow-to", str(grow_to), "--shrink-to", str(shrink_to)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raw[model] = {"failed": proc.stderr[-3000:]}
            rows.append(C.row(f"{model}: runs", "", [0], None, "runs", False, note="failed: see raw"))
            continue
        r = raw[model] = json.loads(proc.stdout.strip().splitlines()[-1])
        added = grow_to - start
        rows += [
            C.row(f"{model} {start} -> {grow_to} users: every added user's first turn offered", "s",
                  [r["added_all_s"] or 0], None, f"<= {INTERVAL_S:g} s",
                  r["added_all_s"] is not None and r["added_all_s"] <= INTERVAL_S,
                  note=f"{r['added_entered']} of {added} added users entered"),
            C.row(f"{model} {grow_to} -> {shrink_to} users: turns offered by removed users after the call", "",
                  [r["removed_offers_after"]], None, "0", r["removed_offers_after"] == 0,
                  note=f"{r['removed_finished_after']} removed users' requests finished after the call, the last "
                       f"{r['removed_last_finish_s']} s after it"),
            C.row(f"{model} {grow_to} users: peak RSS", "GB", [r["peak_rss_bytes"] / 1e9], None, "< 2 GB",
                  r["peak_rss_bytes"] < 2e9, note="tier budgets 0 (storage-only)"),
            C.row(f"{model}: runs", "", [1 if r["status"] != "error" else 0], None, "runs", r["status"] != "error",
                  note=str(r["errors"]) if r["errors"] else f"{r['requests']} requests finished in the window"),
        ]
    C.print_table(f"{NAME}: the user pool at scale (llama3.1-8b, storage-only, generation none)", rows,
                  "none: targets")
    C.write_json(args.json, NAME, "ok", vars(args) | {"cases": CASES}, rows, raw=raw,
                 baseline_name="issue 11 targets")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
