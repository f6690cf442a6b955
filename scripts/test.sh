#!/usr/bin/env bash
# The test command of the README: install, lint and type check, start the storage servers,
# run every test.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k posix -x`).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export CLOUDCOTE_VENV=${CLOUDCOTE_VENV:-$REPO/.venv}
cd "$REPO"
bash scripts/bootstrap.sh
bash scripts/lint.sh  # a lint or type error fails before any server starts
bash scripts/services.sh start
if [ -n "${CI:-}" ]; then
  # CI's machine is thrown away afterwards: leave no server behind holding its output.
  trap 'bash scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
fi
"$CLOUDCOTE_VENV/bin/python" -m pytest "$@"
