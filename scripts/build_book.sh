#!/usr/bin/env bash
# Build the HTML book into _build/html, so that it also works offline.
#
#   bash scripts/build_book.sh            # build (warnings are errors)
#   JUPYTER_BOOK=/path/to/jupyter-book bash scripts/build_book.sh
#
# Step 1 fetches the JavaScript that the pages need (MathJax 3, RequireJS and the
# Jupyter widgets HTML manager) from the npm registry into .book_assets/ (once; again
# only when a version below changes) and copies the files the pages load into
# book/_static/vendor/.  Both folders are git-ignored; nothing is taken from a CDN
# when the book is read.  _config.yml points Sphinx at these copies
# (mathjax_path, nb_ipywidgets_js, html_static_path).
#
# Step 2 runs `jupyter-book build . --all -W -n --keep-going`: any warning fails the
# build (--all re-reads every page, so warnings of unchanged pages are reported too).
# Notebooks are not executed here (execute_notebooks: off); they are rendered with the
# outputs stored in them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Exact versions of the JavaScript packages (update together, then rebuild).
MATHJAX_VERSION="3.2.2"
REQUIREJS_VERSION="2.3.8"
# @jupyter-widgets/html-manager 1.0.x renders the state saved by ipywidgets 8.
HTML_MANAGER_VERSION="1.0.15"

ASSETS="$ROOT/.book_assets"
VENDOR="$ROOT/book/_static/vendor"

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

if ! command -v npm >/dev/null 2>&1; then
  echo "build_book.sh: npm not found; install Node.js (Debian: apt-get install -y npm)" >&2
  exit 2
fi

# ---------------------------------------------------------------------------------
# 1. JavaScript assets
# ---------------------------------------------------------------------------------
# `npm pack` fetches exactly these package tarballs from the npm registry (checked
# against the registry's integrity hashes, and kept in npm's cache), without resolving
# any dependencies: the files used here are prebuilt bundles.
stamp="mathjax@${MATHJAX_VERSION} requirejs@${REQUIREJS_VERSION} @jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}"
NM="$ASSETS/node_modules"
if [[ ! -f "$ASSETS/.installed" ]] || [[ "$(cat "$ASSETS/.installed")" != "$stamp" ]]; then
  echo "==> npm pack $stamp"
  rm -rf "$ASSETS"
  mkdir -p "$ASSETS/tarballs" "$NM"
  (
    cd "$ASSETS/tarballs"
    npm pack --silent --loglevel=error \
      "mathjax@${MATHJAX_VERSION}" \
      "requirejs@${REQUIREJS_VERSION}" \
      "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" >/dev/null
  )
  unpack() {  # unpack TARBALL into node_modules/NAME
    mkdir -p "$NM/$2"
    tar -xzf "$ASSETS/tarballs/$1" -C "$NM/$2" --strip-components=1
  }
  unpack "mathjax-${MATHJAX_VERSION}.tgz" mathjax
  unpack "requirejs-${REQUIREJS_VERSION}.tgz" requirejs
  unpack "jupyter-widgets-html-manager-${HTML_MANAGER_VERSION}.tgz" @jupyter-widgets/html-manager
  echo "$stamp" > "$ASSETS/.installed"
fi

echo "==> copying JavaScript into book/_static/vendor/"
rm -rf "$VENDOR"
mkdir -p "$VENDOR/mathjax" "$VENDOR/requirejs" "$VENDOR/html-manager"

# MathJax: the combined TeX+MathML -> CommonHTML component, plus the pieces it loads
# on demand (TeX extensions, fonts, menu, accessibility); the other combined
# components are not needed.
cp "$NM/mathjax/es5/tex-mml-chtml.js" "$VENDOR/mathjax/"
for d in input output ui a11y sre adaptors; do
  if [[ -d "$NM/mathjax/es5/$d" ]]; then
    cp -r "$NM/mathjax/es5/$d" "$VENDOR/mathjax/"
  fi
done
rm -rf "$VENDOR/mathjax/output/svg" "$VENDOR/mathjax/output/svg.js"
cp "$NM/mathjax/LICENSE" "$VENDOR/mathjax/LICENSE"

# RequireJS (AMD loader used by the widgets bundle).
cp "$NM/requirejs/require.js" "$VENDOR/requirejs/"

# Jupyter widgets HTML manager: the AMD bundle and the font files it references.
cp "$NM/@jupyter-widgets/html-manager/dist/embed-amd.js" "$VENDOR/html-manager/"
find "$NM/@jupyter-widgets/html-manager/dist" -maxdepth 1 -type f \
  \( -name '*.woff2' -o -name '*.woff' -o -name '*.ttf' -o -name '*.eot' -o -name '*.svg' \) \
  -exec cp {} "$VENDOR/html-manager/" \;
for f in LICENSE LICENSE.txt; do
  if [[ -f "$NM/@jupyter-widgets/html-manager/$f" ]]; then
    cp "$NM/@jupyter-widgets/html-manager/$f" "$VENDOR/html-manager/"
  fi
done

# ---------------------------------------------------------------------------------
# 2. Build the book; any warning is an error.
# ---------------------------------------------------------------------------------
echo "==> ${JB[*]} build . --all -W -n --keep-going"
"${JB[@]}" build . --all -W -n --keep-going
echo "==> HTML written to _build/html/index.html"
