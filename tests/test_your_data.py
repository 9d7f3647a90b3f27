"""Your data (quant_mimic.data.data_file, docs/YOUR_DATA.md): a data file for a 3-class
COCO-json set (non-contiguous ids, an image without annotations, a crowd box) and a 3-class VOC-xml
set (no <pose>, decimal coordinates, .png images) through train_net.py --data with evaluation; class
counts checked at set-up; the teacher built from its run's config.yaml; bad data files refused
before anything is written."""

import json
import os
import tempfile
import unittest

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from quant_mimic import engine
from quant_mimic.data.data_file import DataFileError, read_data_file, register_data_file
from quant_mimic.data.voc import load_voc_instances
from quant_mimic.testing import (
    EXAMPLE_CLASSES,
    register_tiny_dataset,
    write_coco_example,
    write_voc_example,
)

from .common import CONFIG_DIR

# Small and fast on a CPU: tiny images, few proposals and RoIs, 2 iterations.
QUICK = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
    "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(120,)", "INPUT.MIN_SIZE_TEST", "120",
    "MODEL.DEVICE", "cpu", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
]  # fmt: skip


def _custom(name: str) -> str:
    return os.path.join(CONFIG_DIR, "Custom", name)


def _train(config: str, data: str, out: str, *opts) -> dict:
    argv = ["--config-file", config, "--data", data, "OUTPUT_DIR", out, *QUICK, *opts]
    engine.main(engine.build_parser().parse_args(argv))
    with open(os.path.join(out, "final_metrics.json")) as f:
        return json.load(f)


class TestDataFile(unittest.TestCase):
    def test_coco_ids_from_names_crowd_and_empty_images(self):
        with tempfile.TemporaryDirectory() as d:
            path = write_coco_example(d)
            spec = read_data_file(path)
            self.assertEqual(spec.names, list(EXAMPLE_CLASSES))
            reg = register_data_file(path)
            dicts = DatasetCatalog.get(reg.train[0])
            ids = {a["category_id"] for x in dicts for a in x["annotations"]}
            self.assertTrue(ids <= {0, 1, 2} and ids, ids)  # json ids 3, 7, 11 -> 0, 1, 2
            self.assertTrue(any(not x["annotations"] for x in dicts))  # the empty image is kept
            crowd = [a for x in dicts for a in x["annotations"] if a.get("iscrowd")]
            self.assertEqual(len(crowd), 1)
            meta = MetadataCatalog.get(reg.val)
            self.assertEqual(meta.evaluator_type, "coco")
            self.assertEqual(meta.thing_dataset_id_to_contiguous_id, {3: 0, 7: 1, 11: 2})
            # another order of names: ids follow the names, not the json
            other = os.path.join(d, "other.yaml")
            with open(path) as f, open(other, "w") as g:
                g.write(f.read().replace("[car, person, dog]", "[dog, car, person]"))
            reg2 = register_data_file(other)
            meta2 = MetadataCatalog.get(reg2.val)
            self.assertEqual(meta2.thing_dataset_id_to_contiguous_id, {3: 1, 7: 2, 11: 0})

    def test_voc_as_labelling_tools_write_it(self):
        with tempfile.TemporaryDirectory() as d:
            path = write_voc_example(d)
            spec = read_data_file(path)
            self.assertEqual(spec.names, sorted(EXAMPLE_CLASSES))  # from the xml, sorted
            dicts = load_voc_instances(spec.val.path, "val", spec.names)
            self.assertTrue(all(x["file_name"].endswith(".png") for x in dicts))
            self.assertTrue(all(os.path.isfile(x["file_name"]) for x in dicts))
            x0 = dicts[0]["annotations"][0]["bbox"][0]
            self.assertNotEqual(x0, int(x0))  # decimal coordinates kept

    def test_out_of_image_boxes_clipped_and_counted(self):
        with tempfile.TemporaryDirectory() as d:
            path = write_voc_example(d, num_train=2, num_val=1)
            anno = os.path.join(d, "VOCdevkit", "MyVOC", "Annotations", "img0000.xml")
            with open(anno) as f:
                text = f.read()
            with open(anno, "w") as f:
                f.write(text.replace("</annotation>", "<object><name>car</name><bndbox><xmin>150.5"
                                     "</xmin><ymin>-3</ymin><xmax>400</xmax><ymax>50.5</ymax>"
                                     "</bndbox></object></annotation>"))  # fmt: skip
            spec = read_data_file(path)
            with self.assertLogs("quant_mimic.data.voc", "WARNING") as logs:
                dicts = load_voc_instances(spec.train[0].path, "train", spec.names)
            self.assertIn("1 boxes clipped", logs.output[0])
            self.assertEqual(dicts[0]["annotations"][-1]["bbox"], [149.5, 0.0, 160.0, 50.5])

    def test_the_papers_layouts_go_through_the_same_door(self):
        from quant_mimic.data.synthetic import generate_faces

        with tempfile.TemporaryDirectory() as d:
            generate_faces(os.path.join(d, "widerface"), 3, 2, seed=0, size=(96, 128))
            path = os.path.join(d, "faces.yaml")
            with open(path, "w") as f:
                f.write("train: {widerface: widerface}\nval: {widerface: widerface}\n")
            reg = register_data_file(path)
            self.assertEqual(reg.names, ["face"])
            self.assertEqual(MetadataCatalog.get(reg.val).evaluator_type, "widerface")
            self.assertEqual(len(DatasetCatalog.get(reg.train[0])), 3)
            cfg = engine.get_config(
                os.path.join(CONFIG_DIR, "WIDERFace", "rfcn_VGG-1-32_scratch.yaml"),
                ["DATASETS.DATA_FILE", path],
            )
            self.assertEqual(cfg.DATASETS.TEST, (reg.val,))
            # a list of train sets is concatenated, as DATASETS.TRAIN does
            with open(path, "w") as f:
                f.write("train:\n- {widerface: widerface}\n- {widerface: widerface, split: val}\n"
                        "val: {widerface: widerface}\n")  # fmt: skip
            self.assertEqual(len(register_data_file(path).train), 2)


