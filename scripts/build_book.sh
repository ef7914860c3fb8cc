#!/usr/bin/env bash
# Build the HTML book into _build/html, as CI does (any warning fails the build).
#
#   bash scripts/build_book.sh
#   JUPYTER_BOOK=/path/to/jupyter-book bash scripts/build_book.sh
#
# This is only a shortcut for
#
#   jupyter-book build . --all -W -n --keep-going
#
# after `pip install -e ".[book]"`.  Nothing else is needed: MathJax comes from the
# sphinx-mathjax-offline package and the widget scripts are committed in
# book/_static/vendor/, so the build needs neither Node.js nor network access, and the
# pages work offline.  Notebooks are not executed here (execute_notebooks: off); they
# are rendered with the outputs stored in them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -n "${JUPYTER_BOOK:-}" ]]; then
  JB=("$JUPYTER_BOOK")
elif [[ -x "$ROOT/.venv/bin/jupyter-book" ]]; then
  JB=("$ROOT/.venv/bin/jupyter-book")
elif command -v jupyter-book >/dev/null 2>&1; then
  JB=(jupyter-book)
else
  echo "build_book.sh: jupyter-book not found; install it with: pip install -e \".[book]\"" >&2
  exit 2
fi

echo "==> ${JB[*]} build . --all -W -n --keep-going"
"${JB[@]}" build . --all -W -n --keep-going
echo "==> HTML written to _build/html/index.html"
