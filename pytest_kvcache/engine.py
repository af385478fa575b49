"""Provision a tier configuration and run one scenario on it, without pytest.

The pytest fixtures call these two functions; so can any script. Provisioning makes the run's
private directory (mode 0700) under the cache dir and the backends; ``Provisioned.close``
removes what the run created there and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .backends import BackendContext, BackendRegistry
from .cache import HIGH_WATER, MultiTierCache
from .compute import make_compute
from .criteria import Criterion
from .devstats import DeviceWindow, compare_with_ours
from .errors import ConfigError
from .fsinfo import find_block_devices
from .iotrace import IOLog, write_io_trace
from .judging import evaluate
from .memory import check_host_memory
from .metrics import compute, headline
from .models import ModelSpec
from .ops import READ_OPS, WRITE_OPS, storage_tier
from .payload import NoiseSource, StagingBuffers, Verifier
from .precondition import Precondition
from .recorder import Recorder
from .result import ScenarioResult
from .rundir import DriveLock, check_cache_dir, make_run_dir
from .runner import RunConfig, Runner
from .scaling import UserScaler
from .settings import GB, Settings
from .tiers import TierConfig, tier_specs
from .trials import HEADLINE_WORST_OF, combine_metrics, summarize
from .workload import Trace

MiB = 1 << 20

IO_SHAPING_SETTINGS = ("chunk_tokens", "read_model", "generation_mode", "io_block_mb", "max_inflight",
                       "request_rate", "queue_depth", "max_concurrent_allocs", "qos_aging", "qos",
                       "gpu_mem_gb", "cpu_mem_gb", "nvme_capacity_gb", "file_io_mode", "file_recycle",
                       "redis_mem_gb", "object_capacity_gb", "object_part_mb",
                       "duration", "warmup", "verify",
                       "autoscale", "autoscale_interval", "autoscale_max_users", "autoscale_target", "sla_metric",
                       "sla_target_ms", "trace_speedup", "eviction", "promotion")
"""Settings besides the trace that change which I/O a scenario does (the workload hash covers them)."""


@functools.lru_cache(maxsize=2)
def _noise(seed: int) -> NoiseSource:
    return NoiseSource(seed)


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
            self.ctx.compute.close()
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
    """Make the scenario's run directory and backends, holding the drive's lock.

    Raises ConfigError (naming the fix) when the cache dir is unusable or the scenario's host
    memory (``memory.host_bytes_needed``) exceeds what the process can have, before anything is
    created; BackendError when a backend cannot be made. Whatever was made is removed then.
    """
    compute_dev = make_compute(settings.compute_device)  # ConfigError for gpu without one; allocates nothing yet
    check_cache_dir(settings.cache_root, allow_memory=settings.allow_memory_fs)
    lock = DriveLock(settings.cache_root)
    try:
        check_host_memory(config.name, config.tiers, settings)  # under the lock: the last scenario has freed its own
        run_dir = make_run_dir(settings.cache_root, settings.allow_memory_fs)
    except BaseException:
        lock.release()
        raise
    noise = _noise(settings.seed)
    block = int(settings.io_block_mb * MiB)
    ctx = BackendContext(noise=noise, staging=StagingBuffers(block, pin=compute_dev.pin), run_dir=run_dir,
                         verifier=Verifier(noise, block) if settings.verify else None, compute=compute_dev)
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
                 criteria: list[Criterion], on_tick=None, sync=None) -> ScenarioResult:
    """One run of the scenario on ``prov``'s tiers, measured and judged. ``sync(stage, extra_s)``
    (``cluster.Cluster.sync``) waits for the other MPI ranks before the warm-up, as the window
    opens and as it ends. Ctrl-C raises ScenarioInterrupted carrying what was measured."""
    recorder = Recorder()
    recorder.io_log = IOLog() if settings.io_trace else None  # --kv-io-trace (iotrace.py)
    cache = MultiTierCache(prov.backends, recorder, model.bytes_per_token,
                           eviction=settings.eviction, promotion=settings.promotion)
    storage = storage_tier(prov.tier_names)
    storage_backend = prov.backends[prov.tier_names.index(storage)] if storage else None
    device = None
    if storage_backend is not None and storage_backend.files_in_run_dir:
        lookup = find_block_devices(prov.run_dir)
        device = DeviceWindow(lookup.devices, reason=lookup.reason, found_by=lookup.found_by)
    elif storage_backend is not None:  # its bytes go elsewhere (a mock, a remote store): the run dir's device is no measure
        device = DeviceWindow(None, reason=getattr(storage_backend, "no_device_reason", None) or (
            f"the {storage} tier's backend ({storage_backend.name}) keeps no files in the run directory"))

    scaler = UserScaler(settings, storage) if settings.autoscale != "off" else None

    def tick(runner, elapsed_s):
        recorder.sample_occupancy({t: o["bytes"] for t, o in cache.occupancy().items()})
        if scaler is not None:
            scaler.tick(runner, elapsed_s)
        if on_tick is not None:
            on_tick(runner, elapsed_s)

    runner = Runner(cache, trace, recorder, RunConfig(
        duration_s=settings.duration, warmup_s=settings.warmup,
        generation_mode=settings.generation_mode, read_model=settings.read_model,
        chunk_tokens=settings.chunk_tokens, max_inflight=settings.max_inflight,
        request_rate=settings.request_rate, queue_depth=settings.queue_depth,
        max_concurrent_allocs=settings.max_concurrent_allocs, qos=settings.qos_classes,
        qos_aging_s=settings.qos_aging, seed=settings.seed,
        start_users=settings.users if scaler is not None else 0, trace_speedup=settings.trace_speedup,
    ), window_hooks=(device,) if device else (), on_tick=tick,
        sync=None if sync is None else (lambda stage: sync(stage, settings.warmup + settings.duration)))
    runner.server.phase = settings.phase  # serve.RequestServer: mixed, prefill or decode
    run = _Run(prov, settings, model, trace, criteria, recorder, cache, runner, device,
               storage, started=time.time(), scaler=scaler)  # wall clock: the report only
    # The trace hash covers every request (users x requests per user), generated as far as
    # the run reads them: take it before the run, so neither the first I/O nor the end of the
    # window waits for it (about 60 us a request on the 2-core VM; cached on the trace)
    t = time.perf_counter()
    trace.sha256()
    run.trace_hash_s = round(time.perf_counter() - t, 3)
    pre = None
    try:
        if settings.precondition_gb > 0 and (storage_backend is None or not storage_backend.files_in_run_dir):
            run.precondition = {"skipped": f"scenario {prov.config.name} has no tier that keeps files on a drive"}
        elif settings.precondition_gb > 0:  # before the runner: outside every window
            pre = Precondition(settings.cache_root, int(settings.precondition_gb * GB), storage_backend.capacity_bytes)
            run.precondition = pre.info
            try:
                pre.fill()
            except OSError as exc:
                raise ConfigError(f"--kv-precondition-gb: writing the fill in {pre.dir} failed: {exc}; lower "
                                  "--kv-precondition-gb or free space on the drive.") from None
        runner.run()
        if recorder.io_log is not None:  # after the run: writing never competes with the measured I/O
            run.io_trace = write_io_trace(recorder.io_log, settings.io_trace, prov.config.name,
                                          recorder.window_start_ns, recorder.window_end_ns)
    except KeyboardInterrupt as exc:
        raise ScenarioInterrupted(run.result()) from exc
    finally:
        if pre is not None:
            pre.remove()
    return run.result()


def run_trials(prov: Provisioned, settings: Settings, model: ModelSpec, trace: Trace, criteria: list[Criterion],
               registry: BackendRegistry, on_tick=None, cluster=None) -> ScenarioResult:
    """``settings.trials`` runs of the scenario (``run_scenario``), the first on ``prov``, each
    later one on tiers provisioned afresh (``prov`` is closed first: one run holds a drive at a
    time), all with the same settings, seed and trace; their result combined (``combine_trials``).
    One trial is ``run_scenario`` itself. Ctrl-C raises ScenarioInterrupted carrying the trials
    measured so far, combined.

    Under MPI (``cluster``, a ``cluster.Cluster``) every trial runs on all ranks at once and its
    result is the ranks' aggregate (``Cluster.combine``): summed within the trial, then
    combined over the trials as one rank's would be (the rules' "summed across ranks, then
    averaged across trials")."""

    def one(current: Provisioned) -> ScenarioResult:
        if cluster is None:
            return run_scenario(current, settings, model, trace, criteria, on_tick)
        return cluster.combine(run_scenario(current, settings, model, trace, criteria, on_tick, cluster.sync), criteria)

    if settings.trials <= 1:
        return one(prov)
    results: list[ScenarioResult] = []
    for i in range(settings.trials):
        current = prov
        if i:
            prov.close()  # idempotent: the fixture closing it again later is a no-op
            current = provision(prov.config, settings, registry)
        try:
            results.append(one(current))
        except ScenarioInterrupted as exc:
            raise ScenarioInterrupted(combine_trials(results + [exc.result], criteria, settings.seed)) from exc
        finally:
            if current is not prov:
                current.close()
    return combine_trials(results, criteria, settings.seed)


