# Sourced by run_streamer.sh and test.sh: create .venv and install the project on first use, and again
# only when the packaging files change. Non-interactive, so supervisord can run it.
# Usage: ensure_venv <extras>   (e.g. "" or "test")
ensure_venv() {
    local extras="$1"
    local venv="$ROOT/.venv"
    local packaging_hash stamp
    packaging_hash="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
    stamp="$venv/.installed-$packaging_hash-${extras:-base}"
    # The base install is also satisfied by an install with extras (e.g. the test venv).
    if [ -f "$stamp" ] || { [ -z "$extras" ] && compgen -G "$venv/.installed-$packaging_hash-*" >/dev/null; }; then
        return 0
    fi
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}" >&2
    touch "$stamp"
}
