#!/usr/bin/env bash
# What supervisord launches. Sets up the project venv on first use, then *exec*s the daemon so that
# SIGTERM reaches Python directly (without exec the shell would die and orphan the daemon).
# Extra arguments go to `spy-streamer run` (e.g. --config PATH).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
ensure_venv ""
exec "$ROOT/.venv/bin/spy-streamer" run "$@"
