#!/usr/bin/env bash
# Set-up, a separate step: create .venv and install the project into it (the package index is needed the
# first time and after an update that changed setup.cfg or pyproject.toml). Run it as the user who owns the
# checkout, after each update. Arguments: extras to install as well, e.g. `scripts/setup.sh massive`
# (the `massive` client instead of polygon-api-client is picked up when installed) or `lake`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/ensure_venv.sh"
ensure_venv "$(IFS=,; echo "$*")"
echo "set up: $ROOT/.venv ($("$ROOT/.venv/bin/spy-streamer" --version))" >&2
