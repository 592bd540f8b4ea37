#!/usr/bin/env bash
# Build the documentation site into docs/_build/html, warnings as errors.
#
#   pip install -e ".[docs]"      # once
#   docs/build.sh                 # from anywhere; extra args go to sphinx-build
#
# The build runs every example in examples/ (sphinx-gallery), generates the
# API reference from the docstrings and checks that every public name is
# documented with the required numpydoc sections (docs/sphinxext). Any
# warning, a failing example or a missing section fails the build.
# docs/_build is gitignored; delete it (or pass -E) for a clean rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
python -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
echo "docs built in $(( $(date +%s) - start )) s: docs/_build/html/index.html"
