#!/usr/bin/env bash
# Sets up the project venv with the test extras on first use, then runs the whole test suite.
# Extra arguments go to pytest (e.g. -k heartbeat).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
ensure_venv "test"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
