#!/usr/bin/env bash
# XLA:GPU flags worth a measurement (issue: GPU speed), in one call of the
# device tool: the device check's layers and training step, once per flag set,
# each in its own process (XLA reads XLA_FLAGS at start-up):
#
#   run(command="bash benchmarks/device_flags.sh", carry=["wheelhouse"], timeout_s=480)
#
# - baseline: no flag;
# - cudnn_layer_norm: --xla_gpu_enable_cudnn_layer_norm=true (off by default);
# - block_level_rewriter: --xla_gpu_experimental_enable_fusion_block_level_rewriter=true.
#
# A kernel that wins alone can lose inside a program, so the training step is
# measured under each flag too. Each run gets BUDGET_S seconds (default 140;
# three runs and the install fit 8 minutes). Results: $OUT/<set>/device_check.json
# and .md, and $OUT/device_flags.log. Extra arguments go to every check.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device_flags_out}"
BUDGET_S="${BUDGET_S:-140}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  "$PY" -m pip install -q --no-index --no-deps --find-links wheelhouse ml_collections \
    || echo "device_flags: ml_collections wheel not installed (the check does not need it)"
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || echo "device_flags: editable install failed; running from the source tree"
} 2>&1 | tee "$OUT/device_flags.log"
declare -A FLAG_SETS=(
  [baseline]=""
  [cudnn_layer_norm]="--xla_gpu_enable_cudnn_layer_norm=true"
  [block_level_rewriter]="--xla_gpu_experimental_enable_fusion_block_level_rewriter=true"
)
status=0
for name in baseline cudnn_layer_norm block_level_rewriter; do
  echo "== device_flags: $name (XLA_FLAGS=${FLAG_SETS[$name]})" | tee -a "$OUT/device_flags.log"
  XLA_FLAGS="${FLAG_SETS[$name]} ${XLA_FLAGS:-}" "$PY" -m benchmarks.device_check --out "$OUT/$name" \
    --sections layers train_step --budget-s "$BUDGET_S" "$@" 2>&1 | tail -n 40 >> "$OUT/device_flags.log"
  rc=${PIPESTATUS[0]}
  echo "== device_flags: $name exit status $rc" | tee -a "$OUT/device_flags.log"
  [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
