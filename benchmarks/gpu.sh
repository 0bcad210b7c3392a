#!/usr/bin/env bash
# The benchmarks on a CUDA GPU, in one go, printing one summary table at the end.
#
#     bash benchmarks/gpu.sh [VENV]                 # default VENV=/tmp/nux-gpu-venv; ~15 minutes
#     GPU_PYTHON=/path/to/python bash benchmarks/gpu.sh   # an environment that already has
#                                                   # JAX for CUDA (offline machines): no install
#     bash benchmarks/gpu.sh --smoke                # any machine, this Python, a few steps:
#                                                   # checks the script end to end (~3 minutes)
#
# Installs JAX for CUDA 12 (`jax[cuda12]`, which brings its own CUDA libraries: only an
# NVIDIA driver is needed), nux_eqx and FlowJAX into VENV, then runs the JAX jobs of
# - benchmarks/tabular.py: galaxy 7-D, affine / NSF / MAF, nux_eqx vs FlowJAX, batch 4096
#   (the CPU protocol uses 512), 3000 steps, seed 0;
# - benchmarks/glow_digits.py: the digits Glow at batch 64 and 512, 60 s each.
# Only the JAX libraries run here (both on the GPU): torch's peers would need their own
# CUDA wheel and a device flag the CPU protocol does not have. Results go to
# benchmarks/results/tabular_gpu.json and glow_digits_gpu_b{64,512}.json next to the CPU
# ones (with --smoke, to a temporary folder that is removed afterwards). The tabular table
# needs pzflow (its galaxy table) and skips FlowJAX if it is missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=1
    shift
fi

if [ "$SMOKE" = 1 ]; then
    PYBIN="${GPU_PYTHON:-${PYTHON:-python3}}"
    export NUX_BENCH_RESULTS="$(mktemp -d)"
    trap 'rm -rf "$NUX_BENCH_RESULTS"' EXIT
    TAB_ARGS=(--steps 20)
    GLOW_ARGS=(--seconds 3)
    BATCHES="64"
elif [ -n "${GPU_PYTHON:-}" ]; then
    PYBIN="$GPU_PYTHON"
    TAB_ARGS=()
    GLOW_ARGS=()
    BATCHES="64 512"
else
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu.sh: no nvidia-smi here; this script is for a machine with an NVIDIA GPU" \
            "(bash benchmarks/gpu.sh --smoke checks it on any machine)." >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    VENV="${1:-/tmp/nux-gpu-venv}"
    "${PYTHON:-python3}" -m venv "$VENV"
    PIP="$VENV/bin/pip"
    "$PIP" install --quiet --upgrade pip
    "$PIP" install --quiet "jax[cuda12]" flowjax pandas scikit-learn
    "$PIP" install --quiet --no-deps pzflow
    "$PIP" install --quiet -e "$REPO[train]"
    PYBIN="$VENV/bin/python"
    TAB_ARGS=()
    GLOW_ARGS=()
    BATCHES="64 512"
fi
if [ "$SMOKE" = 0 ]; then
    "$PYBIN" -c "import jax; d = jax.devices(); print('JAX devices:', d); assert d[0].platform == 'gpu', 'JAX did not find the GPU'"
fi
RESULTS="${NUX_BENCH_RESULTS:-$REPO/benchmarks/results}"

cd "$REPO"
"$PYBIN" benchmarks/tabular.py --batch-size 4096 --tag tabular_gpu ${TAB_ARGS[@]+"${TAB_ARGS[@]}"} \
    --jobs nux:affine flowjax:affine nux:nsf flowjax:nsf nux:maf flowjax:maf
for b in $BATCHES; do
    "$PYBIN" benchmarks/glow_digits.py --jobs nux:glow floor:glow --batch-size "$b" --tag "gpu_b$b" ${GLOW_ARGS[@]+"${GLOW_ARGS[@]}"}
done

RESULTS="$RESULTS" BATCHES="$BATCHES" "$PYBIN" - <<'PY'
import json, os, pathlib
res = pathlib.Path(os.environ["RESULTS"])
rows = []
tab = json.loads((res / "tabular_gpu.json").read_text())
for run in tab["runs"]:
    for r in run["results"]:
        if "error" not in r:
            rows.append((r["job"], "galaxy b4096", r.get("step_ms"), r.get("test_nll_best"), "nats"))
for b in os.environ["BATCHES"].split():
    g = json.loads((res / f"glow_digits_gpu_b{b}.json").read_text())
    for r in g["results"]:
        if "error" not in r:
            rows.append((r["job"], f"digits b{b}", r.get("step_ms"), r.get("test_bpd"), "bits/dim"))
import jax
print(f"\ndevice: {jax.devices()[0].device_kind}")
print(f"{'job':16s} {'task':14s} {'step ms':>9s} {'test':>9s}")
for job, task, ms, test, unit in rows:
    ms = f"{ms:9.2f}" if isinstance(ms, (int, float)) else f"{'-':>9s}"
    test = f"{test:9.3f}" if isinstance(test, (int, float)) else f"{'-':>9s}"
    print(f"{job:16s} {task:14s} {ms} {test} {unit}")
PY
