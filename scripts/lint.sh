#!/usr/bin/env bash
# Lint and type check: ruff on the tree, then mypy on the package as it installs
# (cloudcote.core = core/ ... through pyproject.toml's package-dir).  Run by scripts/test.sh
# before the tests; run it alone while working.  Extra arguments go to mypy.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CLOUDCOTE_VENV:-$REPO/.venv}
cd "$REPO"

"$VENV/bin/ruff" check .

# mypy follows import names, not package-dir: give it a tree shaped like the installed
# package, made of symlinks to the source folders.
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/cloudcote"
for file in "$REPO"/src/cloudcote/*.py "$REPO"/src/cloudcote/py.typed; do
  ln -s "$file" "$TREE/cloudcote/"
done
for folder in core libfs backends protocols; do
  ln -s "$REPO/$folder" "$TREE/cloudcote/$folder"
done
cd "$TREE"
"$VENV/bin/mypy" --config-file "$REPO/pyproject.toml" --cache-dir "$REPO/.mypy_cache" \
  -p cloudcote "$@"
