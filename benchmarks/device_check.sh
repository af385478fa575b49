#!/usr/bin/env bash
# Issue 14's device check: the GPU paths on real hardware, in ONE run of about 8 minutes.
#
# Two steps:
#   1. HERE (a machine with PyPI), once, from the repository root:
#        bash benchmarks/device_check.sh --fetch-wheels
#      downloads kvikio's wheels for the device (Python 3.12, CUDA 13: kvikio-cu13,
#      libkvikio-cu13, rapids-logger; about 4 MB) into .whl/ and ignores that folder in git.
#      The device has torch, cupy-cuda13x, nvidia-cufile, cuda-pathfinder, pytest,
#      pytest-benchmark, pytest-xdist, numpy, pyyaml and tabulate already, and reaches no
#      registry.
#   2. On the lent device (the `device` tool's run), with .whl carried:
#        run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=600)
#      Everything it measures is written under $OUT (at most 8 files, as the tool allows):
#        env.txt               nvidia-smi, python, torch, kvikio and its compat mode
#        log.txt               the whole output of every step
#        scenarios.json        scenarios/test_tiers.py (the six tier scenarios, GPU ones included)
#        scenarios_rest.json   the other scenarios of scenarios/, at their own settings
#        scenarios_gds.json    storage-only and gpu+cpu+storage with --kv-nvme-backend gds
#        bench_gpu_copy.json   GPUBackend vs raw pinned copy_, 8 users (the 0.9x goal)
#        bench_gpu_copy_verify.json   the same with --verify (bytes checked), 1 user
#        bench_gds.json        gds vs bounce buffer (O_DIRECT into pinned staging + H2D)
#
# The project pins torch==2.13.0 (the gpu extra), but the device reaches no registry: the
# project is installed with --no-deps over the image's CUDA build of torch (2.11.0+cu130 when
# last seen), and env.txt records which torch ran. Each step has its own time limit, cut to
# what is left of a 560 s budget (BUDGET_S), most important first; a failed step does not stop
# the next, and each step's JSON is copied to $OUT as soon as it ends.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    set -e
    mkdir -p .whl
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        kvikio-cu13==26.10.0 libkvikio-cu13==26.10.0 rapids-logger==0.3.0
    ls -la .whl
    exit 0
fi

OUT="${OUT:?run this on the device machine, where \$OUT is set (or set OUT=some/dir to try it elsewhere)}"
LOG="$OUT/log.txt"
W=/tmp/kvcheck  # reports are written here (each with a CSV beside it); only their JSON goes to $OUT
rm -rf "$W" && mkdir -p "$W"
export PYTHONUNBUFFERED=1
PY="${PY:-python3}"  # the image's python3 holds its CUDA torch
BUDGET_S="${BUDGET_S:-560}"  # the whole script, inside the tool's 600 s limit
DEADLINE=$((SECONDS + BUDGET_S))
step() {  # step SECONDS NAME COMMAND...: run with a time limit (never past the budget), log it,
          # bring its JSON to $OUT at once (a run killed later keeps it), never stop the script
    local limit=$1 name=$2 left=$((DEADLINE - SECONDS))
    shift 2
    if [ "$left" -lt 15 ]; then
        echo "=== $name: SKIPPED, the ${BUDGET_S}s budget is spent" | tee -a "$LOG"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s) $(date +%T)" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
    cp "$W"/*.json "$OUT"/ 2>/dev/null  # the CSVs beside the reports stay behind (8 files at most)
}

{
    nvidia-smi 2>&1 | head -20
    $PY -V
    $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} > "$OUT/env.txt" 2>&1

# kvikio from the carried wheels, then the project over the image's packages
if ls .whl/*.whl >/dev/null 2>&1; then
    step 40 "install kvikio wheels" $PY -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
else
    echo "no .whl/ carried: the gds steps will say kvikio is missing" | tee -a "$LOG"
fi
step 60 "install pytest-kvcache" $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
PLUGIN=""
if ! (cd /tmp && $PY -c 'import importlib.metadata as m; assert any(e.value == "pytest_kvcache.plugin" for e in m.entry_points(group="pytest11"))' 2>/dev/null); then
    echo "the install failed: running from the checkout (PYTHONPATH, -p pytest_kvcache.plugin)" | tee -a "$LOG"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    PLUGIN="-p pytest_kvcache.plugin"
fi
$PY - >> "$OUT/env.txt" 2>&1 <<'EOF'
try:
    import kvikio, kvikio.defaults
    print("kvikio", kvikio.__version__, "compat_mode", kvikio.defaults.get("compat_mode"),
          "is_compat_mode_preferred", kvikio.defaults.is_compat_mode_preferred())
except Exception as exc:
    print("kvikio not usable:", exc)
from pytest_kvcache.compute import make_compute
print("compute device (auto):", make_compute("auto").describe())
EOF
cat "$OUT/env.txt" | tee -a "$LOG"

P="-p no:cacheprovider -q -rfE $PLUGIN"
# most important first: each step is cut to what is left of the budget
step 100 "scenarios: tiers" $PY -m pytest scenarios/test_tiers.py $P --kv-duration 8 --kv-warmup 1 \
    --kv-report "$W/scenarios.json"   # the six tier questions at an 8 s window (default 15 s)
step 50 "scenarios: gds" $PY -m pytest "scenarios/test_tiers.py::test_tiers[storage-only]" \
    "scenarios/test_tiers.py::test_tiers[gpu+cpu+storage]" $P --kv-duration 8 --kv-warmup 1 \
    --kv-nvme-backend gds --kv-report "$W/scenarios_gds.json"
step 60 "bench_gpu_copy 8 users" $PY benchmarks/bench_gpu_copy.py --users 8 --json "$W/bench_gpu_copy.json"
step 45 "bench_gpu_copy --verify" $PY benchmarks/bench_gpu_copy.py --verify --size-mb 256 \
    --json "$W/bench_gpu_copy_verify.json"
step 75 "bench_gds" $PY benchmarks/bench_gds.py --users 8 --dir /var/tmp --json "$W/bench_gds.json"
step 120 "tests" $PY -m pytest tests/ $P -n 8
step 200 "scenarios: the rest" $PY -m pytest scenarios/ $P --ignore scenarios/test_tiers.py \
    --kv-report "$W/scenarios_rest.json"   # at their own settings
ls -la "$OUT" | tee -a "$LOG"
