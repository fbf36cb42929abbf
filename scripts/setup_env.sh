#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with everything: build, server, client, tests.
# Idempotent: skips the install when pyproject files are unchanged since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "[setup] installing the project and its dependencies into $VENV (a few minutes the first time)"
"$VENV/bin/python" -m pip install -q -e ".[build,server,client,loadtest,test]"
# ultralytics pulls the GUI build of OpenCV (and may pull numpy 2): Triton's Python backend needs numpy<2,
# and the headless build must be the one that `import cv2` loads.
"$VENV/bin/python" -m pip install -q "numpy>=1.24,<2" "opencv-python-headless>=4.8,<4.12"
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "opencv-python-headless==4.11.0.86"
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "[setup] done"
