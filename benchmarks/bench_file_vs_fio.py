"""File tier (FileBackend, O_DIRECT) sequential write and read vs fio on the same directory.

For each block size and thread count: OUR figure is the bytes moved divided by the wall time of
the whole batch of calls, from the moment the worker threads are released until the last one
finishes: file creation, payload preparation, Python, everything but setup (backend creation,
staging buffers, and for reads the files themselves, which the preceding write run made). Three
batches run in order: ``write`` (new keys into an empty tier: a file created per chunk),
``read`` (of those), and ``rewrite`` (the steady state of a full tier: per chunk, ``delete`` of
an old chunk, whose file becomes a spare, then ``write`` of a new key, which recycles it). The
BASELINE is fio with the same block size, one file per job, ``ioengine=psync direct=1``,
``numjobs`` = threads and ``size`` per job = the bytes one of our threads moves: ``--rw=write``,
``--rw=read``, then ``--rw=write --overwrite=1`` over the same files; fio's figure is its own
aggregate bandwidth. Each repetition runs all of ours, then all of fio's, and the medians over
repetitions are compared.

Two diagnostic sides (``--no-diagnose`` drops them) say where a gap comes from; their ratios
to fio are in the note. "Python 1 file/thread" is plain ``os.pwrite`` / ``os.preadv`` with
O_DIRECT into one file per thread, as fio does, without a payload fill per write: the gap
between fio and it is Python's. "fio 1 file/chunk" is fio writing and reading one file per chunk
(``nrfiles`` = chunks, ``filesize`` = block, ``create_on_open=1``), as our backend stores
entries: the gap between fio and it is the file system's cost of a file per chunk.

Target (issue 3): ours >= 0.9x fio for read and write at the same block size and queue depth.
The write target is judged on ``rewrite``, the state a tier is in during a scenario's window once
it has filled; ``write`` into an empty tier is reported too, with its file-creation cost.
"""

from __future__ import annotations

import os
import time

import _common as C

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.file import FileBackend
from pytest_kvcache.fsinfo import block_device_for, mount_for, probe_direct_io
from pytest_kvcache.payload import NoiseSource, StagingBuffers, aligned_buffer

NAME = "bench_file_vs_fio"
TARGET = 0.9


def batch(threads: int, count: int, setup, op) -> dict:
    """Run ``op(t, i)`` for i < count on ``threads`` threads released together; time the batch.

    ``setup(t)`` runs in each thread before the release (outside the clock). ``op`` returns
    (bytes moved, ns spent inside the I/O calls).
    """
    inner, moved = [0] * threads, [0] * threads
    errors: list[BaseException] = []

    def work(gate, t: int) -> None:
        try:
            setup(t)
        finally:
            gate.wait()
        try:
            for i in range(count):
                n, ns = op(t, i)
                moved[t] += n
                inner[t] += ns
        except BaseException as exc:  # reported after the batch
            errors.append(exc)

    wall = C.release_together(work, [(t,) for t in range(threads)]) / 1e9
    if errors:
        raise errors[0]
    return {"bytes": sum(moved), "seconds": wall, "gbps": sum(moved) / wall / 1e9,
            "in_io_share": sum(inner) / threads / 1e9 / wall}


def ours(directory, noise: NoiseSource, bs: int, threads: int, count: int, rep: int) -> dict:
    """Write, read, then rewrite batches of ``threads`` x ``count`` chunks of ``bs`` bytes.

    write: new keys into an empty tier (a file created per chunk). rewrite: the steady state of
    a full tier, where each new chunk follows an eviction: delete one old chunk (its file becomes
    a spare) and write a new key (which overwrites that spare in place). Both calls are timed.
    """
    run_dir = directory / f"ours-{rep}"
    run_dir.mkdir()
    ctx = BackendContext(noise=noise, staging=StagingBuffers(bs), run_dir=run_dir)
    backend = FileBackend(TierSpec("nvme", "file", 1 << 50, {"io_mode": "direct"}), ctx)

    def write(t: int, i: int) -> tuple[int, int]:
        res = backend.write(f"t{t}-c{i}", bs)
        return res.nbytes, res.dur_ns

    def read(t: int, i: int) -> tuple[int, int]:
        res = backend.read(f"t{t}-c{i}", bs)
        return res.nbytes, res.dur_ns

    def rewrite(t: int, i: int) -> tuple[int, int]:
        gone = backend.delete(f"t{t}-c{i}")
        res = backend.write(f"t{t}-n{i}", bs)
        return res.nbytes, res.dur_ns + gone.dur_ns

    try:
        out = {op: batch(threads, count, lambda t: ctx.staging.get(), fn)
               for op, fn in (("write", write), ("read", read), ("rewrite", rewrite))}
        out["recycled"] = backend.describe()["files_recycled"]
    finally:
        backend.close()
        C.cleanup_dir(run_dir)
    return out


