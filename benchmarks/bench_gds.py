"""Loading chunk files into GPU memory: GPUDirect Storage (the gds backend) vs the bounce buffer.

For each chunk size, ``count`` chunk files are written with each backend in its own directory
under ``--dir``, then loaded back into GPU memory as a run loads them: a load is open on the
compute device (``compute.GPUCompute``) around the backend's ``read``.

- OURS, the ``gds`` backend: kvikio ``CuFile.read`` straight into GPU memory, one call per
  ``--io-block-mb``. kvikio uses cuFile when GPUDirect Storage is available and its
  compatibility mode otherwise: the JSON's ``params.gds`` says which ran
  (``kvikio.defaults.is_compat_mode_preferred()``).
- BASELINE, the bounce-buffer path: the ``file`` backend (O_DIRECT where the file system honours
  it, into page-locked host staging), each transfer then copied host-to-device (the compute
  device's ``h2d`` leg), as a run with ``--kv-nvme-backend file`` on a GPU loads.

GB/s = chunk bytes x chunks loaded / wall time of the loop, ``--users`` threads at once (each
with its own staging and GPU buffer). Runs are interleaved (ours, baseline, ...). Write GB/s
of the setup (gds from GPU memory; file from host staging) are reported, not gated. Needs torch
with CUDA and kvikio; without them the harness says so and exits 0 (status "skipped").
"""

from __future__ import annotations

import time

import _common as C

from pytest_kvcache.backends.base import BackendContext, TierSpec
from pytest_kvcache.backends.gds import kvikio_unavailable_reason
from pytest_kvcache.backends.gpu import gpu_unavailable_reason
from pytest_kvcache.payload import NoiseSource, StagingBuffers

NAME = "bench_gds"


def make(kind: str, directory, capacity: int, block: int, compute, noise):
    from pytest_kvcache.backends.file import FileBackend
    from pytest_kvcache.backends.gds import GDSBackend

    directory.mkdir()
    ctx = BackendContext(noise=noise, staging=StagingBuffers(block, pin=compute.pin), run_dir=directory,
                         compute=compute)
    cls = GDSBackend if kind == "gds" else FileBackend
    return cls(TierSpec("nvme", kind, capacity, {"recycle": True}), ctx)


def write_all(backend, keys: list[str], bs: int, users: int) -> float:
    """Writes every key (``users`` threads); returns GB/s over the wall time."""
    def work(gate, u):
        gate.wait()
        for key in keys[u::users]:
            backend.write(key, bs)

    wall = C.release_together(work, [(u,) for u in range(users)]) / 1e9
    return bs * len(keys) / wall / 1e9


def load_all(backend, compute, keys: list[str], bs: int, users: int) -> dict:
    """Loads every key into GPU memory (``users`` threads); GB/s over the wall time, and the
    summed storage-leg and copy-leg seconds."""
    legs = [[0, 0] for _ in range(users)]

    def work(gate, u):
        with compute.load(bs):  # this thread's GPU buffer and stream, untimed
            pass
        gate.wait()
        for key in keys[u::users]:
            with compute.load(bs) as load:
                res = backend.read(key, bs)
            legs[u][0] += res.dur_ns
            legs[u][1] += load.result.dur_ns if load.result is not None else 0

    wall = C.release_together(work, [(u,) for u in range(users)]) / 1e9
    return {"gbps": bs * len(keys) / wall / 1e9, "read_leg_s": sum(r for r, _ in legs) / 1e9,
            "h2d_leg_s": sum(h for _, h in legs) / 1e9}


def main() -> None:
    p = C.parser(NAME, __doc__)
    p.add_argument("--dir", default=None, help="directory on the drive under test (default: the temp dir)")
    p.add_argument("--block-sizes", default="1m,4m,32m", help="comma-separated chunk sizes")
    p.add_argument("--size-mb", type=float, default=512, help="MiB of chunk files per case and backend")
    p.add_argument("--io-block-mb", type=float, default=4, help="largest transfer, as --kv-io-block-mb")
    p.add_argument("--users", type=int, default=8, help="threads loading at once")
    p.add_argument("--device", default="cuda:0")
    args = p.parse_args()
    block_sizes = [C.parse_size(b) for b in args.block_sizes.split(",")]
    params = {"block_sizes": block_sizes, "size_mb": args.size_mb, "io_block_mb": args.io_block_mb,
              "users": args.users, "reps": args.reps, "device": args.device}
    reason = gpu_unavailable_reason() or kvikio_unavailable_reason()
    if reason:
        C.skip(args, NAME, reason, params)
    from pytest_kvcache.compute import GPUCompute

    compute = GPUCompute(args.device)
    params.update(device_name=compute.torch.cuda.get_device_name(compute.device), torch=compute.torch.__version__)
    noise = NoiseSource(42)
    block = int(args.io_block_mb * C.MiB)
    root = C.bench_dir(args.dir, NAME)
    rows, raw = [], {}
    try:
        for bs in block_sizes:
            count = max(2 * args.users, int(args.size_mb * C.MiB) // bs)
            keys = [f"c{i}" for i in range(count)]
            backends = {kind: make(kind, root / f"{kind}-{bs}", 2 * bs * count + (64 << 20), block, compute, noise)
                        for kind in ("gds", "file")}
            try:
                writes = {kind: write_all(b, keys, bs, args.users) for kind, b in backends.items()}
                params.setdefault("gds", backends["gds"].describe()["io_mode"])
                params.setdefault("gds_reason", backends["gds"].describe()["io_mode_reason"])
                params.setdefault("file_io_mode", backends["file"].describe()["io_mode"])
                case = f"load {C.fmt_size(bs)} x{args.users} users"
                print(f"  {case}: {count} chunks x {args.reps} reps ...", flush=True)
                res = C.interleave({side: (lambda rep, b=backends[side], k=keys, n=bs: load_all(b, compute, k, n, args.users))
                                    for side in ("gds", "file")}, args.reps)
                raw[case] = {**res, "write_gbps": writes}
                g = [r["gbps"] for r in res["gds"]]
                f = [r["gbps"] for r in res["file"]]
                legs = res["file"][-1]
                rows.append(C.row(case, "GB/s", g, f, target="(reported)",
                                  note=f"bounce: read leg {legs['read_leg_s']:.2f} s, h2d leg {legs['h2d_leg_s']:.2f} s "
                                       f"(summed over threads); writes gds {writes['gds']:.2f} / file {writes['file']:.2f} GB/s"))
            finally:
                for b in backends.values():
                    b.close()
    finally:
        compute.close()
        C.cleanup_dir(root)
    t = time.strftime("%Y-%m-%d %H:%M:%S")
    C.print_table(f"gds ({params.get('gds')}) vs bounce buffer ({params.get('file_io_mode')} + H2D) on "
                  f"{params['device_name']}, {t} (ratio = gds / bounce)", rows, "file + H2D")
    C.write_json(args.json, NAME, "ok", params, rows, raw=raw, baseline_name="file backend into pinned staging + H2D")


if __name__ == "__main__":
    main()
