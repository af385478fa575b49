"""Provision a tier configuration and run one scenario on it, without pytest.

The pytest fixtures call these two functions; so can any script. Provisioning makes the run's
private directory (mode 0700) under the cache dir and the backends; ``Provisioned.close``
removes what the run created there and nothing else.
"""

from __future__ import annotations

import fcntl
import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .backends import BackendContext, BackendRegistry
from .cache import MultiTierCache
from .criteria import Criterion, evaluate
from .devstats import DeviceWindow
from .errors import ConfigError
from .fsinfo import block_device_for, free_bytes
from .metrics import compute
from .models import ModelSpec
from .payload import NoiseSource, StagingBuffers, Verifier
from .recorder import Recorder
from .result import ScenarioResult
from .runner import RunConfig, Runner
from .settings import Settings
from .tiers import TierConfig, tier_specs
from .workload import Trace

MiB = 1 << 20


@functools.lru_cache(maxsize=2)
def _noise(seed: int) -> NoiseSource:
    return NoiseSource(seed)


def check_cache_dir(path: Path, need_bytes: float = 0) -> None:
    """Raise ConfigError, naming the fix, unless ``path`` is a writable directory with room."""
    if not path.exists():
        raise ConfigError(f"--kv-cache-dir {path} does not exist; create it or point --kv-cache-dir at an existing directory on the drive under test.")
    if not path.is_dir():
        raise ConfigError(f"--kv-cache-dir {path} is not a directory; point --kv-cache-dir at a directory on the drive under test.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--kv-cache-dir {path} is not writable by this user; choose a directory you can write to, or fix its permissions.")
    free = free_bytes(path)
    if need_bytes > free:
        raise ConfigError(f"--kv-nvme-capacity-gb {need_bytes / 1e9:g} is more than the {free / 1e9:.1f} GB free in "
                          f"{path}; lower it or free space on that drive.")


def make_run_dir(cache_root: Path) -> Path:
    check_cache_dir(cache_root)
    try:
        return Path(tempfile.mkdtemp(prefix="kvcache-run-", dir=cache_root))  # mode 0700
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory in --kv-cache-dir {cache_root}: {exc.strerror}; choose a writable directory.") from None


class DriveLock:
    """An exclusive ``flock`` on the cache dir itself, held while a scenario owns the drive.

    Scenarios that share a drive must not run at once (pytest-xdist workers, or two pytest
    sessions pointed at one drive): each waits for the other. Locking the directory creates
    no file, and the kernel releases the lock if the process dies.
    """

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


class Provisioned:
    """The backends of one scenario and the private directory they work in."""

    def __init__(self, config: TierConfig, backends: list, run_dir: Path, ctx: BackendContext,
                 lock: DriveLock | None = None):
        self.config, self.backends, self.run_dir, self.ctx = config, backends, run_dir, ctx
        self.lock = lock

    @property
    def tier_names(self) -> list[str]:
        return [b.tier for b in self.backends]

    def close(self) -> list[str]:
        """Close backends and remove the run directory. Returns paths left behind (not ours)."""
        try:
            for backend in self.backends:
                backend.close()
            self.backends = []
            try:
                self.run_dir.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                return sorted(str(p) for p in self.run_dir.iterdir())
            return []
        finally:
            if self.lock is not None:
                self.lock.release()


def provision(config: TierConfig, settings: Settings, registry: BackendRegistry) -> Provisioned:
    check_cache_dir(settings.cache_root)
    lock = DriveLock(settings.cache_root)
    try:
        run_dir = make_run_dir(settings.cache_root)
    except BaseException:
        lock.release()
        raise
    noise = _noise(settings.seed)
    block = int(settings.io_block_mb * MiB)
    ctx = BackendContext(noise=noise, staging=StagingBuffers(block), run_dir=run_dir,
                         verifier=Verifier(noise, block) if settings.verify else None)
    prov = Provisioned(config, [], run_dir, ctx, lock)
    try:
        for spec in tier_specs(config, settings):
            if spec.capacity_bytes <= 0:
                raise ConfigError(f"scenario {config.name} needs a {spec.tier} tier but its budget is 0; "
                                  f"give it a size (--kv-{spec.tier}-mem-gb / --kv-nvme-capacity-gb).")
            prov.backends.append(registry.create(spec, ctx))
    except BaseException:
        prov.close()
        raise
    return prov


