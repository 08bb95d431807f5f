#!/usr/bin/env bash
# Installs what is needed, then runs the test suite. Extra arguments go to pytest (e.g. -m slow).
# The tests run in HYPERLIPS_TEST_WORKERS processes (pytest-xdist; default 2, one per core here; 1 runs them in
# this process, one after another, which a debugger or -x -s wants).
# The browser test of the web page also needs Chromium (Debian's package) and the playwright Python package:
# both are installed here when possible (HYPERLIPS_NO_BROWSER=1 skips that); without them that test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ -z "${HYPERLIPS_NO_BROWSER:-}" ]; then
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq chromium >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
            || echo "note: chromium could not be installed; the browser test will be skipped" >&2
    fi
    if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
        # the Python package only: its browser download is never used (the test drives the system's chromium)
        .venv/bin/python -m pip install -q playwright 2>&1 | grep -v "is ignored: it is neither" || true
    fi
fi
workers=${HYPERLIPS_TEST_WORKERS:-2}
if [ "$workers" -gt 1 ] 2>/dev/null; then
    exec .venv/bin/python -m pytest -n "$workers" "$@"
fi
exec .venv/bin/python -m pytest "$@"
