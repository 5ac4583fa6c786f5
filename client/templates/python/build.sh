#!/usr/bin/env bash
# Builds {{name}}.wasm from app.py with componentize-py (pinned in
# requirements.txt, installed into .venv the first time).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ] || ! cmp -s requirements.txt .venv/.requirements; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/.requirements
fi
.venv/bin/componentize-py -d wit -w procedure componentize app -o {{name}}.wasm
