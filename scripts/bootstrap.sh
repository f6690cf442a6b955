#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine: a venv with cloudcote
# (editable) and every optional, test and developer (ruff, mypy) dependency, at the versions in
# requirements/constraints.txt.  The Debian packages of the storage servers are installed
# by scripts/services.sh when it first needs them.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CLOUDCOTE_VENV:-$REPO/.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -c "$REPO/requirements/constraints.txt" -e "$REPO[all,test,dev]"
echo "bootstrap: $("$VENV/bin/python" --version) in $VENV with cloudcote[all,test,dev]"
