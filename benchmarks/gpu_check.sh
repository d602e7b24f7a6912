#!/usr/bin/env bash
# GPU check: on a machine with one NVIDIA GPU and the project's dependencies (no network), train the
# 113M shape (12 x 768, vocabulary 32001, sequence 2048) in bf16 for each family through the
# project's DeepSpeed loop with the GPU defaults of a run (compiled blocks and loss heads, cuDNN
# attention on Hopper: trainers/kernels.py), print tokens/s and model FLOPs utilisation (paper
# convention, and PaLM's with attention), then the paper sweep's GPU-hours estimated from the
# measured AR throughput. `NO_PLAIN=1 ROUNDS=2 STEPS=3` took 207 s on an H100 (2026-11-27: about 40 s
# of compilation per family); the defaults (3 rounds of 4 optimizer steps = 208 micro-batches with
# the warm-up, and the plain-PyTorch loop as many again) should take about 6 minutes (estimated, not
# timed).
# COMPILE=off|blocks|trunk|whole, CUDA_GRAPHS=1 (with trunk) and ATTENTION=auto|default|cudnn|flash
# pick other paths; MICRO_BATCH (default 16) the sequences per forward; GLOBAL_BATCH
# (default 256, the paper's recipe: 16 micro-batches of 16 accumulated per optimizer step) and
# DS_OVERRIDES (JSON merged into the DeepSpeed config, e.g. bf16 weights) the run's recipe;
# FUSED_HEAD=auto|on|off the fused head and loss (resources.fused_head: trainers/fused_head.py; auto,
# a run's default, is on for a GPU).
#
#   bash benchmarks/gpu_check.sh            # uses `python3` (or $PYTHON)
#
# Token ids are synthetic (uniform random): throughput does not depend on the text, and the check
# must run without the corpus. Each family runs in its own process (DeepSpeed initialises once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export DS_ACCELERATOR=cuda TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-4}  # optimizer steps per timed round, GLOBAL_BATCH / 16 micro-batches each
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
declare -A TPS MFU PALM
for family in ar mdlm duo esolm; do
  echo "== $family"
  out=$($PY benchmarks/train_throughput.py --part gpu --family "$family" --rounds "$ROUNDS" \
        --steps "$STEPS" --warmup-steps 1 --micro-batch "${MICRO_BATCH:-16}" \
        --global-batch "${GLOBAL_BATCH:-256}" --compile "${COMPILE:-blocks}" \
        --attention "${ATTENTION:-auto}" ${NO_PLAIN:+--no-plain} --fused-head "${FUSED_HEAD:-auto}" \
        ${CUDA_GRAPHS:+--cuda-graphs} \
        ${DS_OVERRIDES:+--deepspeed-overrides "$DS_OVERRIDES"} 2>&1 | grep -v -i warn)
  echo "$out"
  TPS[$family]=$(echo "$out" | awk '/^gpu_deepspeed_tokens_per_s/ {print $2}')
  MFU[$family]=$(echo "$out" | awk '/^mfu / {print $2}')
  PALM[$family]=$(echo "$out" | awk '/^mfu_palm/ {print $2}')
done
echo "== summary (tokens/s of the DeepSpeed loop; mfu = 6 N' tokens/s / peak bf16; mfu_palm adds"
echo "   attention's 12 L d T FLOPs per token)"
for family in ar mdlm duo esolm; do echo "$family ${TPS[$family]:-nan} mfu ${MFU[$family]:-nan} mfu_palm ${PALM[$family]:-nan}"; done
echo "== paper sweep estimate from the measured AR throughput"
$PY -m scaling.cli plan sweeps/paper.yaml --gpus 64 --tokens-per-second "${TPS[ar]}" | tail -12