class TestBadDataFiles(unittest.TestCase):
    def _refused(self, d, text, *needles):
        path = os.path.join(d, "bad.yaml")
        with open(path, "w") as f:
            f.write(text)
        out = os.path.join(d, "run")
        with self.assertRaises(DataFileError) as e:
            argv = ["--config-file", _custom("faster_rcnn_R18-1-16_C4_scratch.yaml"), "--data",
                    path, "OUTPUT_DIR", out, *QUICK]  # fmt: skip
            engine.main(engine.build_parser().parse_args(argv))
        for needle in (path,) + needles:
            self.assertIn(needle, str(e.exception))
        self.assertFalse(os.path.exists(out), "nothing is written when set-up fails")

    def test_each_problem_names_the_file_and_what(self):
        with tempfile.TemporaryDirectory() as d:
            coco = write_coco_example(d)
            train = "train:\n  coco: annotations/instances_train.json\n  images: images/train\n"
            val = "val:\n  coco: annotations/instances_val.json\n  images: images/val\n"
            self._refused(d, train, "no 'val'")
            self._refused(d, val, "no 'train'")
            self._refused(d, train.replace("images/train", "images/nope") + val, "images/nope")
            self._refused(d, "names: [car, dog]\n" + train + val, "disagree", "person")
            js = os.path.join(d, "annotations", "instances_val.json")
            data = json.load(open(js))
            json.dump({"annotations": data["annotations"], "categories": data["categories"]},
                      open(os.path.join(d, "noimages.json"), "w"))  # fmt: skip
            self._refused(d, train + val.replace("annotations/instances_val.json", "noimages.json"),
                          "no 'images' list")  # fmt: skip
            data["categories"] = data["categories"][:2]
            json.dump(data, open(os.path.join(d, "nocat.json"), "w"))
            self._refused(d, train + val.replace("annotations/instances_val.json", "nocat.json"),
                          "category id(s) [11]")  # fmt: skip
            del coco
        with tempfile.TemporaryDirectory() as d:
            write_voc_example(d)
            voc = os.path.join(d, "VOCdevkit", "MyVOC")
            with open(os.path.join(voc, "ImageSets", "Main", "val.txt"), "a") as f:
                f.write("ghost\n")
            spec = "train:\n  voc: VOCdevkit/MyVOC\nval:\n  voc: VOCdevkit/MyVOC\n"
            self._refused(d, spec, "val.txt", "'ghost'")
        with tempfile.TemporaryDirectory() as d:
            write_voc_example(d)
            voc = os.path.join(d, "VOCdevkit", "MyVOC")
            with open(os.path.join(voc, "Annotations", "img0000.xml"), "w") as f:
                f.write("<svg><object/></svg>")
            with self.assertRaisesRegex(ValueError, "img0000.xml: not a VOC annotation"):
                load_voc_instances(voc, "train", list(EXAMPLE_CLASSES))