def plain_python(directory, noise: NoiseSource, bs: int, threads: int, count: int, rep: int) -> dict:
    """Diagnostic: os.pwrite / os.preadv with O_DIRECT into ONE file per thread, as fio does.

    No per-chunk file, no payload fill per write: what Python itself reaches on this path.
    """
    run_dir = directory / f"py-{rep}"
    run_dir.mkdir()
    bufs = [aligned_buffer(bs) for _ in range(threads)]
    for t, buf in enumerate(bufs):
        noise.fill(buf[:bs], f"py{t}", 0)
    fds: dict[int, int] = {}
    out = {}
    try:
        for op in ("write", "read", "rewrite"):
            flags = (os.O_RDONLY if op == "read" else os.O_WRONLY | os.O_CREAT) | os.O_DIRECT

            def setup(t: int, flags=flags) -> None:
                fds[t] = os.open(run_dir / f"f{t}", flags, 0o600)

            def one(t: int, i: int, op=op) -> tuple[int, int]:
                t0 = time.perf_counter_ns()
                if op != "read":
                    n = os.pwrite(fds[t], bufs[t][:bs], i * bs)
                else:
                    n = os.preadv(fds[t], [bufs[t][:bs]], i * bs)
                return n, time.perf_counter_ns() - t0

            try:
                out[op] = batch(threads, count, setup, one)
            finally:
                for fd in fds.values():
                    os.close(fd)
                fds.clear()
    finally:
        C.cleanup_dir(run_dir)
    return out


