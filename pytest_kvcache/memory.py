"""Host memory: what a scenario will allocate, and what this process can still have.

The CPU tier's arena and the worker threads' staging buffers are allocated and pre-faulted before a
scenario runs. A budget above what the process can have ends in ``OSError: [Errno 12]`` or,
in a memory-limited cgroup (a container, a CI job), in the kernel's OOM killer ending the
whole session with nothing written. So budgets are checked first, against the smaller of
``MemAvailable`` (``/proc/meminfo``) and the cgroup's headroom (cgroup v2 ``memory.max`` minus
``memory.current``, v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``, on the
process's own cgroup and each one above it; the cgroup's inactive page cache counts as free,
as the kernel reclaims it before it kills). Probing functions take their file paths, so tests
can give them fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .payload import BLOCK, NOISE_BYTES, PAGE
from .remote import REMOTE_TIERS
from .settings import GB, Settings

MEMINFO = "/proc/meminfo"
PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
MiB = 1 << 20
RESERVE_BYTES = 256 * MiB  # left for the interpreter, pytest, thread stacks and the page cache
_UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True)
class MemoryLimit:
    """Bytes this process can still allocate, and where that figure comes from."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def mem_available(meminfo: str | Path = MEMINFO) -> MemoryLimit | None:
    """``MemAvailable`` of ``/proc/meminfo`` (the kernel's estimate of what can be allocated
    without swapping), or None where it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return MemoryLimit(int(line.split()[1]) * 1024, f"MemAvailable in {meminfo}")
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_cgroups(proc_cgroup: str | Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory controller path) of this process, from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _levels(root: Path, path: str) -> list[Path]:
    """The cgroup directory of ``path`` under ``root`` and each parent up to ``root``. Inside
    a container the path may be the host's: then only ``root`` (the container's own) is seen."""
    here = root / path.strip("/")
    if not here.is_dir():
        here = root
    levels = [here]
    while levels[-1] != root and root in levels[-1].parents:
        levels.append(levels[-1].parent)
    return levels


def cgroup_headroom(proc_cgroup: str | Path = PROC_CGROUP, root: str | Path = CGROUP_ROOT) -> MemoryLimit | None:
    """The least headroom under a memory limit of this process's cgroup or any cgroup above
    it (v1 or v2), or None where no limit is set or none can be read."""
    v2, v1 = _own_cgroups(proc_cgroup)
    root = Path(root)
    found: list[MemoryLimit] = []
    if v1 is not None:  # a v1 memory controller holds the limit even where a v2 tree is mounted too
        for level in _levels(root / "memory", v1):
            limit = _read_int(level / "memory.limit_in_bytes")
            usage = _read_int(level / "memory.usage_in_bytes")
            if limit is None or usage is None or limit >= _UNLIMITED:
                continue
            reclaimable = _stat_value(level / "memory.stat", "total_inactive_file")
            found.append(MemoryLimit(max(0, limit - usage + reclaimable),
                                     f"cgroup v1 limit {limit / GB:.2f} GB in {level / 'memory.limit_in_bytes'}"))
    elif v2 is not None:
        for level in _levels(root, v2):
            limit = _read_int(level / "memory.max")
            usage = _read_int(level / "memory.current")
            if limit is None or usage is None:
                continue
            reclaimable = _stat_value(level / "memory.stat", "inactive_file")
            found.append(MemoryLimit(max(0, limit - usage + reclaimable),
                                     f"cgroup memory.max {limit / GB:.2f} GB in {level / 'memory.max'}"))
    return min(found, key=lambda m: m.bytes) if found else None


def available(meminfo: str | Path = MEMINFO, proc_cgroup: str | Path = PROC_CGROUP,
              root: str | Path = CGROUP_ROOT) -> MemoryLimit | None:
    """The smaller of ``mem_available`` and ``cgroup_headroom``; None if neither is known."""
    known = [m for m in (mem_available(meminfo), cgroup_headroom(proc_cgroup, root)) if m is not None]
    return min(known, key=lambda m: m.bytes) if known else None


def host_bytes_needed(tiers: tuple[str, ...] | list[str], settings: Settings) -> dict[str, int]:
    """Host memory a scenario with these tiers allocates before it runs, by part (bytes).

    The CPU tier's arena (its whole budget, pre-faulted), one staging buffer of
    ``--kv-io-block-mb`` per worker thread (``load.workers_for``: requests in service at once;
    and one more each for ``--kv-verify``'s scratch and the GPU tier's pinned staging), and the
    payload noise buffer. With a network tier (redis, object) each worker also holds two whole
    chunks (``--kv-chunk-tokens`` of KV): the reused payload buffer, and the value a GET returns
    or the request body boto3 takes (made as the run goes, counted here all the same). GPU
    memory is not host memory.
    """
    from .load import workers_for

    block = max(BLOCK, -(-int(settings.io_block_mb * MiB) // PAGE) * PAGE)
    per_user = 1 + bool(settings.verify) + ("gpu" in tiers)
    workers = workers_for(settings.most_users, settings.max_inflight)
    parts = {}
    if "cpu" in tiers:
        parts["cpu tier (--kv-cpu-mem-gb)"] = int(settings.cpu_mem_gb * GB)
    parts[f"staging buffers ({workers} workers x {per_user} x --kv-io-block-mb {settings.io_block_mb:g})"] = \
        workers * per_user * block
    parts["payload noise"] = NOISE_BYTES
    if settings.chunk_tokens > 0 and any(t in REMOTE_TIERS for t in tiers):
        from .models import resolve_model

        chunk = settings.chunk_tokens * resolve_model(settings.model, settings.models).bytes_per_token
        parts[f"network tier chunks ({workers} workers x 2 x --kv-chunk-tokens {settings.chunk_tokens})"] = \
            workers * 2 * chunk
    return parts


def check_host_memory(name: str, tiers: tuple[str, ...] | list[str], settings: Settings,
                      limit: MemoryLimit | None = None) -> None:
    """Raise ConfigError, naming the budget to lower, unless scenario ``name`` fits in host
    memory with ``RESERVE_BYTES`` to spare. ``limit`` defaults to ``available()``; where no
    figure can be read the check passes (nothing to judge by)."""
    limit = available() if limit is None else limit
    if limit is None:
        return
    parts = host_bytes_needed(tiers, settings)
    need = sum(parts.values())
    if need + RESERVE_BYTES <= limit.bytes:
        return
    detail = ", ".join(f"{part} {nbytes / GB:.2f} GB" for part, nbytes in parts.items())
    cpu = parts.get("cpu tier (--kv-cpu-mem-gb)", 0)
    room_for_cpu = limit.bytes - RESERVE_BYTES - (need - cpu)
    if cpu and room_for_cpu >= 0.01 * GB:
        fix = f"lower --kv-cpu-mem-gb to {int(room_for_cpu / GB * 100) / 100:g} or less, or free memory"
    else:
        network = " (or --kv-chunk-tokens for the network tier)" if any(p.startswith("network tier") for p in parts) else ""
        fix = "lower --kv-max-inflight (or --kv-users) or --kv-io-block-mb" + network + (" and --kv-cpu-mem-gb" if cpu else "") + ", or free memory"
    raise ConfigError(
        f"scenario {name} needs {need / GB:.2f} GB of host memory ({detail}), but this process can have only "
        f"{limit.bytes / GB:.2f} GB ({limit.source}), of which {RESERVE_BYTES / GB:.2f} GB is kept for the "
        f"interpreter and the page cache; {fix}.")
