#!/usr/bin/env bash
# The main job: set up, build the model repository, start tritonserver, segment bus.jpg through the client,
# write outputs/bus_overlay.png and outputs/bus_coco.json, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m mobilesamv2.demo "$@"
