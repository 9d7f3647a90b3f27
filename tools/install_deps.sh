#!/usr/bin/env bash
# Installs QuantMimic's dependencies into the Python environment given as $1 (a python executable).
# Each step is skipped when what it installs is already importable at a suitable version, so a second
# run takes seconds, and an existing detectron2 (for example upstream, built with its CUDA ops) is kept.
set -euo pipefail
PY=${1:?usage: install_deps.sh PYTHON}
WHEELS=${WHEELS_DIR:-build/wheels}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# 1. torch + torchvision (pinned: the versions verified for this project).
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "[install] torch==2.14.1 torchvision==0.29.1"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi

# 2. detectron2: keep one that is already importable; otherwise the sal-detectron2 repackaging of
#    upstream main (a59f056). Its wheel is tagged cp310 but is pure Python apart from an optional _C.
if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[install] keeping detectron2 from $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  echo "[install] detectron2 via sal-detectron2==0.7.2"
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/sal_detectron2-0.7.2-cp310-none-any.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
      sal-detectron2==0.7.2 -d "$WHEELS"
  fi
  cp "$WHEELS"/sal_detectron2-0.7.2-cp310-none-any.whl "$WHEELS"/sal_detectron2-0.7.2-py3-none-any.whl
  pip_install --no-deps "$WHEELS"/sal_detectron2-0.7.2-py3-none-any.whl
fi

# 3. detectron2's runtime dependencies, the project's own, and the project in editable mode.
#    pip skips requirements that are already satisfied.
pip_install "setuptools<80" "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "omegaconf>=2.1,<2.4" \
  "hydra-core>=1.1" pycocotools matplotlib termcolor yacs tabulate cloudpickle tqdm tensorboard Pillow \
  opencv-python-headless scipy scikit-image onnx onnxruntime openvino nncf safetensors pytest pytest-xdist hypothesis black isort flake8
pip_install --no-build-isolation --no-deps -e .
"$PY" -c "import quant_mimic, detectron2, torch; print('[install] ok: torch', torch.__version__, \
'| detectron2', detectron2.__version__, '| quant_mimic', quant_mimic.__version__)"
