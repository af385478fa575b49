"""Multi-client runs on MPI: one client per rank, as the MLPerf Storage rules scale out (design
section 10). ``mpirun -n N pytest scenarios/ ...`` runs the same scenarios on every rank.

- Detection: only a process that ``mpirun`` (Open MPI) or a PMI launcher (MPICH's hydra)
  started is a rank (``launched_under_mpi``); a plain run never imports mpi4py.
- Streams: every rank has the same root seed; rank 0 runs it as is (a 1-rank run is a plain
  run) and rank r > 0 runs ``rng.derive_seed(root, "mpi.rank<r>")`` (``rank_seed``), so its
  users, payload bytes and arrivals are its own.
- Directories: each rank works in ``<cache dir>/rank_<r>`` (``rank_dir``), its own drive lock.
- Barriers (``Cluster.sync``) before the warm-up, at the window's opening and at its end, so
  the ranks' windows coincide; then ``Cluster.combine`` gathers the ranks' results on rank 0,
  which aggregates and judges them (``aggregate.aggregate``) and sends the aggregate back, so
  every rank's verdict, and pytest's exit code, is the same.

A rank that does not arrive within ``--kv-mpi-timeout`` seconds (plus the scenario's warm-up
and window), or arrives at another scenario or stage, ends the whole job (``MPI_Abort``) with a
message naming both: MPI collectives cannot be cancelled, so waiting on would hang for ever.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .aggregate import aggregate
from .errors import ConfigError
from .result import ScenarioResult
from .rng import derive_seed

MPI_SIZE_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
"""Environment variables a rank's launcher sets: Open MPI's mpirun, and PMI (MPICH's hydra)."""


def launched_under_mpi(env: Mapping[str, str] | None = None) -> bool:
    """True when this process is a rank that an MPI launcher started (``MPI_SIZE_ENV``)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in MPI_SIZE_ENV)


def rank_seed(root: int, rank: int) -> int:
    """The root seed of rank ``rank``'s streams: rank 0 keeps ``root``; rank r > 0 gets
    ``derive_seed(root, "mpi.rank<r>")`` (63-bit, from SHA-256), so ranks draw different users."""
    return root if rank == 0 else derive_seed(root, f"mpi.rank{rank}")


def rank_dir(cache_root: Path, rank: int) -> Path:
    """Rank ``rank``'s own directory under the cache dir: ``<cache_root>/rank_<rank>``."""
    return Path(cache_root) / f"rank_{rank}"


class Cluster:
    """This rank in an MPI job: barriers with a time limit, and the gather, aggregate, judge
    and broadcast of each scenario's result.

    ``comm`` is an mpi4py communicator (``MPI.COMM_WORLD``); ``timeout_s`` the longest a rank
    waits at a barrier besides the scenario's own warm-up and window.
    """

    def __init__(self, comm, timeout_s: float, root_seed: int):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.timeout_s = timeout_s
        self.root_seed = root_seed
        self.host = platform.node()
        self.hosts: list[str] = comm.allgather(self.host)
        self.scenario = ""  # what the ranks are running now (the test's node id): checked at each barrier
        self.waits: list[dict] = []  # the last scenario's barriers: seconds this rank waited at each
        # before_abort(message): says why where the user sees it and removes this rank's run
        # files (the plugin's; MPI_Abort ends the process without any cleanup)
        self.before_abort = None

    def describe(self) -> dict:
        """The report's ``cluster`` block: ranks, hosts, seeds and directories."""
        return {"ranks": self.size, "hosts": self.hosts, "root_seed": self.root_seed,
                "rank_seeds": [rank_seed(self.root_seed, r) for r in range(self.size)],
                "seed_rule": "rank 0 runs the root seed; rank r > 0 runs derive_seed(root, 'mpi.rank<r>')",
                "rank_dirs": "<cache dir>/rank_<r> per rank"}

    def begin(self, scenario: str) -> None:
        """Name the scenario the next barriers belong to (every rank must run the same one)."""
        self.scenario = scenario
        self.waits = []

    def sync(self, stage: str, extra_s: float = 0.0) -> None:
        """Wait until every rank reaches ``stage`` of the current scenario (a non-blocking
        barrier polled every 0.5 ms, so the ranks leave it together); then check they are at
        the same scenario and stage. A rank late by more than ``timeout_s + extra_s``, or at
        another stage, ends the job (``abort``) with both named."""
        t0 = time.monotonic()
        request = self.comm.Ibarrier()
        limit = t0 + self.timeout_s + extra_s
        while not request.Test():
            if time.monotonic() > limit:
                self.abort(f"kvcache MPI rank {self.rank}: the other ranks did not reach '{stage}' of "
                           f"{self.scenario or 'the session'} within {self.timeout_s + extra_s:g} s (--kv-mpi-timeout "
                           f"{self.timeout_s:g} plus the scenario's warm-up and window). A rank failed or skipped a "
                           "scenario the others ran (see its output above); every rank must run the same scenarios.")
            time.sleep(0.0005)
        self.waits.append({"stage": stage, "wait_s": round(time.monotonic() - t0, 4)})
        where = self.comm.allgather((self.scenario, stage))
        if any(w != where[0] for w in where):
            self.abort(f"kvcache MPI rank {self.rank}: the ranks are out of step: " +
                       "; ".join(f"rank {r} at '{s}' of {n or 'the session'}" for r, (n, s) in enumerate(where)) +
                       ". Every rank must run the same scenarios with the same options (a rank that failed or "
                       "skipped a scenario runs ahead).", together=True)

    def finish(self) -> None:
        """At the end of the session: wait for every rank (``mpirun`` ends the job when the
        first rank exits with an error, which could cut rank 0's report short), then finalize
        MPI here rather than in interpreter teardown, where daemon threads may still run."""
        self.begin("the end of the session")
        self.sync("exit")
        from mpi4py import MPI

        if not MPI.Is_finalized():
            MPI.Finalize()

    def abort(self, message: str, together: bool = False) -> None:
        """Say why (``before_abort``, else stderr) and end every rank of the job (MPI_Abort,
        exit code 1). ``together``: every rank is aborting now (it saw the same thing), so each
        waits up to 10 s for the others' cleanup, which the first MPI_Abort would cut short."""
        try:
            if self.before_abort is None:
                raise RuntimeError("no before_abort")
            self.before_abort(message)
        except Exception:
            print(message, file=sys.stderr, flush=True)
        if together:
            request, limit = self.comm.Ibarrier(), time.monotonic() + 10
            while not request.Test() and time.monotonic() < limit:
                time.sleep(0.01)
        self.comm.Abort(1)

    def combine(self, result: ScenarioResult, criteria) -> ScenarioResult:
        """Every rank's ``result`` of the scenario just run, aggregated and judged on rank 0
        (``aggregate.aggregate``) and sent to every rank, so all return the same verdict.
        Rank 0's return keeps the merged latency samples; the others' have none."""
        self.sync("result")
        payload = {"rank": self.rank, "host": self.host, "result": result.to_dict(), "absent": dict(result.absent),
                   "samples": {f"{t}.{o}": np.asarray(v, dtype=np.float64) for (t, o), v in result.samples.items()},
                   "waits": list(self.waits)}
        self.waits = []  # the next trial's barriers start afresh
        gathered = self.comm.gather(payload, root=0)
        combined = message = None
        if self.rank == 0:
            try:
                combined, absent = aggregate(gathered, criteria)
                combined.summary["cluster"]["barrier_waits_s"] = [{"rank": p["rank"], "waits": p["waits"]} for p in gathered]
                message = {"result": combined.to_dict(), "absent": absent}
            except Exception as exc:  # every rank must leave the broadcast, so the failure goes with it
                message = {"error": f"{type(exc).__name__}: {exc}"}
        message = self.comm.bcast(message, root=0)
        if "error" in message:
            raise RuntimeError(f"kvcache MPI: aggregating the ranks' results of {self.scenario} failed on rank 0: "
                               f"{message['error']}")
        if combined is not None:
            return combined
        out = ScenarioResult.from_dict(message["result"])
        out.absent = message["absent"]
        return out


def connect(timeout_s: float, root_seed: int) -> Cluster:
    """This process's ``Cluster`` (imports mpi4py, which initializes MPI). Raises ConfigError,
    naming the fix, when mpi4py is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(f"this pytest was started by an MPI launcher (mpirun sets {' or '.join(MPI_SIZE_ENV)}) but "
                          f"mpi4py cannot be imported ({exc}); install it with pip install 'pytest-kvcache[mpi]' (it "
                          "needs an MPI library such as Open MPI: apt-get install openmpi-bin), or run pytest "
                          "without mpirun.") from None
    return Cluster(MPI.COMM_WORLD, timeout_s, root_seed)
