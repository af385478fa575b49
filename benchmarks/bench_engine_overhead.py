"""Framework cost per I/O (cache + runner + recorder) and CPU seconds per GiB on the file tier.

Part 1, per-I/O overhead: the real ``MultiTierCache`` and ``Runner`` drive ``MockBackend`` tiers
with zero latency (no data moves), generation mode ``none`` and no think time, on a micro model
(16 bytes of KV per token, 16-token chunks) so every request makes hundreds of tiny I/Os. OUR
figure is the window's wall time divided by the I/Os the recorder counted in it (reads, writes,
demotions, evictions, deletes: every ``Recorder.io`` call). The BASELINE is a bare Python loop
calling a mock backend's write/read directly, the same number of times in all, from as many
threads as the run has users. The difference is what the framework adds per I/O (target:
<= 20 us). A last case gives the mocks a latency (``--latency-us``, a sleep that releases the
GIL as real I/O does) with 8 users, the baseline sleeping the same.

Part 2, CPU per GiB: a short ``storage-only`` run (file backend, the scenarios' defaults) with
``resource.getrusage`` (user + system, all threads) around the run, divided by the GiB the nvme
tier moved (reads, writes, demotions) over the whole run. The BASELINE is fio moving the same
chunk size with as many jobs as users (psync, direct=1), from its JSON usr_cpu + sys_cpu.
Target: <= 0.3 CPU-s per GiB.
"""

from __future__ import annotations

import threading
import time

import _common as C

from pytest_kvcache.backends import default_registry
from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.mock import MockBackend
from pytest_kvcache.cache import MultiTierCache
from pytest_kvcache.engine import provision
from pytest_kvcache.models import ModelSpec, resolve_model
from pytest_kvcache.ops import DATA_OPS
from pytest_kvcache.payload import NoiseSource, StagingBuffers
from pytest_kvcache.recorder import Recorder
from pytest_kvcache.runner import RunConfig, Runner
from pytest_kvcache.settings import build_settings
from pytest_kvcache.tiers import TIER_CONFIGS
from pytest_kvcache.workload import WorkloadParams, generate_trace

NAME = "bench_engine_overhead"
MICRO = ModelSpec("bench-micro", layers=1, kv_heads=1, head_dim=4)  # 16 B per token
OVERHEAD_US = 20.0
CPU_PER_GIB = 0.3



def mock_tiers(ctx: BackendContext, tiers: int, chunk_bytes: int, latency_s: float = 0.0) -> list[MockBackend]:
    opts = {"latency_s": latency_s}
    if tiers == 1:  # room for everything: no demotion, no eviction
        return [MockBackend(TierSpec("cpu", "mock", 1 << 40, opts), ctx)]
    # a small upper tier (about 64 chunks) over a larger one: the waterfall and evictions run too
    return [MockBackend(TierSpec("cpu", "mock", 80 * chunk_bytes, opts), ctx),
            MockBackend(TierSpec("nvme", "mock", 4000 * chunk_bytes, opts), ctx)]


def framework_run(ctx, users: int, tiers: int, chunk_tokens: int, duration: float, latency_s: float = 0.0) -> dict:
    trace = generate_trace(WorkloadParams(seed=42, users=users, requests_per_user=500, think_time_scale=0.0))
    recorder = Recorder()
    cache = MultiTierCache(mock_tiers(ctx, tiers, chunk_tokens * MICRO.bytes_per_token, latency_s), recorder,
                           MICRO.bytes_per_token)
    runner = Runner(cache, trace, recorder, RunConfig(duration_s=duration, warmup_s=0.5, generation_mode="none",
                                                      chunk_tokens=chunk_tokens))
    cpu0 = C.cpu_seconds()
    info = runner.run()
    cpu = C.cpu_seconds() - cpu0
    if info.errors:
        raise SystemExit(f"the run failed: {info.errors[:3]}")
    ops = sum(w.count for w in recorder.window.values())
    total_ops = sum(count for count, _ in recorder.total.values())
    by_op: dict[str, int] = {}
    for (_, op), w in recorder.window.items():
        by_op[op] = by_op.get(op, 0) + w.count
    return {"ops": ops, "window_s": recorder.window_s, "us_per_op": recorder.window_s / ops * 1e6,
            "cpu_us_per_op": cpu / total_ops * 1e6, "by_op": by_op, "trace_exhausted": info.trace_exhausted}


