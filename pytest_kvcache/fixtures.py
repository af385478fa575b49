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
from .criteria import Criterion, merge
from .engine import ScenarioInterrupted, provision, run_scenario
from .errors import ConfigError
from .result import ScenarioResult
from .session import KVSession
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


def scenario_settings(config, name: str):
    """The session settings with every ``pytest_kvcache_adjust_settings`` change applied."""
    session = _session(config)
    settings = session.settings
    for changes in config.hook.pytest_kvcache_adjust_settings(settings=settings, scenario=name):
        if changes:
            settings = settings.replace(**changes)
    return settings


@pytest.fixture
def kv_tiers(request, kv_session):
    """Provision the tier configuration named by the test's parameter; clean up after it."""
    name = getattr(request, "param", None)
    if name not in TIER_CONFIGS:
        raise pytest.UsageError(f"kv_tiers needs one of {', '.join(TIER_CONFIGS)} as its parameter, got {name!r}")
    config = TIER_CONFIGS[name]
    if "gpu" in config.tiers:
        reason = gpu_unavailable_reason()
        if reason:
            pytest.skip(f"{name}: {reason}")
    try:
        prov = provision(config, scenario_settings(request.config, name), kv_session.registry)
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    kv_session.open_tiers.append(prov)
    yield prov
    if prov in kv_session.open_tiers:  # after Ctrl-C the session may have closed it already
        kv_session.open_tiers.remove(prov)
    leftovers = prov.close()
    if leftovers:
        warnings.warn(f"kvcache: left {prov.run_dir} in place: it holds files this run did not create: {leftovers[:5]}",
                      stacklevel=1)


@pytest.fixture
def kv_run(request, kv_session):
    """``kv_run(kv_tiers, check=True) -> ScenarioResult``: run the workload on the tiers."""
    config = request.config

    def run(prov, check: bool = True) -> ScenarioResult:
        settings = scenario_settings(config, prov.config.name)
        extra = []
        for marker in request.node.iter_markers("kv_criteria"):
            try:
                extra += [Criterion.parse(text, "marker") for text in marker.args]
            except ConfigError as exc:
                pytest.fail(f"bad kv_criteria marker on {request.node.nodeid}: {exc}", pytrace=False)
        criteria = merge(kv_session.criteria, extra)
        try:
            result = run_scenario(prov, settings, kv_session.model, kv_session.trace_for(settings), criteria)
        except ScenarioInterrupted as exc:  # keep what was measured, then let pytest stop
            kv_session.interrupted = True
            exc.result.nodeid = request.node.nodeid
            kv_session.add(exc.result)
            raise
        result.nodeid = request.node.nodeid
        for key, value in result.headline().items():
            request.node.user_properties.append((key, value))
        kv_session.add(result)
        config.hook.pytest_kvcache_scenario_result(result=result, config=config)
        message = result.failure_message()
        if check and message:
            pytest.fail(message, pytrace=False)
        return result

    return run