def create_cost_us(directory, n: int = 200) -> float:
    """Median microseconds to create (and close) one empty file here: the per-entry cost fio never pays."""
    probe = directory / "create-probe"
    probe.mkdir()
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter_ns()
            os.close(os.open(probe / f"e{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            times.append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        C.cleanup_dir(probe)
    return C.median(times)


def fio(directory, bs: int, threads: int, count: int, rep: int, per_chunk: bool = False) -> dict:
    """fio write, read, then rewrite (overwrite in place) of the same files.

    ``per_chunk``: one file per chunk, as ours lays entries out (write and read only).
    """
    fio_dir = directory / f"fio-{rep}"
    fio_dir.mkdir()
    extra = (f"--nrfiles={count}", f"--filesize={bs}", "--file_service_type=sequential", "--openfiles=1",
             "--create_on_open=1") if per_chunk else ()
    out = {}
    try:
        for op in ("write", "read") if per_chunk else ("write", "read", "rewrite"):
            # read and rewrite reuse the files the write job made; rewrite overwrites them
            rw, more = ("write", ("--overwrite=1",)) if op == "rewrite" else (op, ())
            r = C.run_fio(fio_dir, "kvbench", rw, bs, bs * count, threads, (*extra, *more))
            out[op] = {**r, "gbps": r["bytes"] / r["seconds"] / 1e9}
    finally:
        C.cleanup_dir(fio_dir)
    return out


def main() -> None:
    p = C.parser(NAME, __doc__)
    p.add_argument("--dir", default=None, help="directory on the drive under test (default: the system temp dir)")
    p.add_argument("--block-sizes", default="128k,1m,32m", help="comma-separated chunk / block sizes")
    p.add_argument("--threads", default="1,8", help="comma-separated thread counts (fio numjobs); 8 = the scenarios' users")
    p.add_argument("--size-mb", type=float, default=256, help="MiB moved per case and direction (split over the threads)")
    p.add_argument("--no-diagnose", action="store_true",
                   help="skip the two diagnostic sides (plain Python, one file per thread; fio, one file per chunk)")
    p.add_argument("--min-chunks", type=int, default=2,
                   help="at least this many chunks per thread (so 32 MiB x8 is not one I/O per thread)")
    args = p.parse_args()
    block_sizes = [C.parse_size(b) for b in args.block_sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    params = {"block_sizes": block_sizes, "threads": thread_counts, "size_mb": args.size_mb,
              "min_chunks": args.min_chunks, "reps": args.reps}
    if not C.fio_path():
        C.skip(args, NAME, C.FIO_MISSING, params)
    directory = C.bench_dir(args.dir, "fio")
    try:
        mode, reason = probe_direct_io(directory)
        mount = mount_for(directory)
        params.update(dir=str(directory), fstype=mount.fstype, block_device=block_device_for(directory),
                      direct_io=mode, direct_io_reason=reason)
        print(f"{directory}: {mount.fstype} on {mount.device}, O_DIRECT: {mode} ({reason})")
        if mode != "direct":
            C.skip(args, NAME, f"O_DIRECT does not work in {directory} ({reason}); the comparison needs it", params)
        noise = NoiseSource(42)
        params["create_us_before"] = create_cost_us(directory)
        rows, raw = [], {}
        for bs in block_sizes:
            for threads in thread_counts:
                count = max(args.min_chunks, int(args.size_mb * C.MiB) // (bs * threads))
                case = f"{C.fmt_size(bs)} x{threads}"
                print(f"  {case}: {threads} thread(s) x {count} chunk(s) per direction, {args.reps} reps ...", flush=True)
                sides = {
                    "ours": lambda rep, bs=bs, t=threads, n=count: ours(directory, noise, bs, t, n, rep),
                    "fio": lambda rep, bs=bs, t=threads, n=count: fio(directory, bs, t, n, rep),
                }
                if not args.no_diagnose:
                    sides["python"] = lambda rep, bs=bs, t=threads, n=count: plain_python(directory, noise, bs, t, n, rep)
                    sides["fio_files"] = lambda rep, bs=bs, t=threads, n=count: fio(directory, bs, t, n, rep, True)
                res = C.interleave(sides, args.reps)
                raw[case] = res
                for op in ("write", "read", "rewrite"):
                    o = [r[op]["gbps"] for r in res["ours"]]
                    f = [r[op]["gbps"] for r in res["fio"]]
                    rat = C.ratio(C.median(o), C.median(f))
                    py = C.median([r[op]["gbps"] for r in res.get("python", [])])
                    ff = C.median([r[op]["gbps"] for r in res.get("fio_files", []) if op in r])
                    share = C.median([r[op]["in_io_share"] for r in res["ours"]])
                    note = f"{share:.0%} of wall in I/O calls"
                    if ff:
                        note = f"fio 1 file/chunk {C.ratio(ff, C.median(f)):.2f}x fio; " + note
                    if py:
                        note = f"Python 1 file/thread {C.ratio(py, C.median(f)):.2f}x fio; " + note
                    rows.append(C.row(f"{op} {case}", "GB/s", o, f, target=f">= {TARGET}x fio",
                                      met=None if rat is None else rat >= TARGET, in_backend_share=share,
                                      python_one_file_gbps=py, fio_file_per_chunk_gbps=ff, note=note))
        params["create_us_after"] = create_cost_us(directory)
        C.print_table("FileBackend (direct) vs fio psync direct=1: GB/s = 1e9 B/s, ratio = ours / fio", rows, "fio")
        print(f"creating one empty file in {directory}: {params['create_us_before']:.0f} us before the runs, "
              f"{params['create_us_after']:.0f} us after (ours creates one file per chunk, fio one per job)")
        C.write_json(args.json, NAME, "ok", params, rows, raw=raw, baseline_name="fio psync direct=1")
    finally:
        C.cleanup_dir(directory)


if __name__ == "__main__":
    main()
