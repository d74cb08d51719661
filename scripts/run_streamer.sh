#!/usr/bin/env bash
# What supervisord launches. Sets up the project venv on first use, then *exec*s the daemon so that
# SIGTERM reaches Python directly (without exec the shell would die and orphan the daemon).
# Extra arguments go to `spy-streamer run` (e.g. --config PATH).
# `--demo` first runs `spy-streamer demo` instead (no key; extra arguments go to it, e.g. --seconds N):
# the daemon against a local Polygon replay, output under var/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
ensure_venv ""
if [ "${1:-}" = "--demo" ]; then
    shift
    exec "$ROOT/.venv/bin/spy-streamer" demo "$@"
fi
exec "$ROOT/.venv/bin/spy-streamer" run "$@"
