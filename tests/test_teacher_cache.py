"""The teacher-map cache (MODEL.MIMIC.TEACHER.CACHE_DIR, quant_mimic.teacher_cache): exact storage
of a quantized teacher's levels, float16 for a full-precision one, the same loss_mimic with and
without the cache through the real trainer, identity checks, corrupt entries, two processes filling
one cache, and augmentations that cannot be cached."""

import glob
import json
import os
import tempfile
import unittest

import numpy as np
import pytest
import torch

from quant_mimic import Trainer, setup_cfg
from quant_mimic.engine import launch
from quant_mimic.quantization import quantize
from quant_mimic.teacher_cache import FLOAT16_MAX, MapCodec, TeacherCacheError
from quant_mimic.teacher_cache_fill import fill_teacher_cache
from quant_mimic.testing import save_random_teacher, tiny_mimic_cfg, train_losses

from .common import CONFIG_DIR, random_inputs

QM = "Synth/faster_rcnn_R18-1-16_C4_quant_mimic.yaml"  # quantized ResNet18 teacher (res4)
LI = "Synth/faster_rcnn_R18-1-16_C4_mimic.yaml"  # full-precision teacher
RFCN_QM = "Synth/rfcn_VGG-1-32_quant_mimic.yaml"  # quantized VGG-1-4 teacher (vgg5, grey input)


def _cfg(tmp, config=QM, cache="", extra=(), max_iter=4, teacher=""):
    return tiny_mimic_cfg(tmp, config, cache, extra, max_iter, teacher)


class TestCodec(unittest.TestCase):
    def test_levels_are_exact(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 9, 11, generator=g) * 20
        for q in (
            {"stride": 1.0, "method": "uniform", "clip": None, "pow2_min_exp": -8},
            {"stride": 0.435, "method": "uniform", "clip": None, "pow2_min_exp": -8},
            {"stride": 0.3, "method": "uniform", "clip": 4.0, "pow2_min_exp": -8},
            {"stride": 1.0, "method": "pow2", "clip": None, "pow2_min_exp": -8},
            {"stride": 0.25, "method": "pow2", "clip": 8.0, "pow2_min_exp": -3},
        ):
            with self.subTest(q=q):
                codec = MapCodec(q, quantized=True)
                qx = quantize(x, **q)
                stored = codec.encode(qx, "res4")
                self.assertEqual(stored.dtype, np.uint8)
                self.assertTrue(torch.equal(codec.decode(stored), qx))  # bit-exact

    def test_level_beyond_uint8_and_off_codebook_refused(self):
        codec = MapCodec(
            {"stride": 0.01, "method": "uniform", "clip": None, "pow2_min_exp": -8}, True
        )
        with self.assertRaisesRegex(TeacherCacheError, "does not fit in uint8"):
            codec.encode(quantize(torch.full((1, 2, 2), 3.0), stride=0.01), "vgg5")
        with self.assertRaisesRegex(TeacherCacheError, "not on the code book"):
            codec.encode(torch.full((1, 2, 2), 0.123456), "vgg5")

    def test_float16_error_bound(self):
        codec = MapCodec(None, quantized=False)
        x = torch.randn(8, 20, 20) * 5
        stored = codec.encode(x, "res4")
        self.assertEqual(stored.dtype, np.float16)
        rel = ((codec.decode(stored) - x).abs() / x.abs().clamp(min=1e-4)).max()
        self.assertLessEqual(float(rel), 2.0**-11)  # float16's unit roundoff
        with self.assertRaisesRegex(TeacherCacheError, "float16"):
            codec.encode(torch.full((1, 1, 1), FLOAT16_MAX * 2), "res4")


