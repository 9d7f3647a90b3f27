import os
import pickle
import sys
import tempfile
import unittest

import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer

from .common import REPO_ROOT, build_model_no_weights, get_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from convert_torchvision_resnet import convert_torchvision_resnet  # noqa: E402


class TestConvertTorchvisionResNet(unittest.TestCase):
    def test_weights_land_in_backbone_and_res5_head(self):
        torch.manual_seed(0)
        tv = torchvision.models.resnet18(weights=None).state_dict()
        converted = convert_torchvision_resnet(tv)
        self.assertEqual(len(converted), len([k for k in tv if not k.startswith("fc.")]) - 20)
        cfg = get_config("PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml")
        model = build_model_no_weights(cfg)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "R-18.pkl")
            with open(path, "wb") as f:
                pickle.dump(
                    {"model": converted, "__author__": "torchvision", "matching_heuristics": True},
                    f,
                )
            DetectionCheckpointer(model).load(path)
        sd = model.state_dict()
        pairs = {
            "backbone.stem.conv1.weight": "conv1.weight",
            "backbone.stem.conv1.norm.running_var": "bn1.running_var",
            "backbone.res2.1.conv2.weight": "layer1.1.conv2.weight",
            "backbone.res4.0.shortcut.norm.bias": "layer3.0.downsample.1.bias",
            "roi_heads.res5.0.conv1.weight": "layer4.0.conv1.weight",
            "roi_heads.res5.1.conv2.norm.weight": "layer4.1.bn2.weight",
        }
        for ours, theirs in pairs.items():
            self.assertTrue(torch.equal(sd[ours], tv[theirs]), ours)


if __name__ == "__main__":
    unittest.main()
