"""Shared pieces of the benchmark harnesses: options, interleaving, medians, tables, JSON, fio.

Every harness compares OUR figure with a BASELINE measured in the same run on the same path
and prints (and writes as JSON) one row per case: the median and range of each over the
repetitions, and their ratio (ours / baseline). Runs are interleaved (A B A B ...) because the
disk of a small VM drifts by 25-40% between runs: only figures taken side by side compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tabulate import tabulate

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


_LOAD_AT_START = _loadavg()  # other jobs on the machine skew disk and CPU figures: record it

if str(ROOT) not in sys.path:  # run as `python benchmarks/NAME.py` from a checkout
    sys.path.insert(0, str(ROOT))


# -- options ----------------------------------------------------------------------------------
def parser(name: str, doc: str | None, reps: int | None = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python benchmarks/{name}.py", description=(doc or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", help="where the results are written as JSON")
    if reps is not None:
        p.add_argument("--reps", type=int, default=reps, help="repetitions of each side (interleaved)")
    return p


def parse_size(text: str) -> int:
    """'128k', '1m', '32M', '4096' -> bytes (binary units)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": KiB, "m": MiB, "g": GiB}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def fmt_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def bench_dir(base: str | None, name: str) -> Path:
    """A fresh private directory for one harness run (removed by ``cleanup_dir``)."""
    root = Path(base) if base else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=f"kvbench-{name}-", dir=root))


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- statistics -------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def value_range(values: Sequence[float]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    return (min(vals), max(vals)) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def interleave(sides: dict[str, Callable[[int], float | dict]], reps: int) -> dict[str, list]:
    """Run each side once per repetition, in turn (A B A B ...); returns name -> results."""
    out: dict[str, list] = {name: [] for name in sides}
    for rep in range(reps):
        for name, fn in sides.items():
            out[name].append(fn(rep))
    return out


def release_together(work: Callable, args: Sequence[tuple]) -> int:
    """One thread per ``args``; ``work(gate, *a)`` calls ``gate.wait()`` once when ready.

    Returns the nanoseconds from the moment all threads pass the gate until the last ends.
    """
    gate = threading.Barrier(len(args) + 1)
    workers = [threading.Thread(target=work, args=(gate, *a)) for a in args]
    for w in workers:
        w.start()
    gate.wait()
    t0 = time.perf_counter_ns()
    for w in workers:
        w.join()
    return time.perf_counter_ns() - t0


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all its threads."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    return sum(cpu_times())


# -- result rows ------------------------------------------------------------------------------
def row(case: str, unit: str, ours: Sequence[float], baseline: Sequence[float] | None,
        target: str = "", met: bool | None = None, **extra) -> dict:
    """One line of the table: medians and ranges of both sides and the ratio of the medians."""
    om, bm = median(ours), median(baseline or [])
    return {"case": case, "unit": unit, "ours": om, "ours_range": value_range(ours), "ours_samples": list(ours),
            "baseline": bm, "baseline_range": value_range(baseline or []),
            "baseline_samples": list(baseline or []), "ratio": ratio(om, bm), "target": target,
            "met": met, **extra}


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.4g}" if a < 1000 else f"{v:,.0f}"


def _cell(median_: float | None, rng: tuple | None, unit: str) -> str:
    if median_ is None:
        return "-"
    text = f"{_num(median_)} {unit}".rstrip()
    if rng and rng[0] != rng[1]:
        text += f" [{_num(rng[0])}-{_num(rng[1])}]"
    return text


def print_table(title: str, rows: list[dict], baseline_name: str) -> None:
    """The harness's table; a row's optional ``note`` (what explains it) goes in a last column."""
    notes = any(r.get("note") for r in rows)
    table = []
    for r in rows:
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        line = [r["case"], _cell(r["ours"], r["ours_range"], r["unit"]),
                _cell(r["baseline"], r["baseline_range"], r["unit"]),
                "-" if r["ratio"] is None else f"{r['ratio']:.4f}", r.get("target", ""), met]
        table.append(line + [r.get("note", "")] if notes else line)
    headers = ["case", "ours: median [range]", f"baseline ({baseline_name}): median [range]",
               "ratio", "target", "met"] + (["note"] if notes else [])
    print(f"\n{title}")
    print(tabulate(table, headers=headers, tablefmt="simple"))


# -- JSON -------------------------------------------------------------------------------------
def environment() -> dict:
    import numpy

    return {"node": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "cpus": os.cpu_count(), "loadavg_at_start": _LOAD_AT_START,
            "loadavg_at_end": _loadavg(),
            "fio": fio_version(), "argv": sys.argv, "time_unix": round(time.time(), 3)}


def write_json(path: Path, name: str, status: str, params: dict, rows: list[dict] | None = None,
               reason: str | None = None, raw: dict | None = None, baseline_name: str = "") -> None:
    data = {"benchmark": name, "status": status, "reason": reason, "params": params,
            "baseline": baseline_name, "environment": environment(), "rows": rows or [], "raw": raw or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"\nresults written to {path}")


def skip(args, name: str, reason: str, params: dict | None = None) -> None:
    """Say clearly why the harness cannot run here, record it, and exit 0."""
    print(f"SKIPPED {name}: {reason}")
    write_json(args.json, name, "skipped", params or {}, reason=reason)
    sys.exit(0)


# -- fio --------------------------------------------------------------------------------------
FIO_MISSING = "fio is not on PATH; install it (Debian/Ubuntu: apt-get install fio) to measure the baseline"


def fio_path() -> str | None:
    return shutil.which("fio")


def fio_version() -> str | None:
    exe = fio_path()
    if not exe:
        return None
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def run_fio(directory: Path, name: str, rw: str, bs: int, size_per_job: int, numjobs: int,
            extra: Sequence[str] = ()) -> dict:
    """One fio run (psync, O_DIRECT, one file per job); returns bytes, seconds and CPU of it.

    ``seconds`` is the longest job's runtime (fio's own clock, excluding file layout), so
    ``bytes / seconds`` is fio's aggregate bandwidth as its group report computes it.
    """
    cmd = [fio_path() or "fio", f"--name={name}", f"--directory={directory}", f"--rw={rw}", f"--bs={bs}",
           f"--size={size_per_job}", f"--numjobs={numjobs}", "--ioengine=psync", "--direct=1",
           "--fallocate=none", "--thread", "--output-format=json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"fio failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    text = proc.stdout[proc.stdout.find("{"):]  # fio may print notes before the JSON
    data = json.loads(text)
    op = "read" if "read" in rw else "write"
    nbytes = runtime_ms = cpu = 0.0
    for job in data["jobs"]:
        part = job[op]
        nbytes += part["io_bytes"]
        runtime_ms = max(runtime_ms, part["runtime"])
        job_ms = job.get("job_runtime", part["runtime"])
        cpu += (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * job_ms / 1000.0
    return {"bytes": int(nbytes), "seconds": runtime_ms / 1000.0, "cpu_s": cpu, "cmd": " ".join(cmd)}