class TestCachedTraining(unittest.TestCase):
    @pytest.mark.slow
    def test_same_loss_mimic_with_and_without_cache(self):
        for config, exact in ((QM, True), (LI, False)):
            with self.subTest(config=config), tempfile.TemporaryDirectory() as tmp:
                teacher = save_random_teacher(_cfg(tmp, config), os.path.join(tmp, "t.pth"), 3)
                plain, _ = train_losses(_cfg(tmp, config, teacher=teacher))
                cache = os.path.join(tmp, "cache")
                cold, model = train_losses(_cfg(tmp, config, cache, teacher=teacher))
                self.assertGreater(model.teacher_cache.misses, 0)  # lazy fill
                warm, model = train_losses(_cfg(tmp, config, cache, teacher=teacher))
                c = model.teacher_cache
                self.assertEqual((c.misses, c.rejected), (0, 0))  # every map read back
                self.assertGreater(c.hits, 0)
                self.assertEqual(len(plain), 4)
                self.assertTrue(all(v > 0 for v in plain), plain)
                for cached in (cold, warm):  # the cold run reads back what it wrote too
                    if exact:  # uint8 levels: bit-identical maps, identical losses
                        self.assertEqual(plain, cached)
                    else:  # float16: within its rounding (measured ≤ 2e-5 relative here)
                        np.testing.assert_allclose(cached, plain, rtol=2e-4)
                        self.assertNotEqual(plain, warm)  # the float16 maps were really used
                # the uint8 entries of the quantized teacher are a quarter of the float16 ones
                sizes = [os.path.getsize(p) for p in glob.glob(f"{cache}/entries/*/*.safetensors")]
                self.assertGreater(len(sizes), 0)

    def test_other_teacher_stride_or_size_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            a = save_random_teacher(_cfg(tmp), os.path.join(tmp, "a.pth"), 1)
            b = save_random_teacher(_cfg(tmp), os.path.join(tmp, "b.pth"), 2)
            inputs = random_inputs(_cfg(tmp), sizes=((96, 128),), num_boxes=(2,))
            inputs[0]["file_name"] = "x.png"

            def maps(teacher, extra=()):
                model = Trainer.build_model(_cfg(tmp, cache=cache, teacher=teacher, extra=extra))
                return model.train().teacher_maps(inputs)

            maps(a)
            maps(a)  # the same teacher and input rules: opens
            # the same teacher weights, quantized with another stride s (its own config)
            base = os.path.join(CONFIG_DIR, "Synth", "faster_rcnn_R18_C4_teacher_quantized.yaml")
            half = os.path.join(tmp, "teacher_s05.yaml")
            with open(half, "w") as f:
                f.write(f"_BASE_: {base}\nMODEL:\n  QUANTIZATION:\n    STRIDE: 0.5\n")
            for teacher, extra, named in (
                (b, (), "teacher_sha256"),
                (a, ("MODEL.MIMIC.TEACHER.CONFIG_FILE", half), "STRIDE"),
                (a, ("INPUT.MIN_SIZE_TRAIN", (80,)), "INPUT.MIN_SIZE_TRAIN"),
            ):
                with self.subTest(named=named), self.assertRaisesRegex(TeacherCacheError, named):
                    maps(teacher, extra)

    def test_cache_of_another_format_is_refused_naming_versions(self):
        from quant_mimic.teacher_cache import FORMAT_VERSION, MANIFEST, TeacherMapCache

        with tempfile.TemporaryDirectory() as tmp:
            cfg = _cfg(tmp, cache=os.path.join(tmp, "cache"))
            model = Trainer.build_model(cfg).train()
            identity = model.teacher_cache.identity
            with open(os.path.join(tmp, "cache", MANIFEST), "w") as f:
                json.dump(dict(identity, format=1), f)  # a cache of the hand-written format 1
            with self.assertRaisesRegex(TeacherCacheError, f"format 1.*format {FORMAT_VERSION}"):
                TeacherMapCache(os.path.join(tmp, "cache"), identity)

    def test_corrupt_entry_is_recomputed(self):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _cfg(tmp, cache=os.path.join(tmp, "cache"))
            model = Trainer.build_model(cfg).train()
            inputs = random_inputs(cfg, sizes=((96, 128), (64, 96)), num_boxes=(1, 1))
            for k, x in enumerate(inputs):
                x["file_name"] = f"{k}.png"
            reference = model.teacher_maps(inputs)
            entries = sorted(glob.glob(os.path.join(tmp, "cache", "entries", "*", "*.safetensors")))
            self.assertEqual(len(entries), 2)
            for path, damage in zip(entries, ("truncate", "flip")):
                data = open(path, "rb").read()
                with open(path, "wb") as f:  # a kill mid-write, or a bad disk
                    if damage == "truncate":
                        f.write(data[: len(data) // 2])
                    else:
                        f.write(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
            cache = model.teacher_cache
            again = model.teacher_maps(inputs)
            self.assertEqual(cache.rejected, 2)  # detected, not read
            for k in reference:
                self.assertTrue(torch.equal(reference[k], again[k]))
            model.teacher_maps(inputs)  # rewritten: read back now
            self.assertEqual((cache.rejected, cache.hits), (2, 2))

    def test_padding_is_part_of_the_key(self):
        # An image's map near its border depends on how far its batch is padded: the same image
        # alone and beside a larger one are two entries, each equal to the teacher's own result.
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _cfg(tmp, cache=os.path.join(tmp, "cache"))
            model = Trainer.build_model(cfg).train()
            off = Trainer.build_model(_cfg(tmp)).train()
            off.load_state_dict(model.state_dict())
            off.teacher.load_state_dict(model.teacher.state_dict())
            a, b = random_inputs(cfg, sizes=((96, 128), (128, 160)), num_boxes=(1, 1))
            a["file_name"], b["file_name"] = "a.png", "b.png"
            for batch in ([a], [a, b], [a], [a, b]):
                got, want = model.teacher_maps(batch), off.teacher_maps(batch)
                for k in want:
                    self.assertTrue(torch.equal(got[k], want[k]))
            c = model.teacher_cache
            self.assertEqual((c.misses, c.hits, c.size_on_disk()[0]), (3, 3, 3))

    @pytest.mark.slow
    def test_two_processes_fill_one_cache(self):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            teacher = save_random_teacher(_cfg(tmp), os.path.join(tmp, "t.pth"), 5)
            launch(_fill_worker, 2, dist_url="auto", args=(tmp, cache, teacher))
            cfg = _cfg(tmp, cache=cache, teacher=teacher)
            model = Trainer.build_model(cfg).train()
            stats = fill_teacher_cache(cfg, model)  # every input read back, none computed
            self.assertEqual(stats["computed"], 0)
            self.assertEqual(stats["inputs"], 2 * stats["images"])  # as read and flipped
            self.assertEqual(stats["entries"], stats["inputs"])
            self.assertEqual(model.teacher_cache.rejected, 0)
            # the stored maps are the teacher's
            off = Trainer.build_model(_cfg(tmp, teacher=teacher)).train()
            inputs = random_inputs(cfg, sizes=((96, 128),), num_boxes=(1,))
            inputs[0]["file_name"] = "y.png"
            model.teacher_maps(inputs)
            cached, direct = model.teacher_maps(inputs), off.teacher_maps(inputs)
            for k in direct:
                self.assertTrue(torch.equal(cached[k], direct[k]))
            # training on the cache the two ranks filled: every map read, the loss_mimic of a
            # run whose one process fills its own cache
            two, read = train_losses(_cfg(tmp, cache=cache, teacher=teacher))
            one, _ = train_losses(_cfg(tmp, cache=os.path.join(tmp, "cache1"), teacher=teacher))
            self.assertEqual(read.teacher_cache.misses, 0)
            self.assertGreater(read.teacher_cache.hits, 0)
            torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=0, atol=0)


class TestCacheTeacherTool(unittest.TestCase):
    @pytest.mark.slow
    def test_prefill_command_line(self):
        import subprocess
        import sys

        from quant_mimic.pipeline.plan import generate_data, load_preset

        from .common import REPO_ROOT

        with tempfile.TemporaryDirectory() as tmp:
            generate_data("faces", load_preset("smoke", "faces"), tmp, False)
            qm = os.path.join(CONFIG_DIR, RFCN_QM)
            teacher = save_random_teacher(
                setup_cfg(qm, ["MODEL.MIMIC.TEACHER.WEIGHTS", "", "MODEL.DEVICE", "cpu"]),
                os.path.join(tmp, "t.pth"),
                4,
            )
            cache = os.path.join(tmp, "cache")
            cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "cache_teacher.py")]
            cmd += ["--config-file", qm, "MODEL.MIMIC.TEACHER.WEIGHTS", teacher]
            cmd += ["MODEL.MIMIC.TEACHER.CACHE_DIR", cache, "MODEL.DEVICE", "cpu"]
            env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(tmp, "datasets"))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            self.assertIn("Teacher cache:", proc.stderr + proc.stdout)  # the progress line
            self.assertRegex(proc.stdout, r"10 entries, [0-9.]+ MiB on disk")  # 5 images x 2 flips
            self.assertEqual(
                len(glob.glob(os.path.join(cache, "entries", "*", "*.safetensors"))), 10
            )


