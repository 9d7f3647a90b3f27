#!/usr/bin/env bash
# The paper's three-stage pipeline on a built-in synthetic benchmark (configs/Synth):
#   teacher -> quantized teacher -> students (scratch, Li et al. mimic, Quantization Mimic, and the
#   Table 4 "teacher-only" quantization).
# Usage: [BENCH=faces|voc] tools/run_synth_pipeline.sh [STAGE ...]   (default: all stages, in order)
#   STAGE ∈ data teacher quantized scratch mimic quant_mimic teacher_only summary
#   faces: R-FCN, VGG-1-4 -> VGG-1-32 (the paper's WIDER FACE recipe);
#   voc:   Faster R-CNN C4, ResNet18 -> ResNet18-1-16 (the paper's Pascal VOC recipe).
# Environment: PYTHON (default python3), NUM_GPUS (default 1), ITERS (teacher and student
# iterations, default: the configs'), QITERS (quantized finetuning iterations), OUTPUT_ROOT
# (default output/synth), DETECTRON2_DATASETS (default datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NUM_GPUS=${NUM_GPUS:-1}
BENCH=${BENCH:-faces}
ROOT_OUT=${OUTPUT_ROOT:-output/synth}
DATA=${DETECTRON2_DATASETS:-datasets}
STAGES=${*:-data teacher quantized scratch mimic quant_mimic teacher_only summary}
case $BENCH in
  faces) T=rfcn_VGG-1-4; S=rfcn_VGG-1-32; TN=VGG-1-4; SN=VGG-1-32; KIND=faces; DDIR=widerface ;;
  voc) T=faster_rcnn_R18_C4; S=faster_rcnn_R18-1-16_C4; TN=R18_C4; SN=R18-1-16_C4; KIND=voc; DDIR=VOC2007 ;;
  *) echo "unknown BENCH $BENCH" >&2; exit 2 ;;
esac
iters() { [ -n "${1:-}" ] && echo "SOLVER.MAX_ITER $1 SOLVER.STEPS ($(( $1 * 4 / 5 )),)"; }
train() {  # config name, output name, extra options...
  local cfg=configs/Synth/$1.yaml dir=$ROOT_OUT/$2; shift 2
  $PY train_net.py --num-gpus "$NUM_GPUS" --config-file "$cfg" OUTPUT_DIR "$dir" "$@"
}
TEACHER_W=$ROOT_OUT/${TN}_teacher/model_final.pth
QTEACHER_W=$ROOT_OUT/${TN}_teacher_quantized/model_final.pth
for stage in $STAGES; do
  echo "=== stage: $stage ($(date +%T))"
  case $stage in
    data)
      [ -d "$DATA/synth/$DDIR" ] || $PY -m quant_mimic.data.synthetic --out "$DATA/synth/$DDIR" \
        --kind $KIND --num-train 300 --num-val 100 --seed 0 ;;
    teacher) train ${T}_teacher ${TN}_teacher $(iters "${ITERS:-}") ;;
    quantized)
      train ${T}_teacher_quantized ${TN}_teacher_quantized MODEL.WEIGHTS "$TEACHER_W" \
        ${QITERS:+SOLVER.MAX_ITER $QITERS} ;;
    scratch) train ${S}_scratch ${SN}_scratch $(iters "${ITERS:-}") ;;
    mimic) train ${S}_mimic ${SN}_mimic $(iters "${ITERS:-}") MODEL.MIMIC.TEACHER.WEIGHTS "$TEACHER_W" ;;
    quant_mimic)
      train ${S}_quant_mimic ${SN}_quant_mimic $(iters "${ITERS:-}") \
        MODEL.MIMIC.TEACHER.WEIGHTS "$QTEACHER_W" ;;
    teacher_only)
      train ${S}_quant_mimic_teacher_only ${SN}_quant_mimic_teacher_only $(iters "${ITERS:-}") \
        MODEL.MIMIC.TEACHER.WEIGHTS "$QTEACHER_W" ;;
    summary) $PY tools/summarize_results.py "$ROOT_OUT"/${TN}_* "$ROOT_OUT"/${SN}_* ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
