#!/usr/bin/env bash
# A sweep in one call of the device tool, after (or without) the device check:
#
#   run(command="JAXNORM_GIT_COMMIT=<sha> bash experiments/device_sweep.sh CONFIG SECONDS [sweep flags]",
#       carry=["wheelhouse", "device_data"], timeout_s=...)
#
# Prepare once, here: wheelhouse/ as benchmarks/device_run.sh says, and
# device_data/ (git-ignored) holding the shared
# copy's cifar-10-jpeg.tar.gz and prepare.py (19 MB; the binary layout is
# 176 MB, over what a call carries, so it is rebuilt there in ~15 s).
#
# The sweep runs under `timeout SECONDS` (SIGINT, so a point in training is
# cut and only finished points count); the points finished, the report and
# the log are then packed into $OUT/sweep_<config>.tgz, which comes back.
# Unpack it here and merge with `python -m experiments.report`.
set -uo pipefail
cd "$(dirname "$0")/.."
CONFIG="$1"; SECONDS_LEFT="$2"; shift 2
OUT="${OUT:-/tmp/device_sweep_out}"
NAME="$(basename "$CONFIG" .py)"
WORK="runs/$NAME"
LOG="$OUT/sweep_$NAME.log"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  "$PY" -c "import ml_collections" 2>/dev/null \
    || "$PY" -m pip install -q --no-index --no-deps --find-links wheelhouse ml_collections
  "$PY" -c "import jaxnorm" 2>/dev/null \
    || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  export JAXNORM_DATA="${JAXNORM_DATA:-/tmp/cifar10-local}"
  if [ ! -d "$JAXNORM_DATA/cifar-10-batches-bin" ]; then
    (cd device_data && "$PY" prepare.py "$JAXNORM_DATA")
  fi
  timeout -k 30 -s INT "$SECONDS_LEFT" "$PY" -m experiments.sweep --config "$CONFIG" --workdir "$WORK" "$@"
  echo "device_sweep: sweep exited with status $?"
  "$PY" -m experiments.report --workdir "$WORK" || echo "device_sweep: no report (no finished point?)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
} 2>&1 | tee "$LOG"
tar czf "$OUT/sweep_$NAME.tgz" --exclude='checkpoints*' "$WORK" "$LOG" 2>/dev/null
ls -la "$OUT"
