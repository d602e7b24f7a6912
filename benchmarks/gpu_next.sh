#!/usr/bin/env bash
# The next GPU lease's prepared calls (benchmarks/GPU_NOTES.md, "Fifth lease plan"), so a session
# with a device machine runs them without retyping: `bash benchmarks/gpu_next.sh 1`, then at once on
# the warm machine `bash benchmarks/gpu_next.sh 2`. Logs under $OUT (the device tool's folder that
# comes back), else /tmp/gpu_next. Assumes DeepSpeed is importable (GPU_NOTES: the .whl/ prefix).
#
#   call 1 (about 7 minutes): the GPU tests (the fused head, the float32 forbid_token fix, the
#     trunk's CUDA graphs with gradient accumulation; the fused-head diagnostic only if a test
#     fails), then AR, bf16 weights, fused head: compiled blocks, trunk, trunk + CUDA graphs.
#   call 2 (about 5 minutes): AR trunk + CUDA graphs at micro-batch 32 (bf16 weights), and with a
#     run's defaults (autocast).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_next}
mkdir -p "$OUT"
common=(LOG_DIR="$OUT" VARIANT_TIMEOUT_S=180 ROUNDS=2 STEPS=2 PROFILE_STEPS=1 PROFILE_TOP=12)
case "${1:-}" in
  1)
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/trainers/test_fused_head.py \
      tests/trainers/test_kernels.py >"$OUT/gpu_tests.log" 2>&1 \
      || PYTHONPATH="${PYTHONPATH:-}:." python3 benchmarks/fused_head_gpu_diag.py >"$OUT/diag.log" 2>&1
    tail -3 "$OUT/gpu_tests.log"
    env "${common[@]}" BUDGET_S=250 VARIANTS="ar:blocks:auto:16:256:bf16w+fusedhead \
ar:trunk:auto:16:256:bf16w+fusedhead ar:trunk:auto:16:256:bf16w+fusedhead+cg" \
      bash benchmarks/gpu_variants.sh ;;
  2)
    env "${common[@]}" BUDGET_S=150 VARIANTS="ar:trunk:auto:32:256:bf16w+fusedhead+cg \
ar:trunk:auto:16:256:fusedhead+cg" bash benchmarks/gpu_variants.sh ;;
  *) echo "usage: bash benchmarks/gpu_next.sh 1|2 (GPU_NOTES.md, \"Fifth lease plan\")" >&2; exit 2 ;;
esac
