"""MLPerf Storage CLOSED options: what does this drive score on the rules' three fixed workloads?

Runs only with ``--kv-preset mlperf-closed`` (skipped otherwise), which fixes every setting of
the options (``pytest_kvcache.mlperf``: Option 1 llama3.1-8b, 200 users, no CPU tier, 16
concurrent allocations; Option 2 llama3.1-8b, 100 users, 4 GB CPU tier, 16; Option 3
llama3.1-70b-instruct, 70 users, no CPU tier, 4; all without a GPU tier, generation none, a
300 s window, seed 42, 3 trials on fresh tiers, 90 s between options) and refuses any other
option but where the cache and the results go. ``--kv-smoke`` runs the same shape in seconds
(tiny-1b, a few users, 2 s windows, 2 trials): a check that it runs, not a result.

Each option's test reports its trials (``summary.trials`` in the JSON); ``test_mlperf_scores``
prints the options side by side as the rules score them: read and write GB/s and storage
tokens/s averaged across trials, and the storage tier's read / write p95 (mean of the trials'),
each with a 95% confidence interval over the trials.

The full form (about 20 minutes: 3 options x 3 trials x (300 s + the drain), 2 pauses of 90 s)::

    pytest scenarios/test_mlperf.py --kv-preset mlperf-closed --kv-cache-dir=/mnt/nvme/kv --kv-report=mlperf.json
"""

import time

import pytest

from pytest_kvcache import mlperf

_scores: dict[str, dict] = {}
_last_end: list[float] = []


@pytest.fixture(autouse=True)
def mlperf_option(request, kv_settings):
    """Skip without the preset; else set this option's settings (before its tiers are made) and
    hold the rules' pause after the option before."""
    if kv_settings.preset != mlperf.PRESET:
        pytest.skip(f"the MLPerf CLOSED options run only with --kv-preset {mlperf.PRESET} (add --kv-smoke for a "
                    "seconds-long check of the same shape)")
    option = getattr(getattr(request.node, "callspec", None), "params", {}).get("option")
    if option is None:  # test_mlperf_scores
        yield None
        return
    tiers, changes = mlperf.option_settings(option, kv_settings.smoke)
    assert request.node.callspec.params["kv_tiers"] == tiers
    request.node.add_marker(pytest.mark.kv_settings(**changes))
    if _last_end:
        time.sleep(max(0.0, mlperf.pause_s(kv_settings.smoke) - (time.monotonic() - _last_end[-1])))
    yield option
    _last_end.append(time.monotonic())


@pytest.mark.kv_preset(mlperf.PRESET)
@pytest.mark.parametrize(("option", "kv_tiers"),
                         [pytest.param(o, tiers, id=o) for o, (tiers, _) in mlperf.OPTIONS.items()],
                         indirect=["kv_tiers"])
def test_mlperf(mlperf_option, option, kv_tiers, kv_run):
    """MLPerf Storage CLOSED: what does this option score on the drive (read/write GB/s, storage tokens/s, p95), trial mean and 95% CI?"""
    result = kv_run(kv_tiers, check=False)
    _scores[option] = mlperf.score(option, result)
    result.summary["mlperf"] = _scores[option]
    message = result.failure_message()
    if message:
        pytest.fail(message, pytrace=False)


def test_mlperf_scores(kv_settings, record_property):
    """The options side by side, as the rules score them."""
    if kv_settings.preset != mlperf.PRESET:
        pytest.skip(f"needs --kv-preset {mlperf.PRESET}")
    if not _scores:
        pytest.skip("no MLPerf option ran in this session")
    rows = mlperf.table([_scores[o] for o in mlperf.OPTIONS if o in _scores])
    print(rows)
    record_property("mlperf_closed", rows)
    for s in _scores.values():
        assert s["read_gbps"]["mean"] is not None or s["write_gbps"]["mean"] is not None, s
