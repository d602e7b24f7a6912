#!/usr/bin/env bash
# The next GPU lease's prepared calls (benchmarks/GPU_NOTES.md, "Sixth lease plan"), so a session
# with a device machine runs them without retyping: `bash benchmarks/gpu_next.sh 1`, then at once on
# the warm machine `bash benchmarks/gpu_next.sh 2`. Logs under $OUT (the device tool's folder that
# comes back), else /tmp/gpu_next. Assumes DeepSpeed is importable (GPU_NOTES: the .whl/ prefix).
#
#   call 1 (about 6 minutes): AR, bf16 weights, fused head, the whole model compiled, micro-batches
#     of 32: rounds without DeepSpeed's throughput timer (the product's config since 2026-11-28)
#     interleaved with rounds with it (its two device syncs per micro-batch: how the fifth lease's
#     31.9% was measured); then micro-batches of 64 without the eager probe (which halved 64 to 32
#     in the fifth lease); then the product's GPU default path (compiled blocks, autocast,
#     micro-batches of 16), timer A/B too, if time is left.
#   call 2 (about 6 minutes): the first variant of call 1 in max-autotune mode (matmul templates
#     with fused epilogues: minutes of tuning).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_next}
mkdir -p "$OUT"
common=(LOG_DIR="$OUT" ROUNDS=2 STEPS=2 PROFILE_STEPS=1 PROFILE_TOP=8)
case "${1:-}" in
  1)
    env "${common[@]}" BUDGET_S=280 VARIANT_TIMEOUT_S=200 VARIANTS="ar:whole:auto:32:256:bf16w+fusedhead+timerab \
ar:whole:auto:64:256:bf16w+fusedhead+noprobe ar:blocks:auto:16:256:fusedhead+timerab" \
      bash benchmarks/gpu_variants.sh ;;
  2)
    env "${common[@]}" BUDGET_S=60 VARIANT_TIMEOUT_S=380 \
      VARIANTS="ar:whole-autotune:auto:32:256:bf16w+fusedhead" bash benchmarks/gpu_variants.sh ;;
  *) echo "usage: bash benchmarks/gpu_next.sh 1|2 (GPU_NOTES.md, \"Sixth lease plan\")" >&2; exit 2 ;;
esac
