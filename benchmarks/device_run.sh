#!/usr/bin/env bash
# The device check in one call of the device tool (no package registry there):
#
#   run(command="bash benchmarks/device_run.sh", carry=["wheelhouse"], timeout_s=300)
#
# Prepare once, here, with network (wheelhouse/ is git-ignored and travels
# only because the call names it in carry):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheelhouse ml_collections
#
# ml_collections is the one package experiments/ imports that the device
# image lacks (its requirements absl-py and PyYAML are there; the check itself
# does not import it). Extra arguments go to the check, e.g. `--budget-s 200`
# or `--smoke` for a quick compiled run at toy sizes. Everything lands in
# $OUT (device_check.json, device_check.md, device_check.log), which comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  "$PY" -m pip install -q --no-index --no-deps --find-links wheelhouse ml_collections \
    || echo "device_run: ml_collections wheel not installed (the check does not need it)"
  # --no-build-isolation: setuptools comes from the image, not the (absent) index.
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || echo "device_run: editable install failed; running from the source tree"
} 2>&1 | tee "$OUT/device_check.log"
"$PY" -m benchmarks.device_check --out "$OUT" "$@" 2>&1 | tee -a "$OUT/device_check.log"
