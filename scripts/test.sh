#!/usr/bin/env bash
# Set up .venv (scripts/setup_env.sh) and run the whole test suite: unit, node and end-to-end tests.
#
#   bash scripts/test.sh                   # everything
#   bash scripts/test.sh -x -q tests/e2e   # extra arguments go to pytest
#   bash scripts/test.sh -m "not e2e"      # skip the real-ComfyUI tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
exec "$ROOT/.venv/bin/python" -m pytest "$@"
