#!/usr/bin/env bash
# Issue-5 acceptance experiments on the offline digits data (MobileNetV2 width 0.35, 32 px):
#   lam0     λ = 0, no budgets                      → keeps FP32 accuracy?
#   budget   64 KB RAM budget (below the 104 KB all-INT8 peak, so the memory filter forces sub-8-bit
#            layers) and a latency target 10% above all-INT8 on the STM32H747 → meets both?
#   sweep    λ ∈ {0, 1, 5} on stm32h747 and λ ∈ {1, 5} on the seed's `artifact` table (λ = 0 ignores
#            the hardware, so its network is the stm32h747 one; predict it on `artifact` with
#            tensor_latency_predictor.py --precision_mapping_file .../mapping.json --hardware artifact)
# Usage: bash benchmarks/digits_stage1_experiments.sh PRETRAINED_BEST_PT [OUT_DIR] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
PRE=${1:?usage: $0 PRETRAINED_BEST_PT [OUT_DIR] [JOBS]}
OUT=${2:-runs/digits_stage1}
JOBS=${3:-2}
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD ADAPTQNET_COMPILE=${ADAPTQNET_COMPILE:-off}
mkdir -p "$OUT/analysis" "$OUT/logs"
for spec in "512 all" "64 all"; do
  set -- $spec
  extra=(); [ "$2" != all ] && extra=(--precisions "$2")
  $PY tensor_analysis/tensor_memory_filter.py --model_type mobilenetv2 --width_mult 0.35 --input_size 32 \
      --num_classes 10 --memory_threshold "$1" "${extra[@]}" \
      --output_file "$OUT/analysis/mbv2_w0.35_s32_${1}kb_$2.json" > "$OUT/logs/analysis_${1}_$2.txt"
done
COMMON="--pretrained $PRE --input_size 32 --epochs ${EPOCHS:-4} --warmup_epochs 1 --finetune_epochs ${FT_EPOCHS:-2} --threads 1 --device cpu"
A=$OUT/analysis/mbv2_w0.35_s32
{
  echo "budget --tensor_analysis_json ${A}_64kb_all.json --hardware stm32h747 --hardware_weight 2 --memory_budget_kb 64 --latency_target_ms 66.2"
  for lam in 0 1 5; do
    echo "sweep_stm32h747_lam${lam} --tensor_analysis_json ${A}_512kb_all.json --hardware stm32h747 --hardware_weight $lam"
  done
  for lam in 1 5; do
    echo "sweep_artifact_lam${lam} --tensor_analysis_json ${A}_512kb_all.json --hardware artifact --hardware_weight $lam"
  done
} | xargs -P "$JOBS" -L 1 bash -c 'name=$0; [ -f "'"$OUT"'/$name/summary.json" ] && exit 0;
    '"$PY"' Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py "$@" '"$COMMON"' --output_dir "'"$OUT"'/$name" \
    > "'"$OUT"'/logs/$name.log" 2>&1 || echo "FAILED: $name (see '"$OUT"'/logs/$name.log)"'
$PY Search_CIFAR10/dnas/summarize_runs.py "$OUT" --markdown "$OUT/summary.md"
