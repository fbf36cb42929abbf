#!/usr/bin/env bash
# Build work/container-venv: the Python side of the Docker image, reproduced on this machine.
#
# The image (Dockerfile) runs the Triton Python models on the container's Python 3.10 with only
#   python3 -m pip install -r deploy/docker/requirements.txt
#   python3 -m pip install --no-deps --ignore-requires-python .      (pyproject.toml, README.md, client/, mobilesamv2/)
# This script does the same into a Python 3.10 virtual environment, so that the server-side tests can serve the
# models from it (mobilesamv2-serve --python-env work/container-venv, or MOBILESAMV2_SERVER_PYTHON_ENV for the
# test fixtures): a requirement missing from requirements.txt or a 3.11-only construct then fails here, not in a
# deployment.
#
# The one difference from the image: onnxruntime-gpu is replaced by the CPU `onnxruntime` wheel of the same
# version when the GPU wheel cannot be installed here (CONTAINER_ENV_ORT=auto, the default; =cpu always swaps,
# =gpu never does). Both wheels ship the same Python API and CPU provider; only the CUDA provider differs, and
# there is no GPU here to run it.
# torch (the GPU target's device postprocess) is left out unless CONTAINER_ENV_TORCH=1: see below.
#
# Environment: CONTAINER_PYTHON (a python3.10 interpreter; default: python3.10 on PATH, then pyenv's 3.10.x),
# CONTAINER_VENV (default work/container-venv). Idempotent: the requirements are installed again only when
# requirements.txt changes; the package is always reinstalled (seconds), from a copy of exactly what the
# Dockerfile copies.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CONTAINER_VENV:-work/container-venv}
IMAGE_REQUIREMENTS=deploy/docker/requirements.txt
ORT_MODE=${CONTAINER_ENV_ORT:-auto}
# torch serves only the GPU target's device postprocess (mask_postprocess=device): the CPU server here runs the
# host postprocess, so torch and its ~2.5 GB of CUDA wheels are left out unless CONTAINER_ENV_TORCH=1 (the second
# difference from the image; nothing the CPU models import needs it, which the import check below shows).
TORCH_MODE=${CONTAINER_ENV_TORCH:-0}
mkdir -p work
REQUIREMENTS=work/container-requirements.txt
if [ "$TORCH_MODE" = 1 ]; then
  cp "$IMAGE_REQUIREMENTS" "$REQUIREMENTS"
else
  grep -vE '^torch([=<>!~ ]|$)' "$IMAGE_REQUIREMENTS" >"$REQUIREMENTS"
fi

find_python() {
  if [ -n "${CONTAINER_PYTHON:-}" ]; then
    echo "$CONTAINER_PYTHON"
    return
  fi
  if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys' >/dev/null 2>&1; then
    command -v python3.10
    return
  fi
  local candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    if [ -x "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
  return 1
}

PYTHON=$(find_python) || {
  echo "[container-env] no Python 3.10 found: set CONTAINER_PYTHON (e.g. pyenv install 3.10)" >&2
  exit 1
}
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.10" ]; then
  echo "[container-env] $PYTHON is Python $version; the image runs 3.10" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[container-env] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)

stamp="$VENV/.requirements-$( (cat "$REQUIREMENTS"; echo "ort=$ORT_MODE") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  installed=0
  if [ "$ORT_MODE" != cpu ]; then
    echo "[container-env] pip install -r $REQUIREMENTS"
    if "${pip[@]}" install -r "$REQUIREMENTS" >"$VENV/pip-gpu.log" 2>&1; then
      installed=1
      cp "$REQUIREMENTS" "$VENV/requirements-installed.txt"
    elif [ "$ORT_MODE" = gpu ]; then
      cat "$VENV/pip-gpu.log" >&2
      echo "[container-env] the image's requirements do not install here (CONTAINER_ENV_ORT=gpu)" >&2
      exit 1
    else
      echo "[container-env] not installable here: $(grep -m1 'No matching distribution\|ERROR' "$VENV/pip-gpu.log" || true)"
    fi
  fi
  if [ "$installed" = 0 ]; then
    cpu_requirements="$VENV/requirements-cpu.txt"
    sed -E 's/^onnxruntime-gpu([=<>!~ ]|$)/onnxruntime\1/' "$REQUIREMENTS" >"$cpu_requirements"
    echo "[container-env] the one difference from the image: $(grep -E '^onnxruntime[=<>!~ ]' "$cpu_requirements")" \
      "(CPU wheel) instead of $(grep -E '^onnxruntime-gpu' "$REQUIREMENTS")"
    "${pip[@]}" uninstall -y onnxruntime-gpu >/dev/null 2>&1 || true
    if ! "${pip[@]}" install -r "$cpu_requirements" >"$VENV/pip-cpu.log" 2>&1; then
      cat "$VENV/pip-cpu.log" >&2
      exit 1
    fi
    cp "$cpu_requirements" "$VENV/requirements-installed.txt"
  fi
  rm -f "$VENV"/.requirements-*
  touch "$stamp"
fi

# The package, --no-deps --ignore-requires-python, from a copy of what the Dockerfile COPYs (an in-tree build
# would also write build/ and *.egg-info into the checkout).
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp pyproject.toml README.md "$src/"
cp -r client mobilesamv2 "$src/"
find "$src" -name __pycache__ -type d -prune -exec rm -rf {} +
"${pip[@]}" install --no-deps --ignore-requires-python --force-reinstall "$src" >/dev/null
# Every requirement imports under this Python (-I: isolated, as the Triton stub runs it: no current directory
# or PYTHONPATH on sys.path), and the package is the installed copy.
"$VENV/bin/python" -I - "$VENV/requirements-installed.txt" <<'EOF'
import importlib
import importlib.metadata as md
import re
import sys

requirements = [
    re.split(r"[=<>!~ \[;]", line.strip(), maxsplit=1)[0]
    for line in open(sys.argv[1])
    if line.strip() and not line.startswith("#")
]
modules = {}
for module, dists in md.packages_distributions().items():
    for dist in dists:
        modules.setdefault(dist.lower().replace("_", "-"), []).append(module)
versions = []
for name in requirements:
    # Python 3.10 maps only distributions with a top_level.txt (numpy 1.26 has none): else the module is the name
    tops = [m for m in modules.get(name.lower(), []) if not m.startswith("_")] or [name.replace("-", "_")]
    for module in tops:
        importlib.import_module(module)
    versions.append(f"{name} {md.version(name)}")
import mobilesamv2
import segment_everything_contract

print(
    f"[container-env] ready: Python {sys.version.split()[0]}; {', '.join(versions)}; "
    f"mobilesamv2 from {mobilesamv2.__path__[0]}"
)
EOF
