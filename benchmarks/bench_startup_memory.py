"""Time to the first I/O, and peak memory beyond the configured tier budgets.

1. First I/O of a pytest run: ``pytest scenarios/ -k storage-only`` in a subprocess with a short
   window; the harness polls the cache directory (every ~1 ms) for the first entry file, which
   appears when the first write opens it. OUR figure is process start -> that file; the
   BASELINE is the same command with ``--collect-only`` (interpreter, pytest, the plugin and
   collection: what any run pays before a scenario can start). Nothing in the report records
   the first I/O's time, so:
2. First I/O after scenario start, in-process: ``engine.run_scenario`` is timed from its call
   to the first completed ``IOResult`` (a FileBackend subclass notes it). The BASELINE is the
   workload's own delay: the shortest think time before any user's first request. The same is
   also measured with ``think_time_scale=0`` (then all of it is framework time).
   Target: first I/O within 1 s of scenario start.
3. Peak RSS: a pytest run of one scenario (default ``cpu+storage``) with llama3.1-70b-instruct and
   100 users, read from the child's ``ru_maxrss`` (``os.wait4``). The BASELINE is what the
   configured tier budgets (the CPU tier's). The staging buffers the run allocated (from the
   run's JSON report) are framework memory: they count as "beyond". Target: <= 1 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import _common as C

from pytest_kvcache.backends import default_registry
from pytest_kvcache.backends.file import FileBackend
from pytest_kvcache.engine import provision, run_scenario
from pytest_kvcache.models import resolve_model
from pytest_kvcache.settings import GB, build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace

NAME = "bench_startup_memory"
FIRST_IO_S = 1.0
BEYOND_GIB = 1.0


def pytest_cmd(cache_dir, *extra: str, target: str = "scenarios/") -> list[str]:
    return [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider", "-q",
            f"--kv-cache-dir={cache_dir}", "--kv-profile=none", *extra]


def first_entry_file(cache_dir) -> bool:
    try:
        with os.scandir(cache_dir) as it:
            runs = [e.path for e in it if e.name.startswith("kvcache-run-")]
        for run in runs:
            with os.scandir(run) as it:
                if any(e.name.endswith(".kv") for e in it):
                    return True
    except FileNotFoundError:
        pass
    return False


def pytest_first_io(directory, duration: float, rep: int) -> dict:
    cache_dir = directory / f"first-{rep}"
    cache_dir.mkdir()
    cmd = pytest_cmd(cache_dir, "-k", "storage-only", f"--kv-duration={duration}", "--kv-warmup=0",
                     f"--kv-report={cache_dir / 'report.json'}")
    log = directory / f"first-{rep}.log"
    with open(log, "wb") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=C.ROOT, stdout=sink, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            if first is None and first_entry_file(cache_dir):
                first = time.perf_counter() - t0
            time.sleep(0.001 if first is None else 0.05)
        total = time.perf_counter() - t0
    out = log.read_text(errors="replace")
    log.unlink()
    C.cleanup_dir(cache_dir)
    if first is None:
        raise SystemExit(f"no entry file appeared during {' '.join(cmd)} (rc {proc.returncode}):\n{out[-2000:]}")
    return {"first_io_s": first, "total_s": total, "rc": proc.returncode}


def pytest_collect(directory, rep: int) -> dict:
    cmd = pytest_cmd(directory, "-k", "storage-only", "--collect-only")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.ROOT, capture_output=True, text=True)
    return {"total_s": time.perf_counter() - t0, "rc": proc.returncode}


class FirstIOFile(FileBackend):
    """The file backend, noting when its first I/O completes."""

    first_end_ns: int | None = None

    def _note(self, res):
        if FirstIOFile.first_end_ns is None:
            FirstIOFile.first_end_ns = res.end_ns
        return res

    def write(self, key, nbytes):
        return self._note(super().write(key, nbytes))

    def read(self, key, nbytes):
        return self._note(super().read(key, nbytes))


def engine_first_io(directory, think_scale: float, rep: int) -> dict:
    settings = build_settings({"cache_dir": str(directory), "duration": 1.0, "warmup": 0,
                               "think_time_scale": think_scale, "nvme_capacity_gb": 2.0, "profile": "none"}, {}, {})
    registry = default_registry()
    registry.register("file", FirstIOFile)
    model = resolve_model(settings.model, settings.models)
    trace = generate_trace(WorkloadParams(seed=settings.seed, users=settings.users,
                                          requests_per_user=settings.requests_per_user,
                                          think_time_scale=settings.think_time_scale))
    floor = min(reqs[0].think_time_s for reqs in trace.per_user if reqs)
    prov = provision(TIER_CONFIGS["storage-only"], settings, registry)
    FirstIOFile.first_end_ns = None
    try:
        t0 = time.perf_counter_ns()
        run_scenario(prov, settings, model, trace, [])
    finally:
        prov.close()
    return {"first_io_s": (FirstIOFile.first_end_ns - t0) / 1e9, "workload_floor_s": floor}


def rss_run(directory, args) -> dict:
    cache_dir = directory / "rss"
    cache_dir.mkdir()
    report = cache_dir / "report.json"
    cmd = pytest_cmd(cache_dir, f"--kv-model={args.model}", f"--kv-users={args.users}",
                     f"--kv-duration={args.duration}", "--kv-warmup=0", f"--kv-cpu-mem-gb={args.cpu_mem_gb}",
                     f"--kv-nvme-capacity-gb={args.nvme_capacity_gb}", f"--kv-report={report}",
                     target=f"scenarios/test_tiers.py::test_tiers[{args.scenario}]")
    t0 = time.perf_counter()
    log = cache_dir / "pytest.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=C.ROOT, stdout=sink, stderr=subprocess.STDOUT)
        hwm = 0
        while True:  # VmHWM is the child's own peak (ru_maxrss also counts the parent's at fork)
            hwm = max(hwm, vm_hwm(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = log.read_bytes()
    wall = time.perf_counter() - t0
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"no report from {' '.join(cmd)} (rc {proc.returncode}):\n{out.decode()[-3000:]}") from None
    finally:
        C.cleanup_dir(cache_dir)
    scen = data["scenarios"][0]
    staging = scen["run"]["staging_bytes"]
    budgets = int(args.cpu_mem_gb * GB) if "cpu" in scen["tiers"] else 0
    return {"maxrss_bytes": hwm or usage.ru_maxrss * 1024, "vm_hwm_bytes": hwm,
            "ru_maxrss_bytes": usage.ru_maxrss * 1024, "cpu_budget_bytes": budgets, "staging_bytes": staging,
            "budget_bytes": budgets, "wall_s": wall, "rc": proc.returncode, "status": scen["status"],
            "working_set_peak_bytes": scen["summary"].get("kv_working_set_peak_bytes"),
            "requests": scen["summary"].get("total_requests"), "tiers": scen["tiers"]}


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident set of one process (``VmHWM`` of /proc/PID/status), bytes; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def bare_rss() -> int:
    """Peak RSS of an interpreter that only imports pytest, numpy and the plugin (fixed cost)."""
    code = ("import pytest, numpy, tabulate, pytest_kvcache.plugin\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=C.ROOT, capture_output=True, text=True).stdout
    return int(out.strip() or 0) * 1024


def first_io(args, directory, rows: list, raw: dict) -> None:
    print(f"  pytest first I/O vs --collect-only, {args.reps} reps ...", flush=True)
    res = C.interleave({"ours": lambda rep: pytest_first_io(directory, args.first_io_duration, rep),
                        "collect": lambda rep: pytest_collect(directory, rep)}, args.reps)
    raw["pytest_first_io"] = res
    rows.append(C.row("process start -> first I/O (pytest -k storage-only)", "s",
                      [r["first_io_s"] for r in res["ours"]], [r["total_s"] for r in res["collect"]],
                      note="baseline: the same pytest command with --collect-only"))
    for scale in (1.0, 0.0):
        print(f"  engine.run_scenario -> first I/O, think_time_scale={scale:g}, {args.reps} reps ...", flush=True)
        rs = [engine_first_io(directory, scale, rep) for rep in range(args.reps)]
        raw[f"engine_first_io_think{scale:g}"] = rs
        ours = [r["first_io_s"] for r in rs]
        floor = [r["workload_floor_s"] for r in rs]
        m = C.median(ours)
        rows.append(C.row(f"run_scenario() -> first I/O, think_time_scale={scale:g}", "s", ours,
                          floor if scale else None, target=f"<= {FIRST_IO_S:g} s", met=m <= FIRST_IO_S,
                          note=("baseline: the trace's shortest first think time" if scale
                                else "no think time: all of it is framework")))


def memory(args, directory, rows: list, raw: dict) -> None:
    print(f"  peak RSS: pytest {args.scenario}, {args.model}, {args.users} users, "
          f"{args.duration:g} s window, cpu budget {args.cpu_mem_gb:g} GB ...", flush=True)
    r = rss_run(directory, args)
    r["bare_interpreter_rss_bytes"] = bare_rss()
    raw["rss"] = r
    beyond = (r["maxrss_bytes"] - r["budget_bytes"]) / C.GiB
    rows.append(C.row(f"peak RSS, {args.scenario}, {args.model}, {args.users} users", "GiB",
                      [r["maxrss_bytes"] / C.GiB], [r["budget_bytes"] / C.GiB],
                      target=f"beyond budgets <= {BEYOND_GIB:g} GiB", met=beyond <= BEYOND_GIB, beyond_gib=beyond,
                      note=(f"beyond the tier budget {beyond:.2f} GiB (cpu tier {r['cpu_budget_bytes'] / C.GiB:.2f} GiB),"
                            f" of which staging {r['staging_bytes'] / C.GiB:.2f} GiB; bare interpreter"
                            f" {r['bare_interpreter_rss_bytes'] / C.GiB:.2f} GiB; run took {r['wall_s']:.0f} s")))


def main() -> None:
    p = C.parser(NAME, __doc__)
    p.add_argument("--dir", default=None, help="--kv-cache-dir for the runs (default: temp dir)")
    p.add_argument("--first-io-duration", type=float, default=1.0, help="window of the pytest first-I/O runs")
    p.add_argument("--scenario", default="cpu+storage", help="scenario (test id) of the memory run")
    p.add_argument("--model", default="llama3.1-70b-instruct")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--duration", type=float, default=5.0, help="window of the memory run")
    p.add_argument("--cpu-mem-gb", type=float, default=1.0, help="CPU tier budget of the memory run")
    p.add_argument("--nvme-capacity-gb", type=float, default=4.0, help="nvme budget (scenarios with storage)")
    p.add_argument("--skip-memory", action="store_true", help="only the first-I/O measurements")
    p.add_argument("--skip-first-io", action="store_true", help="only the memory run")
    args = p.parse_args()
    params = {k: v for k, v in vars(args).items() if k != "json"}
    directory = C.bench_dir(args.dir, "startup")
    rows, raw = [], {}
    try:
        if not args.skip_first_io:
            first_io(args, directory, rows, raw)
        if not args.skip_memory:
            memory(args, directory, rows, raw)
        C.print_table("Startup and memory (ratio = ours / baseline)", rows, "see note")
        C.write_json(args.json, NAME, "ok", params, rows, raw=raw, baseline_name="see each row's note")
    finally:
        C.cleanup_dir(directory)


if __name__ == "__main__":
    main()