def _fill_worker(tmp, cache, teacher):
    # both ranks fill every image (lazily, as two training ranks would): the same entries, at once
    from detectron2.data import get_detection_dataset_dicts

    from quant_mimic.data import NamedErrorDatasetMapper

    cfg = _cfg(tmp, cache=cache, teacher=teacher)
    model = Trainer.build_model(cfg).train()
    mapper = NamedErrorDatasetMapper(cfg, True)
    for _ in range(3):  # random flips: both forms of most images
        for d in get_detection_dataset_dicts(cfg.DATASETS.TRAIN):
            model.teacher_maps([mapper(d)])
    fill_teacher_cache(cfg, model)


class TestUncacheableInput(unittest.TestCase):
    def test_refused_at_start_up(self):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            for extra, named in (
                (("INPUT.MIN_SIZE_TRAIN", (80, 96)), "INPUT.MIN_SIZE_TRAIN"),
                (("INPUT.MIN_SIZE_TRAIN_SAMPLING", "range", "INPUT.MIN_SIZE_TRAIN", (80, 96)),
                 "INPUT.MIN_SIZE_TRAIN_SAMPLING"),
                (("INPUT.CROP.ENABLED", True), "INPUT.CROP.ENABLED"),
            ):  # fmt: skip
                with self.subTest(named=named), self.assertRaisesRegex(TeacherCacheError, named):
                    Trainer.build_model(_cfg(tmp, cache=cache, extra=extra))
                # without the cache the same config builds
                Trainer.build_model(_cfg(tmp, extra=extra))

    def test_changing_input_refused(self):
        # colour jitter in a custom mapper: one file reaching the teacher in ever new forms
        with tempfile.TemporaryDirectory() as tmp:
            # the tiny set has 6 classes (the face config 1: a mismatch is an error at set-up)
            extra = ("MODEL.ROI_HEADS.NUM_CLASSES", 6)
            cfg = _cfg(tmp, config=RFCN_QM, cache=os.path.join(tmp, "cache"), extra=extra)
            model = Trainer.build_model(cfg).train()
            base = random_inputs(cfg, sizes=((96, 128),), num_boxes=(1,))[0]
            with self.assertRaisesRegex(TeacherCacheError, "3 different forms"):
                for k in range(3):
                    x = dict(
                        base, image=(base["image"] * (0.8 + 0.1 * k)).round(), file_name="j.png"
                    )
                    model.teacher_maps([x])


if __name__ == "__main__":
    unittest.main()


class TestCacheIdentityUpgrade(unittest.TestCase):
    def test_teacher_mimic_and_fcos_keys_do_not_invalidate_a_cache(self):
        from quant_mimic.teacher_cache import FORMAT_VERSION, TeacherMapCache

        identity = {
            "format": FORMAT_VERSION,
            "teacher_config": {"MODEL.RESNETS.DEPTH": 18},
            "features": ["f"],
        }
        identity.update(quantizer=None, quantized_features=[])
        with tempfile.TemporaryDirectory() as d:
            keys = {**identity["teacher_config"], "MODEL.MIMIC.X": 1, "MODEL.FCOS.NORM": "GN"}
            old = dict(identity, teacher_config=keys)
            with open(os.path.join(d, "manifest.json"), "w") as f:
                json.dump(old, f)  # written by a version that kept the MIMIC and FCOS keys
            TeacherMapCache(d, identity)  # opens
            other = dict(identity, teacher_config={"MODEL.RESNETS.DEPTH": 34})
            with self.assertRaisesRegex(TeacherCacheError, "MODEL.RESNETS.DEPTH"):
                TeacherMapCache(d, other)
