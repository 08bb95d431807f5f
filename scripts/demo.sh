#!/usr/bin/env bash
# Installs what is needed, then lip-syncs the built-in example (a photo + synthesised speech).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/hyperlips demo "$@"
