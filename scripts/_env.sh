# Sourced by scripts/serve and scripts/test: create or reuse .venv and
# install mab into it (editable, so the extension is built in place) with the
# extras named in MAB_EXTRAS. The install is skipped when nothing that
# affects it changed since the last one, so a second run starts at once.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${MAB_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
if [ ! -x "$PY" ]; then
    echo "mab: creating $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
fi
# What the install depends on: the metadata and the compiled sources.
SOURCES_HASH=$({ cat pyproject.toml setup.py; find mab -name '*.pyx' -o -name '*.pxd' | sort | xargs cat; } \
    | sha256sum | cut -d' ' -f1)
EXTRAS=${MAB_EXTRAS:-}
stamp() { echo "$VENV/.mab-installed-${1:-base}"; }
if [ "$(cat "$(stamp "$EXTRAS")" 2>/dev/null)" != "$SOURCES_HASH" ] || ! ls mab/sampling.*.so >/dev/null 2>&1; then
    echo "mab: installing mab${EXTRAS:+[$EXTRAS]} into $VENV (builds the extension)" >&2
    "$PY" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
    # An install with extras is also a base install.
    echo "$SOURCES_HASH" > "$(stamp "$EXTRAS")"
    echo "$SOURCES_HASH" > "$(stamp base)"
fi
