import unittest

import torch

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import ShapeSpec, build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from quant_mimic.divided_resnet import build_divided_res5_block, divide_channels
from quant_mimic.vgg import VGG16

from .common import get_config

R18 = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml"
ALL_STAGES = ["res2", "res3", "res4", "res5"]


def num_params(m):
    return sum(p.numel() for p in m.parameters())


def resnet_cfg(depth, divisor, out_features=ALL_STAGES, norm="BN", freeze_at=0):
    opts = [
        "MODEL.RESNETS.DEPTH", depth,
        "MODEL.RESNETS.CHANNEL_DIVISOR", divisor,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth in (18, 34) else 256,
        "MODEL.RESNETS.OUT_FEATURES", out_features,
        "MODEL.RESNETS.NORM", norm,
        "MODEL.BACKBONE.FREEZE_AT", freeze_at,
    ]  # fmt: skip
    return get_config(R18, opts)


class TestDividedResNet(unittest.TestCase):
    def test_channels_and_strides(self):
        for depth in (18, 34, 50):
            for n in (1, 4, 16, 32):
                cfg = resnet_cfg(depth, n)
                model = build_backbone(cfg, ShapeSpec(channels=3))
                shapes = model.output_shape()
                base = 64 if depth in (18, 34) else 256
                for i, name in enumerate(ALL_STAGES):
                    self.assertEqual(
                        shapes[name].channels, max(1, base * 2**i // n), (depth, n, name)
                    )
                    self.assertEqual(shapes[name].stride, 4 * 2**i)
                self.assertEqual(model.stem.out_channels, max(1, 64 // n))
                out = model(torch.randn(1, 3, 64, 96))
                self.assertEqual(tuple(out["res5"].shape), (1, shapes["res5"].channels, 2, 3))

    def test_divisor_1_matches_stock_detectron2(self):
        for depth in (18, 50):
            cfg = resnet_cfg(depth, 1)
            ours = build_backbone(cfg, ShapeSpec(channels=3))
            stock = build_resnet_backbone(cfg, ShapeSpec(channels=3))
            self.assertEqual(num_params(ours), num_params(stock))
            self.assertEqual(
                {k: v.shape for k, v in ours.state_dict().items()},
                {k: v.shape for k, v in stock.state_dict().items()},
            )
        # ResNet-18 backbone without fc: 11,176,512 parameters (torchvision resnet18 minus its fc).
        self.assertEqual(
            num_params(build_backbone(resnet_cfg(18, 1), ShapeSpec(channels=3))), 11176512
        )

    def test_min_one_channel_and_bad_divisor(self):
        self.assertEqual(divide_channels(64, 32), 2)
        self.assertEqual(divide_channels(16, 32), 1)
        with self.assertRaises(ValueError):
            divide_channels(64, 3)

    def test_freeze_at_and_norm(self):
        cfg = resnet_cfg(18, 16, norm="FrozenBN", freeze_at=2)
        model = build_backbone(cfg, ShapeSpec(channels=3))
        self.assertTrue(all(not p.requires_grad for p in model.stem.parameters()))
        self.assertTrue(all(not p.requires_grad for p in model.res2.parameters()))
        self.assertTrue(all(p.requires_grad for p in model.res3.parameters()))
        self.assertIsInstance(model.stem.conv1.norm, FrozenBatchNorm2d)
        bn = build_backbone(resnet_cfg(18, 16), ShapeSpec(channels=3))
        self.assertIsInstance(bn.stem.conv1.norm, torch.nn.BatchNorm2d)

    def test_out_features_c4(self):
        cfg = resnet_cfg(18, 16, out_features=["res4"])
        model = build_backbone(cfg, ShapeSpec(channels=3))
        self.assertEqual(list(model.output_shape()), ["res4"])
        self.assertFalse(hasattr(model, "res5"))  # res5 lives in the C4 box head

    def test_res5_head_block(self):
        for depth, n, block in ((18, 16, "BasicBlock"), (50, 4, "BottleneckBlock")):
            res5, out_channels = build_divided_res5_block(resnet_cfg(depth, n))
            self.assertEqual(type(res5[0]).__name__, block)
            base = 512 if depth == 18 else 2048
            self.assertEqual(out_channels, base // n)
            in_ch = base // 2 // n
            y = res5(torch.randn(3, in_ch, 14, 14))
            self.assertEqual(tuple(y.shape), (3, base // n, 7, 7))


class TestDividedVGG(unittest.TestCase):
    def test_widths_and_strides(self):
        for n, conv5 in ((1, 512), (4, 128), (32, 16)):
            vgg = VGG16(channel_divisor=n, out_features=["vgg3", "vgg5"])
            shapes = vgg.output_shape()
            self.assertEqual(shapes["vgg5"].channels, conv5)
            self.assertEqual(shapes["vgg5"].stride, 16)
            self.assertEqual(shapes["vgg3"].stride, 4)
            convs = [m for m in vgg.modules() if isinstance(m, torch.nn.Conv2d)]
            self.assertEqual(len(convs), 13)
            out = vgg(torch.randn(1, 3, 96, 128))
            self.assertEqual(tuple(out["vgg5"].shape), (1, conv5, 6, 8))
            self.assertGreaterEqual(out["vgg5"].min().item(), 0.0)  # ends with ReLU
        # VGG16 conv layers: 14,714,688 parameters (torchvision vgg16.features).
        self.assertEqual(num_params(VGG16(out_features=["vgg5"])), 14714688)

    def test_grayscale_from_config(self):
        cfg = get_config(
            R18,
            ["MODEL.BACKBONE.NAME", "build_divided_vgg_backbone", "MODEL.VGG.CHANNEL_DIVISOR", 32,
             "MODEL.PIXEL_MEAN", [120.0], "MODEL.PIXEL_STD", [60.0], "INPUT.FORMAT", "L"],
        )  # fmt: skip
        vgg = build_backbone(cfg)
        self.assertEqual(vgg.vgg1.conv1_1.weight.shape[1], 1)
        out = vgg(torch.randn(2, 1, 50, 67))
        self.assertEqual(out["vgg5"].shape[1], 16)

    def test_norm_and_freeze(self):
        vgg = VGG16(channel_divisor=8, norm="BN", freeze_at=2)
        self.assertFalse(any(p.requires_grad for p in vgg.vgg2.parameters()))
        self.assertTrue(all(p.requires_grad for p in vgg.vgg3.parameters()))
        self.assertIsInstance(vgg.vgg1.conv1_1.norm, FrozenBatchNorm2d)
        self.assertIsInstance(vgg.vgg3.conv3_1.norm, torch.nn.BatchNorm2d)


if __name__ == "__main__":
    unittest.main()