class TestNumClasses(unittest.TestCase):
    def test_mismatch_is_an_error_at_setup_naming_everything(self):
        with tempfile.TemporaryDirectory() as d:
            name = register_tiny_dataset("qm_three_classes", d, num_classes=3)
            opts = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"]
            path = os.path.join(CONFIG_DIR, "WIDERFace", "rfcn_VGG-1-32_scratch.yaml")
            with self.assertRaises(ValueError) as e:
                engine.setup_cfg(path, opts)
            for needle in (name, "3 classes", "MODEL.ROI_HEADS.NUM_CLASSES = 1", "--data"):
                self.assertIn(needle, str(e.exception))
        # built-in datasets too: the 20-class VOC configs on the 6-class synthetic set
        voc = os.path.join(
            CONFIG_DIR, "PascalVOC-Detection", "faster_rcnn_R18-1-16_C4_scratch.yaml"
        )
        with self.assertRaisesRegex(ValueError, "synth_voc_trainval.*6 classes.*= 20"):
            engine.setup_cfg(voc, ["DATASETS.TRAIN", "('synth_voc_trainval',)"])

    def test_data_file_sets_every_head_and_the_teacher(self):
        with tempfile.TemporaryDirectory() as d:
            path = write_voc_example(d, num_train=2, num_val=1)
            for config in ("rfcn_VGG-1-32_quant_mimic.yaml", "faster_rcnn_R18-1-16_C4_mimic.yaml",
                           "faster_rcnn_R18-1-16_FPN_quant_mimic.yaml"):  # fmt: skip
                cfg = engine.get_config(
                    _custom(config), ["DATASETS.DATA_FILE", path, "MODEL.MIMIC.TEACHER.WEIGHTS", ""]
                )
                self.assertEqual(cfg.MODEL.ROI_HEADS.NUM_CLASSES, 3)
                self.assertEqual(cfg.MODEL.RETINANET.NUM_CLASSES, 3)
                from quant_mimic.teacher import build_teacher_cfg

                self.assertEqual(build_teacher_cfg(cfg).MODEL.ROI_HEADS.NUM_CLASSES, 3)
                cascade = engine.get_config(
                    os.path.join(CONFIG_DIR, "Synth", "cascade_rcnn_R18-1-16_FPN_quant_mimic.yaml"),
                    ["DATASETS.DATA_FILE", path, "MODEL.MIMIC.TEACHER.WEIGHTS", ""],
                )
                self.assertEqual(cascade.MODEL.ROI_HEADS.NUM_CLASSES, 3)