def bare_loop(ctx, n: int, nbytes: int, threads: int = 1, latency_s: float = 0.0) -> dict:
    """The same mock backend called directly ``n`` times in all (writes and reads alternating),
    from ``threads`` threads at once (as many as the run had users)."""
    backend = MockBackend(TierSpec("cpu", "mock", 1 << 40, {"latency_s": latency_s}), ctx)
    per_thread = max(1, n // (2 * threads))
    keys = [[f"u{t:04d}c0000.k{i:05d}" for i in range(1024)] for t in range(threads)]
    for mine in keys:
        for key in mine:
            backend.write(key, nbytes)
    write, read = backend.write, backend.read

    def work(gate, mine: list[str]) -> None:
        gate.wait()
        for i in range(per_thread):
            key = mine[i & 1023]
            write(key, nbytes)
            read(key, nbytes)

    wall = C.release_together(work, [(mine,) for mine in keys])
    ops = 2 * per_thread * threads
    return {"ops": ops, "us_per_op": wall / 1e3 / ops}


def lock_floor(threads: int, trips: int, seconds: float) -> dict:
    """CPython's own cost of ``trips`` trips through one shared lock per operation, with a few
    bytecodes inside and outside it and nothing else: the floor under the cache's locking."""
    lock = threading.Condition(threading.Lock())
    done = [0] * threads

    def spin(n: int) -> int:
        x = 0
        for i in range(n):
            x += i
        return x

    def work(gate, t: int) -> None:
        gate.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(trips):
                with lock:
                    spin(5)
                spin(40)
            done[t] += 1

    wall = C.release_together(work, [(t,) for t in range(threads)])
    return {"ops": sum(done), "us_per_op": wall / 1e3 / sum(done)}


def part_lock_floor(args, rows: list, raw: dict) -> None:
    trips = 2  # about what the cache takes per recorded I/O (a counting probe saw 2.3)
    print(f"  lock floor: 8 vs 1 thread(s), {trips} lock trips per op, {args.duration:g} s x {args.reps} ...",
          flush=True)
    res = C.interleave({"ours": lambda rep: lock_floor(8, trips, args.duration),
                        "bare": lambda rep: lock_floor(1, trips, args.duration)}, args.reps)
    raw["lock floor"] = res
    o = [r["us_per_op"] for r in res["ours"]]
    b = [r["us_per_op"] for r in res["bare"]]
    rows.append(C.row(f"us per op, CPython floor: {trips} shared-lock trips, 8 threads vs 1", "us", o, b,
                      note="no cache, I/O or recorder: what 8 CPU-bound threads pay per op for the lock alone"))


def part_overhead(args, rows: list, raw: dict) -> None:
    ctx = BackendContext(noise=NoiseSource(42, size=1 << 20), staging=StagingBuffers(4096))
    nbytes = args.chunk_tokens * MICRO.bytes_per_token
    cases = [(1, 1, 0.0), (1, 2, 0.0), (8, 2, 0.0), (8, 2, args.latency_us / 1e6)]
    for users, tiers, latency in cases:
        case = f"{users} user(s), {tiers} mock tier(s), {latency * 1e6:g} us latency"
        print(f"  overhead: {case}, {args.duration:g} s x {args.reps} ...", flush=True)
        last = {}

        def ours(rep, users=users, tiers=tiers, latency=latency, last=last):
            last["r"] = framework_run(ctx, users, tiers, args.chunk_tokens, args.duration, latency)
            return last["r"]

        def bare(rep, users=users, latency=latency, last=last):
            return bare_loop(ctx, last["r"]["ops"], nbytes, users, latency)

        res = C.interleave({"ours": ours, "bare": bare}, args.reps)
        raw[case] = res
        o = [r["us_per_op"] for r in res["ours"]]
        b = [r["us_per_op"] for r in res["bare"]]
        overhead = [x - y for x, y in zip(o, b)]
        om = C.median(overhead)
        rows.append(C.row(f"us per I/O, {case}", "us", o, b, target=f"ours - bare <= {OVERHEAD_US:g} us",
                          met=om <= OVERHEAD_US, overhead_us=om, overhead_us_range=C.value_range(overhead),
                          note=f"framework adds {om:.1f} us/I/O",
                          ops_per_s=C.median([r["ops"] / r["window_s"] for r in res["ours"]]),
                          cpu_us_per_op=C.median([r["cpu_us_per_op"] for r in res["ours"]])))
        print(f"    median {C.median(o):.2f} us/op (bare {C.median(b):.2f}), overhead {om:.2f} us, "
              f"{rows[-1]['ops_per_s']:,.0f} ops/s, ops by kind {res['ours'][-1]['by_op']}", flush=True)


def file_run(args, directory) -> dict:
    settings = build_settings({"cache_dir": str(directory), "duration": args.file_duration, "warmup": 0,
                               "users": args.users, "model": args.model, "generation_mode": args.generation_mode,
                               "nvme_capacity_gb": 2.0, "profile": "none"}, {}, {})
    model = resolve_model(settings.model, settings.models)
    trace = generate_trace(WorkloadParams(seed=settings.seed, users=settings.users,
                                          requests_per_user=settings.requests_per_user,
                                          think_time_scale=settings.think_time_scale))
    prov = provision(TIER_CONFIGS["storage-only"], settings, default_registry())
    try:
        recorder = Recorder()
        cache = MultiTierCache(prov.backends, recorder, model.bytes_per_token)
        runner = Runner(cache, trace, recorder, RunConfig(
            duration_s=settings.duration, warmup_s=0.0, generation_mode=settings.generation_mode,
            chunk_tokens=settings.chunk_tokens))
        (u0, s0), t0 = C.cpu_times(), time.perf_counter()
        info = runner.run()
        (u1, s1), wall = C.cpu_times(), time.perf_counter() - t0
        cpu = (u1 - u0) + (s1 - s0)
        io_mode = prov.backends[-1].describe().get("io_mode")
    finally:
        prov.close()
    if info.errors:
        raise SystemExit(f"the storage-only run failed: {info.errors[:3]}")
    moved = {op: recorder.total.get(("nvme", op), [0, 0])[1] for op in DATA_OPS}
    gib = sum(moved.values()) / C.GiB
    return {"cpu_s": cpu, "wall_s": wall, "gib": gib, "cpu_s_per_gib": cpu / gib if gib else None,
            "user_s_per_gib": (u1 - u0) / gib if gib else None, "sys_s_per_gib": (s1 - s0) / gib if gib else None,
            "files_created": recorder.total.get(("nvme", "write"), [0, 0])[0]
            + recorder.total.get(("nvme", "demote_write"), [0, 0])[0],
            "bytes_by_op": moved, "io_mode": io_mode, "chunk_bytes": settings.chunk_tokens * model.bytes_per_token,
            "users": settings.users}


def backend_alone(directory, chunk: int, nbytes: int, rep: int) -> dict:
    """FileBackend write then read of ``nbytes`` in ``chunk`` entries, one thread, no cache/runner."""
    from pytest_kvcache.backends.file import FileBackend

    run_dir = directory / f"alone-{rep}"
    run_dir.mkdir()
    ctx = BackendContext(noise=NoiseSource(42), staging=StagingBuffers(chunk), run_dir=run_dir)
    backend = FileBackend(TierSpec("nvme", "file", 1 << 50, {"io_mode": "direct"}), ctx)
    ctx.staging.get()
    n = max(1, -(-nbytes // (2 * chunk)))
    try:
        cpu0 = C.cpu_seconds()
        for i in range(n):
            backend.write(f"k{i}", chunk)
        for i in range(n):
            backend.read(f"k{i}", chunk)
        cpu = C.cpu_seconds() - cpu0
    finally:
        backend.close()
        C.cleanup_dir(run_dir)
    gib = 2 * n * chunk / C.GiB
    return {"cpu_s": cpu, "gib": gib, "cpu_s_per_gib": cpu / gib}


def fio_cpu(directory, chunk: int, users: int, nbytes: int, rep: int) -> dict:
    fio_dir = directory / f"fio-{rep}"
    fio_dir.mkdir()
    per_job = max(1, -(-nbytes // (2 * users * chunk))) * chunk  # half written, then read back
    try:
        w = C.run_fio(fio_dir, "kvcpu", "write", chunk, per_job, users)
        r = C.run_fio(fio_dir, "kvcpu", "read", chunk, per_job, users)
    finally:
        C.cleanup_dir(fio_dir)
    gib = (w["bytes"] + r["bytes"]) / C.GiB
    return {"cpu_s": w["cpu_s"] + r["cpu_s"], "gib": gib, "cpu_s_per_gib": (w["cpu_s"] + r["cpu_s"]) / gib,
            "cmd": [w["cmd"], r["cmd"]]}


def part_cpu(args, rows: list, raw: dict) -> None:
    directory = C.bench_dir(args.dir, "cpu")
    try:
        last = {}

        def ours(rep):
            last["r"] = file_run(args, directory)
            return last["r"]

        sides = {"ours": ours, "alone": lambda rep: backend_alone(directory, last["r"]["chunk_bytes"],
                                                                  int(last["r"]["gib"] * C.GiB), rep)}
        if C.fio_path():
            sides["fio"] = lambda rep: fio_cpu(directory, last["r"]["chunk_bytes"], last["r"]["users"],
                                               int(last["r"]["gib"] * C.GiB), rep)
        else:
            print(f"  {C.FIO_MISSING}: CPU per GiB is reported without a baseline")
        print(f"  CPU per GiB: storage-only {args.model}, {args.users} users, {args.file_duration:g} s x {args.reps} ...",
              flush=True)
        res = C.interleave(sides, args.reps)
        raw["cpu_per_gib"] = res
        o = [r["cpu_s_per_gib"] for r in res["ours"]]
        f = [r["cpu_s_per_gib"] for r in res.get("fio", [])]
        om = C.median(o)
        rows.append(C.row(f"CPU-s per GiB, file tier ({res['ours'][0]['io_mode']}, "
                          f"{C.fmt_size(res['ours'][0]['chunk_bytes'])} chunks)", "CPU-s/GiB", o, f,
                          target=f"<= {CPU_PER_GIB:g}", met=None if om is None else om <= CPU_PER_GIB,
                          gib_moved=C.median([r["gib"] for r in res["ours"]]),
                          user_s_per_gib=C.median([r["user_s_per_gib"] for r in res["ours"]]),
                          sys_s_per_gib=C.median([r["sys_s_per_gib"] for r in res["ours"]])))
        last_row = rows[-1]
        last_row["note"] = (f"user {last_row['user_s_per_gib']:.3f} + sys {last_row['sys_s_per_gib']:.3f}; "
                            f"{last_row['gib_moved']:.2f} GiB moved")
        a = [r["cpu_s_per_gib"] for r in res["alone"]]
        am = C.median(a)
        rows.append(C.row("CPU-s per GiB, FileBackend alone (write then read, 1 thread)", "CPU-s/GiB", a, f,
                          target=f"<= {CPU_PER_GIB:g}", met=am <= CPU_PER_GIB,
                          note="no cache, runner or threads: the backend's own cost"))
    finally:
        C.cleanup_dir(directory)


def main() -> None:
    p = C.parser(NAME, __doc__)
    p.add_argument("--duration", type=float, default=2.0, help="window of each mock run, seconds")
    p.add_argument("--chunk-tokens", type=int, default=16, help="tokens per chunk in the mock runs")
    p.add_argument("--latency-us", type=float, default=100.0,
                   help="mock latency of the last case (the I/O releases the GIL, as real I/O does)")
    p.add_argument("--dir", default=None, help="directory for the file-tier run (default: temp dir)")
    p.add_argument("--file-duration", type=float, default=4.0, help="length of the storage-only run, seconds")
    p.add_argument("--users", type=int, default=8, help="users of the storage-only run")
    p.add_argument("--model", default="tiny-1b", help="model of the storage-only run")
    p.add_argument("--generation-mode", default="none", choices=("none", "fast", "realistic"),
                   help="decode pacing of the storage-only run (none: storage-bound)")
    p.add_argument("--skip-cpu", action="store_true", help="only the mock (per-I/O overhead) part")
    args = p.parse_args()
    params = {k: v for k, v in vars(args).items() if k != "json"}
    rows, raw = [], {}
    part_overhead(args, rows, raw)
    part_lock_floor(args, rows, raw)
    if not args.skip_cpu:
        part_cpu(args, rows, raw)
    C.print_table("Framework cost: us per recorded I/O (mock tiers, ratio = ours / bare loop); "
                  "CPU-s per GiB (file tier, ratio = ours / fio)", rows, "bare loop | fio")
    C.write_json(args.json, NAME, "ok", params, rows, raw=raw, baseline_name="bare mock loop | fio usr+sys")


if __name__ == "__main__":
    main()
