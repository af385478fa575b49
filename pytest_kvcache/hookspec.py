"""Hooks pytest-kvcache adds; implement them in a conftest.py or an installed plugin."""

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_kvcache_register_backends(registry):
    """Add tier backends: ``registry.register("mydrive", factory)``.

    ``factory(spec: TierSpec, ctx: BackendContext) -> Backend``. Select it for the nvme tier
    with ``--kv-nvme-backend mydrive``.
    """


@hookspec
def pytest_kvcache_adjust_settings(settings, scenario):
    """Return a dict of setting changes for one scenario (``scenario`` is its name), or None."""


@hookspec
def pytest_kvcache_scenario_result(result, config):
    """Receive each finished ``ScenarioResult`` (exporters, dashboards)."""
