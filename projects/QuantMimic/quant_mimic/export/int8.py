"""Int8 in OpenVINO: NNCF post-training quantization of the exported student, calibrated on val
images, saved as an OpenVINO IR (``.xml`` + ``.bin``) that carries the ONNX file's contract.

Measured per host and runtime (``tools/benchmark_int8.py``, docs/SPEED.md): on a 2-core Intel Xeon
with AMX, OpenVINO int8 runs the ResNet18-1-16 C4 student 1.4× faster than OpenVINO fp32 with an AP
change inside ±2.3 on three trained students; the VGG-1-32 R-FCN student gains nothing (its 2-16
channel convolutions), and onnxruntime's int8 (wide layers only) is no faster than its fp32 on
either. So int8 is an export option (``tools/export_student.py --int8``), never a default.

Needs ``nncf`` (``pip install nncf``; installed by ``tools/install_deps.sh``).
"""

import json
from typing import List

import numpy as np

from .contract import RT_INFO_PATH, read_contract

__all__ = ["quantize_openvino_int8"]


def quantize_openvino_int8(onnx_path: str, out_xml: str, images: List[np.ndarray]) -> str:
    """
    Quantize the student ONNX file to int8 in OpenVINO with NNCF (``nncf.quantize``, its default
    mixed preset: symmetric int8 weights, asymmetric activations), calibrated on ``images``
    ((C, H, W) float32 as the model receives them), and save the IR to ``out_xml`` with the ONNX
    file's contract (``threshold_source`` and ``precision`` "int8" added).
    """
    import nncf
    import openvino as ov

    contract = read_contract(onnx_path)
    core = ov.Core()
    model = core.read_model(onnx_path)
    name = model.inputs[0].get_any_name()
    quantized = nncf.quantize(
        model, nncf.Dataset(list(images), lambda x: {name: x}), subset_size=len(images)
    )
    contract = dict(contract, precision="int8", calibration_images=len(images))
    quantized.set_rt_info(json.dumps(contract, sort_keys=True), RT_INFO_PATH)
    ov.save_model(quantized, out_xml)
    return out_xml
