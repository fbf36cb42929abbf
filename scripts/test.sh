#!/usr/bin/env bash
# The test command (also what CI runs): set up, then the whole suite against a real tritonserver.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False YOLO_CONFIG_DIR="$PWD/work/ultralytics"
# Step 0: lint with the project's configuration (pyproject.toml [tool.ruff]): rules and formatting.
echo "[test] ruff check . && ruff format --check ."
lint_status=0
.venv/bin/ruff check . || lint_status=1
.venv/bin/ruff format --check . || lint_status=1
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout=1800 "$@"
status=$?
# pytest exits 5 when no test was collected (e.g. a -k filter matching nothing): not a failure of the code.
if [ "$status" -eq 5 ]; then
  echo "[test] no tests collected"
  status=0
fi
# Step 2 (the full run only, i.e. no arguments; CONTAINER_PYTHON_TESTS=0 skips it, =1 forces it): the server-side
# tests again with the Python models served from the Docker image's Python side (Python 3.10, only
# deploy/docker/requirements.txt, the package installed --no-deps; scripts/container_env.sh), so that a missing
# server requirement or a 3.11-only construct fails here rather than in a deployment. The repository is still
# built by .venv (torch); only serving uses work/container-venv. The files run every model's code paths (the
# probe: SegAny box, multimask point, SegEvery; each model and the pipeline against the PyTorch reference);
# the client's own features, and the 300-prompt cap, do not depend on the server's Python. About a minute (plus about a minute the first
# time, to install the environment; torch, which only the GPU target's postprocess uses, is left out).
if [ "${CONTAINER_PYTHON_TESTS:-$([ $# -eq 0 ] && echo 1 || echo 0)}" = 1 ]; then
  echo "[test] server-side tests with the models on the container's Python (work/container-venv)"
  if bash scripts/container_env.sh; then
    MOBILESAMV2_SERVER_PYTHON_ENV="$PWD/work/container-venv" .venv/bin/python -m pytest -q -p no:cacheprovider \
      --timeout=900 tests/server/test_python_env.py tests/server/test_probe.py \
      tests/integration/test_server_models.py -k "not hits_the_300_box_cap"
    container_status=$?
  else
    container_status=1
  fi
  [ "$status" -eq 0 ] && status=$container_status
fi
if [ "$lint_status" -ne 0 ]; then
  echo "[test] ruff found problems (above)"
  [ "$status" -eq 0 ] && status=1
fi
exit "$status"
