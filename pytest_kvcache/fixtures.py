"""Fixtures: the session's settings and workload, tier provisioning, and running a scenario.

A scenario test looks like::

    @pytest.mark.parametrize("kv_tiers", ["cpu-only", "storage-only"], indirect=True)
    def test_tiers(kv_tiers, kv_run):
        kv_run(kv_tiers)          # runs, records, and fails the test on a failed criterion
"""

from __future__ import annotations

import warnings

import pytest

from .backends.gpu import gpu_unavailable_reason
from .bench import feed
from .criteria import Criterion, merge
from .engine import ScenarioInterrupted, provision, run_trials
from .errors import BackendError, ConfigError
from .models import resolve_model
from .remote_fixtures import remote_settings
from .result import ScenarioResult
from .session import KVSession
from .settings import validate_changes
from .tiers import TIER_CONFIGS

SESSION_KEY = pytest.StashKey[KVSession]()


def _session(config) -> KVSession:
    try:
        return config.stash[SESSION_KEY]
    except KeyError:
        raise pytest.UsageError("pytest-kvcache is not configured (was the plugin disabled with -p no:kvcache?)") from None


@pytest.fixture(scope="session")
def kv_session(pytestconfig) -> KVSession:
    """The session object: settings, model, backend registry and collected results."""
    return _session(pytestconfig)


@pytest.fixture(scope="session")
def kv_settings(kv_session):
    return kv_session.settings


@pytest.fixture(scope="session")
def kv_model(kv_session):
    return kv_session.model


@pytest.fixture(scope="session")
def kv_workload(kv_session):
    """The seeded request trace (a pure function of the settings)."""
    return kv_session.trace_for(kv_session.settings)


def _marker_values(node, name: str) -> dict:
    """The keyword arguments of every ``name`` marker on ``node``, the closest one winning."""
    values: dict = {}
    for marker in reversed(list(node.iter_markers(name)) if node is not None else []):
        values.update(marker.kwargs)
    return values


def adjusted_settings(config, name: str, node=None):
    """The settings of scenario ``name`` (test item ``node``): the session's, then the
    ``kv_defaults`` marker's values for the options the user did not set (a shorter window,
    say), then the ``kv_settings`` marker's (the scenario's own workload or load, e.g.
    ``workload="rag"``), then every ``pytest_kvcache_adjust_settings`` change.

    Raises ConfigError when a change is not a valid setting or the result is inconsistent.
    """
    settings = _session(config).settings
    where = f"on {node.nodeid}" if node is not None else f"of scenario {name}"
    defaults = _marker_values(node, "kv_defaults")
    unset = {k: v for k, v in defaults.items() if k not in settings.explicit}
    if unset:
        settings = settings.replace(**validate_changes(unset, f"kv_defaults marker {where}"))
    fixed = _marker_values(node, "kv_settings")
    if fixed:
        settings = settings.replace(**validate_changes(fixed, f"kv_settings marker {where}"))
    for changes in config.hook.pytest_kvcache_adjust_settings(settings=settings, scenario=name):
        if changes:
            settings = settings.replace(**validate_changes(changes, "pytest_kvcache_adjust_settings"))
    settings.check_workload()
    return settings


def scenario_settings(config, name: str, node=None):
    """``adjusted_settings``, failing the running test on a bad change."""
    try:
        return adjusted_settings(config, name, node)
    except ConfigError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None  # no chained copy


@pytest.fixture
def kv_tiers(request, kv_session):
    """Provision the tier configuration named by the test's parameter; clean up after it."""
    name = getattr(request, "param", None)
    if name not in TIER_CONFIGS:
        raise pytest.UsageError(f"kv_tiers needs one of {', '.join(TIER_CONFIGS)} as its parameter, got {name!r}")
    config = TIER_CONFIGS[name]
    preset = kv_session.settings.preset
    marker = request.node.get_closest_marker("kv_preset")
    if preset != "none" and (marker is None or preset not in marker.args):
        pytest.skip(f"--kv-preset {preset} runs only its own tests (marked kv_preset({preset!r})), with its fixed settings")
    if "gpu" in config.tiers:
        reason = gpu_unavailable_reason()
        if reason:
            pytest.skip(f"{name}: {reason}")
    settings = remote_settings(request, config, scenario_settings(request.config, name, request.node))
    try:
        prov = provision(config, settings, kv_session.registry)
    except (ConfigError, BackendError) as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None  # no chained copy
    kv_session.open_tiers.append(prov)
    yield prov
    if prov in kv_session.open_tiers:  # after Ctrl-C the session may have closed it already
        kv_session.open_tiers.remove(prov)
    leftovers = prov.close()
    if leftovers:
        warnings.warn(f"kvcache: left {prov.run_dir} in place: it holds files this run did not create: {leftovers[:5]}",
                      stacklevel=1)


