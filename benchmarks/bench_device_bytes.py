"""Bytes the report says the file tier moved vs what the block device counted in the same window.

Runs the ``storage-only`` scenario through ``pytest_kvcache.engine`` (provision + run_scenario,
no pytest) for a short window. OUR figure is the application's read and write bytes on the nvme
tier inside the window (``device_counters.app_read_bytes`` / ``app_write_bytes``, the same
numbers the report's GB/s are made of); the BASELINE is the kernel's ``/sys/class/block/<dev>/stat``
sector counters over the same window (``device_counters.read_bytes`` / ``write_bytes``).

The device counts every I/O on the disk: other processes, file-system metadata. To tell them
apart, the harness samples the counters over idle windows of the same length just before and
just after each run; a repetition is "quiet" when neither saw more than 0.5% of the run's bytes,
and the target is judged on the quiet repetitions only (all of them are reported). An I/O that straddles a window edge is
counted by the device in part and by us not at all (we count on completion, all or nothing),
so the edges add at most ``users x chunk`` bytes per direction.

Target (issue 3): reported bytes within 2% of the device counters.
"""

from __future__ import annotations

import time

import _common as C

from pytest_kvcache.backends import default_registry
from pytest_kvcache.devstats import DeviceWindow
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.fsinfo import find_block_devices
from pytest_kvcache.models import resolve_model
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace

NAME = "bench_device_bytes"
TOLERANCE = 0.02
QUIET = 0.005  # a rep is "quiet" when the idle windows around it saw < 0.5% of its bytes from others


def idle_window(devices, seconds: float) -> dict:
    window = DeviceWindow(devices)
    window.start()
    time.sleep(seconds)
    window.stop()
    return window.result()


def main() -> None:
    p = C.parser(NAME, __doc__, reps=1)
    p.add_argument("--dir", default=None, help="--kv-cache-dir: directory on the drive under test (default: temp dir)")
    p.add_argument("--duration", type=float, default=5.0, help="measurement window, seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before the window, seconds")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--model", default="tiny-1b")
    p.add_argument("--generation-mode", default="fast", choices=("none", "fast", "realistic"))
    p.add_argument("--nvme-capacity-gb", type=float, default=2.0, help="nvme tier budget (small: eviction churn included)")
    args = p.parse_args()
    directory = C.bench_dir(args.dir, "devbytes")
    try:
        settings = build_settings({
            "cache_dir": str(directory), "duration": args.duration, "warmup": args.warmup, "users": args.users,
            "model": args.model, "generation_mode": args.generation_mode,
            "nvme_capacity_gb": args.nvme_capacity_gb, "profile": "none"}, {}, {})
        params = {k: v for k, v in vars(args).items() if k != "json"}
        lookup = find_block_devices(directory)
        dev = lookup.devices
        params["block_device"] = lookup.label
        if not dev:
            C.skip(args, NAME, f"no block device behind {directory}: {lookup.reason}", params)
        if not idle_window(dev, 0.01).get("available"):
            C.skip(args, NAME, f"/sys/class/block/{lookup.label}/stat is not readable here", params)
        model = resolve_model(settings.model, settings.models)
        trace = generate_trace(WorkloadParams(seed=settings.seed, users=settings.users,
                                              requests_per_user=settings.requests_per_user,
                                              think_time_scale=settings.think_time_scale))
        registry = default_registry()
        background, runs = [], []
        for rep in range(args.reps):
            before = idle_window(dev, args.duration)
            prov = provision(TIER_CONFIGS["storage-only"], settings, registry)
            try:
                result = run_scenario(prov, settings, model, trace, [])
            finally:
                prov.close()
            after = idle_window(dev, args.duration)
            c = result.device_counters
            if not c.get("available"):
                C.skip(args, NAME, f"device counters unavailable: {c.get('reason')}", params)
            if result.errors:
                raise SystemExit(f"the scenario failed: {result.errors[:3]}")
            noise_bytes = max(sum(w.get(f"{op}_bytes", 0) for op in ("read", "write")) for w in (before, after))
            quiet = noise_bytes <= QUIET * (c["app_read_bytes"] + c["app_write_bytes"])
            background.append({"before": before, "after": after})
            runs.append({"device_counters": c, "io_mode": result.backends[-1].get("io_mode"), "quiet": quiet,
                         "window_s": result.summary.get("window_s"), "requests": result.summary.get("total_requests")})
            print(f"  rep {rep}: window {c['elapsed_s']:.2f} s, io_mode {runs[-1]['io_mode']}, "
                  f"app R/W {c['app_read_bytes'] / 1e9:.3f}/{c['app_write_bytes'] / 1e9:.3f} GB, "
                  f"device R/W {c['read_bytes'] / 1e9:.3f}/{c['write_bytes'] / 1e9:.3f} GB; other I/O in the idle "
                  f"windows before/after: {sum(before.get(k, 0) for k in ('read_bytes', 'write_bytes')) / 1e9:.4f}/"
                  f"{sum(after.get(k, 0) for k in ('read_bytes', 'write_bytes')) / 1e9:.4f} GB"
                  f"{'' if quiet else ' (NOT quiet: another process used the disk)'}", flush=True)
        rows = []
        quiet_runs = [r for r in runs if r["quiet"]]
        for label, subset in (("quiet reps", quiet_runs), ("all reps", runs)):
            if not subset:
                continue
            for op in ("read", "write"):
                ours = [r["device_counters"][f"app_{op}_bytes"] / 1e9 for r in subset]
                device = [r["device_counters"][f"{op}_bytes"] / 1e9 for r in subset]
                per_rep = [C.ratio(a, b) for a, b in zip(ours, device)]
                worst = max((abs(x - 1) for x in per_rep if x is not None), default=None)
                rows.append(C.row(f"{op} bytes, {label} ({len(subset)} of {len(runs)})", "GB", ours, device,
                                  target="within 2% of device",
                                  met=None if worst is None or label == "all reps" else worst <= TOLERANCE,
                                  per_rep_ratio=per_rep,
                                  note=f"per-rep ratios {', '.join(f'{x:.4f}' for x in per_rep if x is not None)}"))
        C.print_table(f"{settings.model}, {settings.users} users, {args.duration:g} s window, storage-only: "
                      "ratio = reported / device", rows, f"/sys/class/block/{lookup.label}/stat")
        C.write_json(args.json, NAME, "ok", params, rows, raw={"runs": runs, "background": background},
                     baseline_name=f"/sys/class/block/{lookup.label}/stat")
    finally:
        C.cleanup_dir(directory)


if __name__ == "__main__":
    main()