def run_scenario(prov: Provisioned, settings: Settings, model: ModelSpec, trace: Trace,
                 criteria: list[Criterion], on_tick=None) -> ScenarioResult:
    recorder = Recorder()
    cache = MultiTierCache(prov.backends, recorder, model.bytes_per_token)
    storage = [b.tier for b in prov.backends if b.tier not in ("gpu", "cpu")]
    device = DeviceWindow(block_device_for(prov.run_dir)) if storage else None

    def tick(runner, elapsed_s):
        recorder.sample_occupancy({t: o["bytes"] for t, o in cache.occupancy().items()})
        if on_tick is not None:
            on_tick(runner, elapsed_s)

    runner = Runner(cache, trace, recorder, RunConfig(
        duration_s=settings.duration, warmup_s=settings.warmup,
        generation_mode=settings.generation_mode, read_model=settings.read_model,
        chunk_tokens=settings.chunk_tokens, max_inflight=settings.max_inflight,
    ), window_hooks=(device,) if device else (), on_tick=tick)
    run = _Run(prov, settings, model, trace, criteria, recorder, cache, runner, device,
               storage[-1] if storage else None, started=time.time())  # wall clock: the report only
    try:
        runner.run()
    except KeyboardInterrupt as exc:
        raise ScenarioInterrupted(run.result()) from exc
    return run.result()


class ScenarioInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a scenario; carries what was measured up to then."""

    def __init__(self, result: ScenarioResult):
        super().__init__(f"scenario {result.name} interrupted")
        self.result = result


@dataclass
class _Run:
    """The parts of one scenario run, so its result can be built at the end or on Ctrl-C."""

    prov: Provisioned
    settings: Settings
    model: ModelSpec
    trace: Trace
    criteria: list[Criterion]
    recorder: Recorder
    cache: MultiTierCache
    runner: Runner
    device: DeviceWindow | None
    storage_tier: str | None  # the last tier that is a drive, whose bytes the device counters check
    started: float

    def _device_counters(self) -> dict:
        if self.device is None:
            return {"available": False, "reason": "no storage tier in this scenario"}
        counters = self.device.result()
        if counters.get("available"):
            window = self.recorder.window
            app = {kind: sum(window[(self.storage_tier, op)].bytes for op in ops if (self.storage_tier, op) in window)
                   for kind, ops in (("read", ("read", "demote_read")), ("write", ("write", "demote_write")))}
            for kind, nbytes in app.items():
                counters[f"app_{kind}_bytes"] = nbytes
                counters[f"{kind}_ratio"] = round(counters[f"{kind}_bytes"] / nbytes, 4) if nbytes else None
        return counters

    def result(self) -> ScenarioResult:
        prov, recorder, cache, info = self.prov, self.recorder, self.cache, self.runner.info
        problems = [] if info.aborted else cache.check_invariants()
        flat, summary = compute(recorder, prov.tier_names)
        verifier = prov.ctx.verifier
        if verifier is not None:
            flat["verify.mismatches"] = verifier.mismatches
            summary["verify"] = {"blocks_checked": verifier.checked, "mismatches": verifier.mismatches,
                                 "first": list(verifier.first)}
        occupancy = cache.occupancy()
        for tier, occ in occupancy.items():
            summary[f"{tier}_entries"] = occ["entries"]
        # What this load needs: the KV of every open conversation at its peak (the answer to
        # "how much memory do I need"; a tier smaller than this must demote or evict).
        summary["kv_working_set_peak_bytes"] = info.peak_live_tokens * self.model.bytes_per_token
        return ScenarioResult(
            name=prov.config.name, question=prov.config.question, tiers=prov.tier_names,
            metrics=flat, summary=summary, outcomes=evaluate(self.criteria, flat, prov.tier_names),
            invariant_problems=problems, errors=list(info.errors),
            backends=[b.describe() for b in prov.backends], occupancy=occupancy,
            device_counters=self._device_counters(),
            trace={"sha256": self.trace.sha256(), "requests": len(self.trace), "users": len(self.trace.per_user),
                   "requests_started": info.requests_started, "requests_finished": info.requests_finished,
                   "exhausted": info.trace_exhausted},
            run={"aborted": info.aborted, "entries_dropped": cache.dropped, "drain_s": info.drain_s,
                 "started_unix": round(self.started, 3), "finished_unix": round(time.time(), 3),
                 "staging_bytes": prov.ctx.staging.allocated_bytes,
                 "measurement": "bytes counted when an I/O completes; only I/O completing inside the window counts; "
                                "latency = time inside the backend's I/O calls (CUDA events on GPU)"},
            settings=self.settings.to_dict(), model=self.model.to_dict(),
            samples={key: w.latency.seconds() for key, w in recorder.window.items()},
        )