class ProgressLine:
    """A live line (elapsed, ops, GB/s, users) on an interactive terminal; quiet under -q or in logs."""

    def __init__(self, config, name: str, duration: float, warmup: float):
        tr = config.pluginmanager.get_plugin("terminalreporter")
        self.tr = tr if tr is not None and tr.isatty and config.get_verbosity() >= 0 else None
        self.capman = config.pluginmanager.get_plugin("capturemanager")
        self.name, self.total = name, warmup + duration
        self.shown = False
        self.failed = False

    def __call__(self, runner, elapsed_s: float) -> None:
        """Redraw the line. A display that fails stops drawing with a warning; it never ends the run."""
        if self.tr is None or self.failed:
            return
        try:
            ops, nbytes, window_s = runner.recorder.progress()  # under the recorder's lock
            gbps = f"{nbytes / window_s / 1e9:.2f} GB/s" if window_s > 0 else "n/a GB/s"
            self._write(f"\r[kvcache] {self.name} {elapsed_s:5.1f}/{self.total:g} s | {ops:,} ops | "
                        f"{gbps} | {runner.active_users()} users ")
            self.shown = True
        except Exception as exc:  # the line is a display: the measurement goes on without it
            self.failed = True
            warnings.warn(f"kvcache: progress line stopped: {type(exc).__name__}: {exc}", stacklevel=1)

    def _write(self, text: str) -> None:
        """To the real terminal, past pytest's capture, never into the test's captured output."""
        if self.capman is None:
            self.tr.write(text, flush=True)
            return
        with self.capman.global_and_fixture_disabled():
            self.tr.write(text, flush=True)

    def clear(self) -> None:
        if self.shown and not self.failed:
            self._write("\r" + " " * 100 + "\r")


def scenario_question(node, tier_question: str) -> str:
    """The question a scenario answers: its test function's docstring (first paragraph), else
    its tier configuration's (``TierConfig.question``); several tests run one configuration."""
    doc = getattr(getattr(node, "function", None), "__doc__", None)
    if not doc or not doc.strip():
        return tier_question
    return " ".join(doc.strip().split("\n\n")[0].split())


@pytest.fixture
def kv_run(request, kv_session):
    """``kv_run(kv_tiers, benchmark=None, check=True) -> ScenarioResult``.

    Runs the workload on the tiers with the scenario's settings (``adjusted_settings``: the
    ``kv_defaults`` and ``kv_settings`` markers, then the hooks), records the result in the
    session report and JUnit properties, replays the headline latencies into pytest-benchmark's
    ``benchmark`` fixture when given, and fails the test when a criterion fails (``check=False``
    leaves that to you).
    """
    config = request.config

    def run(prov, benchmark=None, check: bool = True) -> ScenarioResult:
        settings = remote_settings(request, prov.config, scenario_settings(config, prov.config.name, request.node))
        extra = []
        for marker in request.node.iter_markers("kv_criteria"):
            try:
                extra += [Criterion.parse(text, "marker") for text in marker.args]
            except ConfigError as exc:
                raise pytest.fail.Exception(f"bad kv_criteria marker on {request.node.nodeid}: {exc}", pytrace=False) from None
        try:
            criteria = merge(kv_session.criteria_for(settings), extra)  # a hook may change them
            model = resolve_model(settings.model, settings.models)
            trace = kv_session.trace_for(settings)
        except ConfigError as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None  # no chained copy
        progress = ProgressLine(config, prov.config.name, settings.duration, settings.warmup)
        if kv_session.cluster is not None:  # under mpirun: every rank runs this scenario at once
            kv_session.cluster.begin(request.node.nodeid)
        try:
            result = run_trials(prov, settings, model, trace, criteria, kv_session.registry,
                                on_tick=progress, cluster=kv_session.cluster)
        except ScenarioInterrupted as exc:  # keep what was measured, then let pytest stop
            kv_session.interrupted = True
            exc.result.nodeid = request.node.nodeid
            exc.result.question = scenario_question(request.node, exc.result.question)
            kv_session.add(exc.result)
            raise
        except (ConfigError, BackendError) as exc:  # a later trial's tiers could not be made
            raise pytest.fail.Exception(str(exc), pytrace=False) from None  # no chained copy
        finally:
            progress.clear()
        result.nodeid = request.node.nodeid
        result.question = scenario_question(request.node, result.question)
        for key, value in result.headline().items():
            request.node.user_properties.append((key, value))
        if not kv_session.suite_properties_recorded:
            record = request.getfixturevalue("record_testsuite_property")
            for key, value in kv_session.suite_properties().items():
                record(key, value)
            kv_session.suite_properties_recorded = True
        if benchmark is not None and (kv_session.cluster is None or kv_session.cluster.rank == 0):
            # under mpirun rank 0 replays every rank's samples merged; the others' are not sent back
            feed(benchmark, result)
        kv_session.add(result)
        config.hook.pytest_kvcache_scenario_result(result=result, config=config)
        message = result.failure_message()
        if check and message:
            pytest.fail(message, pytrace=False)
        return result

    return run
