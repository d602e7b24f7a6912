#!/usr/bin/env bash
# Where the GPU step time goes, and which fast path pays: the 113M shape (12 x 768, vocabulary
# 32001, sequence 2048, bf16) through the project's DeepSpeed loop, one process per variant
# (family x compile mode x attention backend x micro-batch), each with a kernel-time profile of a few
# steps. Prints a summary table last; full logs, and each variant's kernels as CSV, under $LOG_DIR
# (default /tmp/gpu_variants).
#
#   bash benchmarks/gpu_variants.sh                 # every variant below, about 7 minutes on an H200
#   VARIANTS="ar:blocks:cudnn:16 mdlm:blocks:flash:16" bash benchmarks/gpu_variants.sh
#
# A variant is family:compile:attention:micro_batch[:global_batch[:options]]
# (benchmarks/train_throughput.py --compile, --attention, --micro-batch, --global-batch); options,
# joined by '+': bf16w (DeepSpeed's bf16 mode: bf16 weights, fp32 master weights in the optimizer,
# instead of autocast), dsclip (DeepSpeed's own gradient clipping), fusedhead (the head and loss
# fused chunk by chunk: trainers/fused_head.py, resources.fused_head; without it, the plain head,
# whatever a run's default), chunkMIB (with fusedhead: its chunk budget in MiB of float32 logits,
# e.g. chunk256), cg (CUDA graphs: with compile trunk, the trunk replayed as CUDA graphs), timerab
# (each timed round also runs with DeepSpeed's throughput timer back on, as DeepSpeed's default: two
# device syncs per micro-batch, which trainers/engine.py turns off; interleaved in the one process,
# prints both rates), noprobe (train at the micro-batch given, without the eager probe that halves
# it until an eager step fits: a compiled model needs less). Every variant also prints the device
# syncs of one optimizer step (--sync-report). Variants stop being started once BUDGET_S seconds
# have passed. PROFILE_STEPS
# optimizer steps are profiled (default 3), PROFILE_TOP kernels listed (default 8).
# DS_OVERRIDES (JSON) is merged into every variant's DeepSpeed config (it wins over the bf16w
# option), e.g. bf16 weights for every variant:
#   DS_OVERRIDES='{"bf16": {"enabled": true}, "torch_autocast": {"enabled": false}}' \
#     VARIANTS="ar:blocks:auto:16" bash benchmarks/gpu_variants.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export DS_ACCELERATOR=cuda TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG_DIR=${LOG_DIR:-/tmp/gpu_variants}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$LOG_DIR"
VARIANTS=${VARIANTS:-"ar:off:default:16 ar:blocks:cudnn:16 ar:blocks:flash:16 mdlm:blocks:cudnn:16 \
mdlm:blocks:flash:16 duo:blocks:cudnn:16 esolm:blocks:cudnn:16 ar:blocks:cudnn:32 ar:whole:cudnn:16"}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
start=$(date +%s)
summary=()
for v in $VARIANTS; do
  IFS=: read -r family compile attention micro global opts <<<"$v"
  extra=()
  [[ -n "${global:-}" ]] && extra+=(--global-batch "$global")
  [[ "+${opts:-}+" == *+bf16w+* ]] && extra+=(--deepspeed-overrides '{"bf16": {"enabled": true}, "torch_autocast": {"enabled": false}}')
  [[ "+${opts:-}+" == *+dsclip+* ]] && extra+=(--deepspeed-clip)
  [[ "+${opts:-}+" == *+cg+* ]] && extra+=(--cuda-graphs)
  [[ "+${opts:-}+" == *+timerab+* ]] && extra+=(--timer-ab)
  [[ "+${opts:-}+" == *+noprobe+* ]] && extra+=(--skip-probe)
  # the head is named either way: a variant means the same whatever a run's default is
  if [[ "+${opts:-}+" == *+fusedhead+* ]]; then extra+=(--fused-head on); else extra+=(--fused-head off); fi
  chunk=$(grep -o -E '(^|\+)chunk[0-9]+' <<<"${opts:-}" | grep -o -E '[0-9]+')
  [[ -n "$chunk" ]] && extra+=(--fused-chunk-mib "$chunk")
  if (( $(date +%s) - start > BUDGET_S )); then summary+=("$v skipped (budget)"); continue; fi
  log="$LOG_DIR/$(echo "$v" | tr ':+' '__').log"
  t0=$(date +%s)
  timeout ${VARIANT_TIMEOUT_S:-150} $PY benchmarks/train_throughput.py --part gpu --family "$family" --compile "$compile" \
    --attention "$attention" --micro-batch "$micro" --rounds "${ROUNDS:-2}" --steps "${STEPS:-20}" \
    --no-plain --sync-report --profile-steps "${PROFILE_STEPS:-3}" --profile-top "${PROFILE_TOP:-8}" \
    --profile-csv "${log%.log}.kernels.csv" "${extra[@]}" \
    ${DS_OVERRIDES:+--deepspeed-overrides "$DS_OVERRIDES"} \
    >"$log" 2>&1
  rc=$?
  grep -v -i -E "warn|^\s*$" "$log" | grep -E "^(gpu|profile|  |    |mfu|peak|cudagraph|syncs|Traceback|[A-Za-z]*Error)|skipping cudagraphs" | head -40
  tps=$(awk '/^gpu_deepspeed_tokens_per_s/ {print $2}' "$log")
  timer_on=$(awk '/^gpu_deepspeed_timer_on_tokens_per_s/ {print $2}' "$log")
  mfu=$(awk '/^mfu / {print $2}' "$log")
  palm=$(awk '/^mfu_palm/ {print $2}' "$log")
  summary+=("$v rc=$rc tokens/s=${tps:-nan}${timer_on:+ (timer on: $timer_on)} mfu=${mfu:-nan} mfu_palm=${palm:-nan} ($(( $(date +%s) - t0 ))s)")
  if (( rc != 0 )); then tail -5 "$log"; fi
done
echo "== summary (mfu = 6 N' tokens/s / 989e12; mfu_palm adds 12 L d T attention FLOPs per token)"
printf '%s\n' "${summary[@]}"
