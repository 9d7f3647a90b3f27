#!/usr/bin/env bash
# The paper's three-stage pipeline on the built-in synthetic faces benchmark (configs/Synth):
#   teacher -> quantized teacher -> students (scratch, Li et al. mimic, Quantization Mimic).
# Usage: tools/run_synth_pipeline.sh [STAGE ...]   (default: all stages, in order)
#   STAGE ∈ data teacher quantized scratch mimic quant_mimic teacher_only summary
# Environment: PYTHON (default python3), NUM_GPUS (default 1), ITERS (student/teacher iterations,
# default: the configs'), QITERS (quantized finetuning iterations), OUTPUT_ROOT (default output/synth).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NUM_GPUS=${NUM_GPUS:-1}
ROOT_OUT=${OUTPUT_ROOT:-output/synth}
DATA=${DETECTRON2_DATASETS:-datasets}
STAGES=${*:-data teacher quantized scratch mimic quant_mimic teacher_only summary}
iters() { [ -n "${1:-}" ] && echo "SOLVER.MAX_ITER $1 SOLVER.STEPS ($(( $1 * 4 / 5 )),)"; }
train() {  # config, output dir, extra options...
  local cfg=$1 dir=$2; shift 2
  $PY train_net.py --num-gpus "$NUM_GPUS" --config-file "$cfg" OUTPUT_DIR "$dir" "$@"
}
for stage in $STAGES; do
  echo "=== stage: $stage ($(date +%T))"
  case $stage in
    data)
      [ -d "$DATA/synth/widerface" ] || $PY -m quant_mimic.data.synthetic --out "$DATA/synth/widerface" \
        --kind faces --num-train 300 --num-val 100 --seed 0 ;;
    teacher)
      train configs/Synth/rfcn_VGG-1-4_teacher.yaml "$ROOT_OUT/VGG-1-4_teacher" $(iters "${ITERS:-}") ;;
    quantized)
      train configs/Synth/rfcn_VGG-1-4_teacher_quantized.yaml "$ROOT_OUT/VGG-1-4_teacher_quantized" \
        MODEL.WEIGHTS "$ROOT_OUT/VGG-1-4_teacher/model_final.pth" ${QITERS:+SOLVER.MAX_ITER $QITERS} ;;
    scratch)
      train configs/Synth/rfcn_VGG-1-32_scratch.yaml "$ROOT_OUT/VGG-1-32_scratch" $(iters "${ITERS:-}") ;;
    mimic)
      train configs/Synth/rfcn_VGG-1-32_mimic.yaml "$ROOT_OUT/VGG-1-32_mimic" $(iters "${ITERS:-}") \
        MODEL.MIMIC.TEACHER.WEIGHTS "$ROOT_OUT/VGG-1-4_teacher/model_final.pth" ;;
    quant_mimic)
      train configs/Synth/rfcn_VGG-1-32_quant_mimic.yaml "$ROOT_OUT/VGG-1-32_quant_mimic" $(iters "${ITERS:-}") \
        MODEL.MIMIC.TEACHER.WEIGHTS "$ROOT_OUT/VGG-1-4_teacher_quantized/model_final.pth" ;;
    teacher_only)
      train configs/Synth/rfcn_VGG-1-32_quant_mimic_teacher_only.yaml "$ROOT_OUT/VGG-1-32_quant_mimic_teacher_only" \
        $(iters "${ITERS:-}") MODEL.MIMIC.TEACHER.WEIGHTS "$ROOT_OUT/VGG-1-4_teacher_quantized/model_final.pth" ;;
    summary)
      $PY tools/summarize_results.py "$OUT"/* ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
