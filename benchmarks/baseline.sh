#!/usr/bin/env bash
# The "before" of BENCHMARKS.md's before/after: the old main (bc36653 by default) measured with its own code.
#
#   flock /tmp/heavy.lock bash benchmarks/baseline.sh [COMMIT]        # ~15 min on 2 cores
#
# 1. a git worktree of COMMIT at work/baseline and a virtual environment work/baseline-venv that puts the
#    worktree's packages (mobilesamv2, its client) first and this checkout's .venv packages after them (a .pth
#    file: no editable finder, so nothing of this checkout's code leaks in; the Triton stubs take the
#    environment of the first python on PATH, this one, so the old server runs the old model code too);
# 2. its model repository, built by ITS build code from the same seeded random weights (work/test-cache/weights);
# 3. ITS benchmark: benchmarks/run.py --sections e2e (bus.jpg and zidane.jpg at the default conf), results in
#    work/benchmarks/baseline-run/results.json;
# 4. this checkout's driver benchmarks/e2e.py run as a file against it (same points as section 2: about 10, 50
#    and 300 boxes), results in work/benchmarks/baseline/e2e.json.
# Then: benchmarks.run --sections e2e --baseline-e2e work/benchmarks/baseline/e2e.json
#       --baseline-run work/benchmarks/baseline-run/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COMMIT=${1:-bc36653}
WEIGHTS=$ROOT/work/test-cache/weights
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
[ -d work/baseline ] || git worktree add --detach work/baseline "$COMMIT"
if [ ! -x work/baseline-venv/bin/python ]; then
  "$(readlink -f .venv/bin/python)" -m venv --without-pip work/baseline-venv
  site=$(work/baseline-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n' "$ROOT/work/baseline" "$ROOT/work/baseline/client" \
    "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > "$site/00-baseline.pth"
fi
PY=$ROOT/work/baseline-venv/bin/python
cd work/baseline
if [ "${SKIP_OLD_RUN:-0}" != 1 ]; then
  $PY -m mobilesamv2.export.cli --fake-weights --fake-dir "$WEIGHTS" --out "$ROOT/work/baseline-repo"
  $PY -m benchmarks.run --sections e2e --model-repository "$ROOT/work/baseline-repo" \
    --run-dir "$ROOT/work/benchmarks/baseline-run" --out "$ROOT/work/benchmarks/baseline-run/BENCHMARKS.md" \
    --plot "$ROOT/work/benchmarks/baseline-run/benchmarks.png"
fi
$PY "$ROOT/benchmarks/e2e.py" --repository "$ROOT/work/baseline-repo" --weights "$WEIGHTS" \
  --out "$ROOT/work/benchmarks/baseline/e2e.json" --label "old main $COMMIT"