class TestTrainNetOnYourData(unittest.TestCase):
    def test_coco_json_trains_and_evaluates_with_coco_ap(self):
        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"))
            out = os.path.join(d, "run")
            metrics = _train(_custom("faster_rcnn_R18-1-16_C4_scratch.yaml"), data, out)
            self.assertIn("bbox/AP", metrics)
            self.assertEqual({k for k in metrics if k.startswith("bbox/AP-")},
                             {f"bbox/AP-{c}" for c in EXAMPLE_CLASSES})  # fmt: skip
            # the run's config.yaml holds the data file: evaluation needs nothing more
            res = engine.main(engine.build_parser().parse_args(
                ["--config-file", os.path.join(out, "config.yaml"), "--eval-only",
                 "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")]))  # fmt: skip
            self.assertAlmostEqual(res["bbox"]["AP"], metrics["bbox/AP"], places=6)

    @pytest.mark.slow
    def test_voc_xml_teacher_then_student_built_from_the_teacher_run(self):
        with tempfile.TemporaryDirectory() as d:
            data = write_voc_example(os.path.join(d, "data"))
            teacher = os.path.join(d, "teacher")
            _train(_custom("faster_rcnn_R18_C4_teacher.yaml"), data, teacher)
            weights = os.path.join(teacher, "model_final.pth")
            # the repository's teacher yaml, the run's weights: the run's config.yaml builds it
            cfg = engine.setup_cfg(
                _custom("faster_rcnn_R18-1-16_C4_mimic.yaml"),
                ["MODEL.MIMIC.TEACHER.WEIGHTS", weights, "DATASETS.DATA_FILE", data],
            )
            self.assertEqual(
                cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE, os.path.join(teacher, "config.yaml")
            )
            student = os.path.join(d, "student")
            metrics = _train(
                _custom("faster_rcnn_R18-1-16_C4_mimic.yaml"), data, student,
                "MODEL.MIMIC.TEACHER.WEIGHTS", weights,
            )  # fmt: skip
            for key in ("bbox/AP50", "bbox/AP50_11point", "bbox/AP50_area"):
                self.assertIn(key, metrics)
            # a teacher config named on the command line wins; a wrong one is an error naming it,
            # the mis-shaped keys once, and the fix
            wrong = os.path.join(CONFIG_DIR, "Custom", "faster_rcnn_R18_C4_teacher_quantized.yaml")
            cfg = engine.setup_cfg(
                _custom("faster_rcnn_R18-1-16_C4_mimic.yaml"),
                ["MODEL.MIMIC.TEACHER.WEIGHTS", weights, "MODEL.MIMIC.TEACHER.CONFIG_FILE",
                 os.path.join(CONFIG_DIR, "PascalVOC-Detection", "faster_rcnn_R18_C4_teacher.yaml")]
                + QUICK,
            )  # fmt: skip
            self.assertNotEqual(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE, wrong)
            with self.assertRaises(RuntimeError) as e:
                engine.Trainer.build_model(cfg)
            msg = str(e.exception)
            self.assertIn("faster_rcnn_R18_C4_teacher.yaml", msg)
            self.assertIn("roi_heads.box_predictor.cls_score.weight", msg)
            self.assertEqual(msg.count("roi_heads.box_predictor.cls_score.weight"), 1)
            self.assertIn("config.yaml", msg)

    def test_rfcn_vgg_family_on_voc(self):
        with tempfile.TemporaryDirectory() as d:
            data = write_voc_example(os.path.join(d, "data"), num_train=4, num_val=2)
            metrics = _train(_custom("rfcn_VGG-1-32_scratch.yaml"), data, os.path.join(d, "run"),
                             "MODEL.RFCN.OHEM.NUM_PROPOSALS", "64")  # fmt: skip
            self.assertIn("bbox/AP50", metrics)
            self.assertTrue(torch.isfinite(torch.tensor(metrics["bbox/AP50"])))


if __name__ == "__main__":
    unittest.main()


