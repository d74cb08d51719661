#!/usr/bin/env bash
# What supervisord and systemd launch. It installs nothing: when .venv is missing or older than setup.cfg /
# pyproject.toml it exits 78 (EX_CONFIG, which supervisord's `exitcodes` and systemd's
# RestartPreventExitStatus leave down) naming the one command to run, so a supervisor never spins on a
# missing package index. Then it *exec*s the daemon, so that SIGTERM reaches Python directly (without exec
# the shell would die and orphan the daemon) and systemd's notifications come from the main process.
# Extra arguments go to `spy-streamer run` (e.g. --config PATH).
# `--demo` first runs `spy-streamer demo` instead (no key; extra arguments go to it, e.g. --seconds N):
# the daemon against a local Polygon replay, output under var/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
if ! venv_ready ""; then
    echo "spy-streamer: $ROOT/.venv is missing or out of date (its packaging files or the C parser changed); run: $ROOT/scripts/setup.sh" >&2
    exit 78
fi
if [ "${1:-}" = "--demo" ]; then
    shift
    exec "$ROOT/.venv/bin/spy-streamer" demo "$@"
fi
exec "$ROOT/.venv/bin/spy-streamer" run "$@"