def combine_trials(results: list[ScenarioResult], criteria: list[Criterion], seed: int) -> ScenarioResult:
    """One result for several trials of a scenario: the metrics criteria gate on combined by
    ``trials.METRICS_RULE`` (means; fault counters the worst trial's), the headline figures the
    means, ``summary.trials`` (per-trial headline, mean, stdev, ci95, cv), every trial's errors
    and invariant problems; the other sections are the last trial's."""
    last = results[-1]
    if len(results) == 1:
        return last
    metrics = combine_metrics([r.metrics for r in results])
    summary = dict(last.summary)
    trials = summarize([r.summary.get("headline", {}) for r in results], seed, [r.metrics for r in results], last.tiers)
    summary["trials"] = trials
    samples: dict = {}
    for r in results:
        for key, values in r.samples.items():
            samples.setdefault(key, []).extend(values)
    absent: dict = {}  # a metric n/a in any trial is n/a combined: with that trial's reason
    for r in results:
        for key, reason in r.absent.items():
            absent.setdefault(key, reason)
    result = replace(
        last, metrics=metrics, summary=summary, samples=samples, absent=absent,
        outcomes=evaluate(criteria, metrics, last.tiers, absent),
        errors=[f"trial {i}: {e}" for i, r in enumerate(results, 1) for e in r.errors],
        invariant_problems=[f"trial {i}: {p}" for i, r in enumerate(results, 1) for p in r.invariant_problems],
        run={**last.run, "aborted": any(r.run.get("aborted") for r in results),
             "trials": [{"trial": i, **r.run} for i, r in enumerate(results, 1)]},
    )
    figures = trials["figures"]
    summary["headline"] = {k: (max(figures[k]["values"]) if k in HEADLINE_WORST_OF and k in figures else
                               figures[k]["mean"] if k in figures else v) for k, v in last.summary["headline"].items()}
    summary["headline"]["status"] = result.status
    return result


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
    trace_hash_s: float | None = None  # seconds hashing the trace before the run (0 when cached)
    scaler: UserScaler | None = None  # --kv-autoscale: the user pool's steps
    precondition: dict | None = None  # --kv-precondition-gb: the fill before the window (precondition.py)
    io_trace: dict | None = None  # --kv-io-trace: the file written after the run (iotrace.py)

    def _device_counters(self) -> tuple[dict, dict[str, float]]:
        """The device counters over the window beside our storage-tier bytes, and the ratios
        large enough to judge as flat metrics (``device.read_ratio``, ``device.write_ratio``)."""
        if self.device is None:
            return {"available": False, "reason": "no storage tier in this scenario"}, {}
        counters = self.device.result()
        if not counters.get("available"):
            return counters, {}
        window = self.recorder.window
        ours, edge = {}, {}
        for kind, ops in (("read", READ_OPS), ("write", WRITE_OPS)):
            totals = [window[(self.storage_tier, op)] for op in ops if (self.storage_tier, op) in window]
            ours[kind] = sum(w.bytes for w in totals)
            edge[kind] = sum(w.edge_bytes for w in totals)
        # judge a direction only when our bytes dwarf those in flight at the window's edges,
        # which the device counters may or may not have seen
        return counters, compare_with_ours(counters, ours, edge_bytes=edge)

    def result(self) -> ScenarioResult:
        prov, recorder, cache, info = self.prov, self.recorder, self.cache, self.runner.info
        problems = [] if info.aborted else cache.check_invariants()
        flat, summary = compute(recorder, prov.tier_names, self.settings.qos_classes,
                                open_loop=self.runner.open_loop)
        verifier = prov.ctx.verifier
        if verifier is not None:
            flat["verify.mismatches"] = verifier.mismatches
            summary["verify"] = {"blocks_checked": verifier.checked, "mismatches": verifier.mismatches,
                                 "first": list(verifier.first)}
        device_counters, ratios = self._device_counters()
        flat.update(ratios)
        backends = [b.describe() for b in prov.backends]
        if self.storage_tier is not None and not self._network_storage():  # storage tiers whose files are in RAM: never a drive
            flat["storage.memory_tiers"] = sum(b.get("medium") == "memory" for b in backends)
        occupancy = cache.occupancy()
        for tier, occ in occupancy.items():
            summary[f"{tier}_entries"] = occ["entries"]
        # What this load needs: the KV of every open conversation at its peak (the answer to
        # "how much memory do I need"; a tier smaller than this must demote or evict).
        summary["kv_working_set_peak_bytes"] = info.peak_live_tokens * self.model.bytes_per_token
        flat["cache.entries_dropped"] = cache.dropped
        if self.scaler is not None:
            summary["sla_search" if self.scaler.mode == "sla-search" else "autoscale"] = self.scaler.summary()
            flat.update({k: v for k, v in self.scaler.metrics().items() if v is not None})
        summary["entries_dropped"] = self._dropped()
        summary["compute"] = prov.ctx.compute.describe()  # where loads end; which legs the figures include
        absent = {**prov.ctx.compute.absent(prov.backends), **self._absent(device_counters)}
        outcomes = evaluate(self.criteria, flat, prov.tier_names, absent)
        result = ScenarioResult(
            name=prov.config.name, question=prov.config.question, tiers=prov.tier_names,
            metrics=flat, summary=summary, outcomes=outcomes,
            invariant_problems=problems, errors=list(info.errors),
            backends=backends, occupancy=occupancy,
            device_counters=device_counters,
            trace=self._trace_identity(),
            run={"aborted": info.aborted, "entries_dropped": cache.dropped, "drain_s": info.drain_s,
                 "trace_hash_s": self.trace_hash_s, "phase": self.settings.phase, "io_trace": self.io_trace,
                 "decode_populate": self.runner.server.populated, "precondition": self.precondition,
                 "workers": info.workers, "peak_in_service": info.peak_in_service,
                 "peak_waiting": info.peak_waiting, "requests_unserved": info.requests_unserved,
                 "started_unix": round(self.started, 3), "finished_unix": round(time.time(), 3),
                 "staging_bytes": prov.ctx.staging.allocated_bytes,
                 "measurement": "bytes counted as each transfer of an I/O completes inside the window (transfers in "
                                "flight at its edges are the uncertainty, summary.window_edge_bytes); an I/O's count "
                                "and latency when it completes inside the window; latency = time inside the backend's "
                                "I/O calls (CUDA events on GPU); deletes and evictions move no bytes"},
            settings=self.settings.to_dict(), model=self.model.to_dict(),
            samples={key: w.latency.seconds() for key, w in recorder.window.items()},
            absent=absent,
        )
        summary["headline"] = headline(summary, prov.tier_names, result.status,
                                       {"entries_dropped": cache.dropped})
        return result

    def _dropped(self) -> dict:
        """Entries the cache could not store, and the budget that would have held the largest."""
        cache = self.cache
        out = {"count": cache.dropped, "too_big": cache.dropped_too_big,
               "no_room": cache.dropped - cache.dropped_too_big, "largest_bytes": cache.dropped_largest or None,
               "fix": None}
        if cache.dropped:
            last = self.prov.tier_names[-1]
            flag = {"gpu": "--kv-gpu-mem-gb", "cpu": "--kv-cpu-mem-gb"}.get(last, "--kv-nvme-capacity-gb")
            need = cache.dropped_largest / HIGH_WATER / 1e9
            out["fix"] = (f"{cache.dropped} entries were not stored ({cache.dropped_too_big} larger than every tier's "
                          f"high-water mark of {HIGH_WATER:.0%} of its budget; the largest {cache.dropped_largest / 1e6:,.1f} MB): "
                          f"raise {flag} to at least {need:.3g} GB (or lower --kv-chunk-tokens), or accept them "
                          "with --kv-threshold 'cache.entries_dropped<=N'")
        return out

    def _network_storage(self) -> str | None:
        """Where the storage tier is when it is a network store (redis, S3), else None."""
        if self.storage_tier is None:
            return None
        backend = self.prov.backends[self.prov.tier_names.index(self.storage_tier)]
        return getattr(backend, "location", None) if getattr(backend, "medium", None) == "network" else None

    def _absent(self, device_counters: dict) -> dict:
        """Features this scenario does not have -> why their metrics are n/a (judging.evaluate)."""
        absent = {}
        network = self._network_storage()
        if network:
            absent["storage.memory_tiers"] = (f"the {self.storage_tier} tier is {network}: a network store, not a "
                                              "file system that could be memory posing as a drive")
        kinds = self.trace.lookup_kinds()
        for kind, why in (("prefix", "this workload has no shared prefix (no system prompt, prefix pool or user context)"),
                          ("rag", "this workload has no RAG documents"),
                          ("multi_turn", "this workload has no later turns of a conversation")):
            if kind not in kinds:
                absent[f"cache.hit_rate.{kind}"] = absent[f"cache.block_hit_rate.{kind}"] = why
        if "rag" not in kinds:
            absent["retrieval."] = "this workload has no RAG queries"
        if not kinds:  # e.g. a BurstGPT trace: token counts only, every prompt private
            why = "no prompt of this workload shares anything a cache could hold (no prefix, documents or later turns)"
            absent["cache.hit_rate"] = why
            for tier in self.prov.tier_names if self.settings.read_model != "reference" else ():
                absent[f"{tier}.read."] = why
        for kind in ("read", "write") if self.storage_tier else ():  # no counters, or too few bytes
            why = device_counters.get(f"{kind}_ratio_reason") or (
                None if device_counters.get("available") else f"no device counters: {device_counters.get('reason')}")
            if why:
                absent[f"device.{kind}_ratio"] = why
        if self.settings.read_model != "reference":
            absent["cache.hit_rate.decode"] = "decode re-reads happen only with --kv-read-model reference"
        if self.settings.promotion == "none":
            absent[f"{self.prov.tier_names[0]}.promote_write."] = "--kv-promotion none: hits are not copied up"
        if self.settings.phase == "decode":  # serve.py: a decode node stores nothing in the window
            for tier in self.prov.tier_names:
                absent[f"{tier}.write."] = ("--kv-phase decode stores nothing during the window (the prompts were "
                                            "stored before it)")
        elif self.settings.phase == "prefill":  # a prefill node never looks up or loads
            why = "--kv-phase prefill never looks up or loads KV"
            for tier in self.prov.tier_names:
                absent[f"{tier}.read."] = why
            absent["cache.hit_rate"] = absent["cache.hit_rate."] = absent["cache.block_hit_rate."] = why
            absent["cache.tier_hit_rate."] = why
        if self.prov.ctx.verifier is None:
            absent["verify."] = "--kv-verify is off"
        mode = self.settings.autoscale
        if mode in ("off", "sla-search"):
            absent["autoscale."] = "this scenario does not autoscale its users (--kv-autoscale qos or capacity)"
        if mode != "sla-search":
            absent["sla_search."] = "this scenario runs no SLA search (--kv-autoscale sla-search)"
        if self.scaler is not None:
            for key, value in self.scaler.metrics().items():
                if value is None:
                    absent[key] = f"the {mode} scaler found no figure: {self.scaler.summary()['stopped']}"
        if not self.runner.open_loop:
            absent["requests.rejected"] = ("closed-loop users are never rejected; set --kv-request-rate for open-loop "
                                           "arrivals into a bounded queue")
        offered = self.runner.queue.counts()["offered"]  # the whole run, warm-up included
        for name in self.settings.qos_classes:
            if not offered.get(name):
                absent[f"qos.{name}."] = f"no {name} request was sent in this run (the workload's class mix has none)"
        return absent

    def _trace_identity(self) -> dict:
        """What identifies the workload this scenario ran, and exactly what each hash covers."""
        info, trace = self.runner.info, self.trace
        shaping = {k: self.settings.to_dict()[k] for k in IO_SHAPING_SETTINGS}
        workload = {"trace_sha256": trace.sha256(), "scenario": self.prov.config.name,
                    "tiers": self.prov.tier_names, "model": self.model.to_dict(), "settings": shaping}
        return {
            "sha256": trace.sha256(),
            "covers": "the request list: the documents stored before the window (RAG), then every user's requests "
                      "in order (conversation, turn, persona, QoS class, prompt segments, context and generated "
                      "tokens, think time), as canonical JSON lines; the whole list, not only the requests "
                      "replayed (taken before the run: run.trace_hash_s)",
            "workload_sha256": hashlib.sha256(json.dumps(workload, sort_keys=True, default=str).encode()).hexdigest(),
            "workload_covers": "the trace hash, the scenario's tiers, the model and the settings that shape its I/O "
                               "(with request_rate, the open-loop arrival schedule, a pure function of the seed, "
                               "the rate and the warm-up + duration): " + ", ".join(IO_SHAPING_SETTINGS),
            "requests": len(trace), "users": len(trace.per_user),
            "requests_started": info.requests_started, "requests_finished": info.requests_finished,
            "replayed": ("the whole trace" if info.trace_exhausted else
                         "the requests whose timestamps came before the window closed" if self.runner.timed else
                         "a prefix of each user's list: closed-loop users stop when the window closes"),
            "exhausted": info.trace_exhausted,
            "source": getattr(trace, "source", None),  # --kv-trace: the file replayed (workload/replay.py)
        }
