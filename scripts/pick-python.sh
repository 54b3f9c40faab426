#!/usr/bin/env bash
# Prints the Python that `make setup` builds .venv from (override: make setup PYTHON=...).
#
# The distribution's interpreter comes first: Debian and Ubuntu build CPython with profile-
# guided and link-time optimisation, as the official Docker images (our Dockerfile's base)
# are built, and it is what docs/install.md's venv on a gateway uses. A source build without
# --enable-optimizations (pyenv's default) runs edgesched's decision path and simulator
# 1.15-1.2x slower, so tests and benchmarks would not see what production runs.
# A candidate must be Python >= 3.11 and able to make a venv with pip (Debian: python3-venv).
set -u
for py in /usr/bin/python3 python3; do
  if command -v "$py" >/dev/null 2>&1 &&
     "$py" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
  then
    echo "$py"
    exit 0
  fi
done
echo python3  # none qualifies: let `python3 -m venv` say what is missing
