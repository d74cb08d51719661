# Sourced by setup.sh, run_streamer.sh and test.sh. The project's venv is `.venv`; a stamp file names the
# packaging files it was installed from, so a change to setup.cfg, pyproject.toml, setup.py or the C source
# it compiles makes it stale (not one to setup.cfg's [tool:pytest] section: pytest's settings are not an install).
# Only setup.sh and test.sh install: the daemon's start never does (see run_streamer.sh).

# The stamp of an install with `extras` ("" for the plain one) from the packaging files as they are now.
venv_stamp() {
    local packaging_hash
    packaging_hash="$({ awk '/^\[/ { skip = ($0 == "[tool:pytest]") } !skip' "$ROOT/setup.cfg"
                        cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/spy_streamer/channels/*.c; } \
                       | sha256sum | cut -c1-16)"
    echo "$ROOT/.venv/.installed-$packaging_hash-${1:-base}"
}

# True when .venv holds an up-to-date install with `extras` (any install satisfies the plain one).
venv_ready() {
    local stamp
    stamp="$(venv_stamp "$1")"
    [ -x "$ROOT/.venv/bin/python" ] || return 1
    [ -f "$stamp" ] || { [ -z "$1" ] && compgen -G "${stamp%-base}-*" >/dev/null; }
}

# Create .venv and install the project (with `extras`) from the package index, unless already up to date.
ensure_venv() {
    local extras="$1"
    venv_ready "$extras" && return 0
    if [ ! -x "$ROOT/.venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$ROOT/.venv"
    fi
    "$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" >&2
    touch "$(venv_stamp "$extras")"
}