class TestPipelineOnYourData(unittest.TestCase):
    def _pipeline(self, data, out, *extra):
        from quant_mimic.pipeline import main

        argv = ["--data", data, "--preset", "smoke", "--out", out, "--no-mismatch", *extra]
        self.assertEqual(main(argv), 0)
        with open(os.path.join(out, "results.json")) as f:
            records = json.load(f)
        with open(os.path.join(out, "export", "export.json")) as f:
            export = json.load(f)
        return records, export

    @pytest.mark.slow
    def test_coco_and_voc_through_the_pipeline_to_onnx(self):
        import onnx

        with tempfile.TemporaryDirectory() as d:
            for family, data in (
                ("c4", write_coco_example(os.path.join(d, "coco"))),
                ("vgg", write_voc_example(os.path.join(d, "voc"))),
            ):
                out = os.path.join(d, f"run_{family}")
                records, export = self._pipeline(data, out, "--family", family)
                stages = [r["stage"] for r in records]
                self.assertEqual(stages, ["teacher", "teacher_quantized", "scratch", "mimic",
                                          "quant_mimic"])  # fmt: skip
                self.assertTrue(all("bbox/AP50" in r["metrics"] for r in records), records)
                # a mimic student's record keeps its last λ·L_m / L_det
                ratios = {r["stage"]: r.get("loss_ratio") for r in records}
                self.assertGreater(ratios["quant_mimic"], 0)
                self.assertIsNone(ratios["scratch"])
                self.assertTrue(export["ok"])
                self.assertEqual(len(export["parity"]), 2)
                onnx.checker.check_model(onnx.load(export["path"]))
                with open(os.path.join(out, "results.md")) as f:
                    table = f.read()
                self.assertIn(f"Your data ({family} family)", table)
                self.assertIn("λ·L_m / L_det", table)  # the mimic rows' measured balance
                # the schedule came from epochs: 8 training images (7 with boxes for COCO) / 2
                its = {r["stage"]: r["iterations"] for r in records}
                self.assertEqual(its["teacher"], 2)
                # resume: a second invocation trains nothing
                records2, _ = self._pipeline(data, out, "--family", family)
                self.assertEqual([r["wall_s"] for r in records2], [r["wall_s"] for r in records])

    def test_help_lists_every_preset_and_bad_combinations_fail(self):
        from quant_mimic.pipeline.cli import build_parser, parse_args

        text = build_parser().format_help()
        for preset in ("smoke", "cpu", "cpu_paper", "gpu", "paper"):
            self.assertIn(preset, text)
        with self.assertRaises(SystemExit):
            parse_args(["--data", "x.yaml", "--bench", "voc", "--preset", "smoke", "--out", "o"])


class TestToolsWithARun(unittest.TestCase):
    @pytest.mark.slow
    def test_export_and_demo_from_a_run_need_only_its_weights(self):
        import subprocess
        import sys

        from .common import REPO_ROOT

        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"))
            run = os.path.join(d, "run")
            _train(_custom("faster_rcnn_R18-1-16_C4_scratch.yaml"), data, run)
            weights = os.path.join(run, "model_final.pth")
            tool = os.path.join(REPO_ROOT, "tools", "export_student.py")
            onnx_path = os.path.join(d, "s.onnx")
            cmd = [sys.executable, tool, "--format", "onnx", "--output", onnx_path, "--check",
                   "--ort-threads", "0", "MODEL.WEIGHTS", weights]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(res.returncode, 0, res.stderr[-2000:])
            self.assertIn(os.path.join(run, "config.yaml"), res.stdout)
            demo = os.path.join(REPO_ROOT, "tools", "demo.py")
            images = os.path.join(d, "data", "images", "val")
            cmd = [sys.executable, demo, "--input", images, "--output", os.path.join(d, "vis"),
                   "MODEL.WEIGHTS", weights]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(res.returncode, 0, res.stderr[-2000:])
            drawn = [f for f in os.listdir(os.path.join(d, "vis")) if f.endswith(".png")]
            self.assertEqual(len(drawn), len(os.listdir(images)))  # and a .json beside each

    def test_unregistered_dataset_says_how_to_give_data(self):
        with tempfile.TemporaryDirectory() as d:
            cfg = engine.setup_cfg(
                _custom("faster_rcnn_R18-1-16_C4_scratch.yaml"),
                ["DATASETS.TRAIN", "('my_train',)", "OUTPUT_DIR", d] + QUICK,
            )
            with self.assertRaisesRegex(ValueError, "my_train.*--data FILE"):
                engine.Trainer.build_train_loader(cfg)
