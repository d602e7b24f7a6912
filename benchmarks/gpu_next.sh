#!/usr/bin/env bash
# The next GPU lease's prepared calls (benchmarks/GPU_NOTES.md, "Sixth lease plan"), so a session
# with a device machine runs them without retyping: `bash benchmarks/gpu_next.sh 1`, then at once on
# the warm machine `bash benchmarks/gpu_next.sh 2`. Logs under $OUT (the device tool's folder that
# comes back), else /tmp/gpu_next. Assumes DeepSpeed is importable (GPU_NOTES: the .whl/ prefix).
#
#   call 1 (about 8 minutes): AR, bf16 weights, fused head, micro-batches of 32, the whole model
#     compiled (the fifth lease's best, 31.9%, rerun on this card as the baseline), then the same in
#     max-autotune mode (matmul templates with fused epilogues: minutes of tuning).
#   call 2 (about 5 minutes): the other families at micro-batches of 32, bf16 weights, fused head:
#     Duo with the whole model compiled (one shape, compiles once), MDLM and Eso-LM with the trunk
#     (their scored rows vary, which recompiles a whole-model graph at every step).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_next}
mkdir -p "$OUT"
common=(LOG_DIR="$OUT" ROUNDS=2 STEPS=2 PROFILE_STEPS=1 PROFILE_TOP=8)
case "${1:-}" in
  1)
    env "${common[@]}" BUDGET_S=200 VARIANT_TIMEOUT_S=330 VARIANTS="ar:whole:auto:32:256:bf16w+fusedhead \
ar:whole-autotune:auto:32:256:bf16w+fusedhead" bash benchmarks/gpu_variants.sh ;;
  2)
    env "${common[@]}" BUDGET_S=200 VARIANT_TIMEOUT_S=160 VARIANTS="duo:whole:auto:32:256:bf16w+fusedhead \
mdlm:trunk:auto:32:256:bf16w+fusedhead esolm:trunk:auto:32:256:bf16w+fusedhead" \
      bash benchmarks/gpu_variants.sh ;;
  *) echo "usage: bash benchmarks/gpu_next.sh 1|2 (GPU_NOTES.md, \"Sixth lease plan\")" >&2; exit 2 ;;
esac
