"""Long-run behaviour (marked slow, still in `make test`): MimicRCNN CPU training's resident
memory does not grow; two-process gloo DDP keeps the teacher identical on both ranks and out of
the all-reduce, and distributed evaluation scores every image exactly once."""

import hashlib
import os
import tempfile
import unittest

import pytest
import torch

from detectron2.data import build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

from quant_mimic import Trainer, setup_cfg
from quant_mimic.data.synthetic import generate_faces
from quant_mimic.data.widerface import register_widerface
from quant_mimic.engine import launch
from quant_mimic.evaluation import WiderFaceEvaluator

from .common import CONFIG_DIR, FAST_OPTS, register_tiny_dataset, trainer_opts

QM = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_quant_mimic.yaml"
# Bound on resident-memory growth between iteration 100 and 300 of a CPU MimicRCNN run (measured:
# RSS moves within ±30 MB around ~950 MB with no trend). A leak of one batch's tensors per
# iteration (~1 MB here) would exceed it several times over.
RSS_GROWTH_BOUND_MB = 40.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RecordRSS(HookBase):
    def __init__(self, every=50):
        self.every, self.rss = every, {}

    def after_step(self):
        if (self.trainer.iter + 1) % self.every == 0:
            self.rss[self.trainer.iter + 1] = _rss_mb()


def _cfg(tmp, max_iter, extra=()):
    name = register_tiny_dataset("qm_tiny_long", os.path.join(tmp, "data"))
    # a random teacher: a small LR and clipped gradients keep hundreds of iterations finite
    stable = ["SOLVER.BASE_LR", 0.001, "SOLVER.CLIP_GRADIENTS.ENABLED", True]
    return setup_cfg(
        os.path.join(CONFIG_DIR, QM),
        FAST_OPTS + trainer_opts(name, os.path.join(tmp, "out"), max_iter) + stable + list(extra),
    )


@pytest.mark.slow
class TestMemory(unittest.TestCase):
    @unittest.skipUnless(os.path.exists("/proc/self/statm"), "needs /proc (Linux)")
    def test_resident_memory_does_not_grow(self):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(_cfg(tmp, 300, ["SOLVER.CHECKPOINT_PERIOD", 100000]))
            record = _RecordRSS()
            trainer.register_hooks([record])
            trainer.resume_or_load(resume=False)
            trainer.train()
        growth = record.rss[300] - record.rss[100]
        print(f"RSS (MB) by iteration: { {k: round(v, 1) for k, v in record.rss.items()} }")
        self.assertLess(growth, RSS_GROWTH_BOUND_MB, record.rss)


def _digest(module: torch.nn.Module, params_only: bool = False) -> str:
    h = hashlib.sha256()
    tensors = dict(module.named_parameters()) if params_only else module.state_dict()
    for k, v in sorted(tensors.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ddp_worker(tmp):
    teacher_file = os.path.join(tmp, "teacher.pth")
    if comm.is_main_process():  # one teacher checkpoint, loaded by both ranks
        probe = Trainer.build_model(_cfg(tmp, 4), load_teacher=False)
        torch.save({"model": probe.teacher.state_dict()}, teacher_file)
    comm.synchronize()
    cfg = _cfg(tmp, 4, ["MODEL.MIMIC.TEACHER.WEIGHTS", teacher_file])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    ddp = trainer.model
    teacher = ddp.module.teacher
    before = _digest(teacher)
    trainer.train()
    # never all-reduced: no teacher tensor is a parameter or buffer DDP synchronises
    synced = {id(t) for t in list(ddp.parameters()) + list(ddp.buffers())}
    assert not synced & {id(t) for t in list(teacher.parameters()) + list(teacher.buffers())}
    digests = comm.all_gather(_digest(teacher))
    assert digests[0] == digests[1] == before, "the teacher changed or differs between ranks"
    # parameters only: detectron2 builds DDP with broadcast_buffers=False, so BN running statistics
    # are per rank by design (SyncBN shares them)
    student = comm.all_gather(_digest(ddp.module, params_only=True))
    assert student[0] == student[1], "the student's parameters differ between ranks"
    # distributed evaluation: 5 images over 2 ranks, each scored exactly once
    root = os.path.join(tmp, "faces")
    if comm.is_main_process():
        generate_faces(root, 2, 5, seed=3)
    comm.synchronize()
    register_widerface("qm_ddp_faces_val", root, "val")
    scfg = setup_cfg(os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-32_scratch.yaml"),
                     FAST_OPTS + ["MODEL.WEIGHTS", ""])  # fmt: skip
    model = Trainer.build_model(scfg).eval()
    evaluator = WiderFaceEvaluator("qm_ddp_faces_val", output_dir=os.path.join(tmp, "ev"))
    loader = build_detection_test_loader(scfg, "qm_ddp_faces_val")
    res = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process():
        assert evaluator.num_images == 5, evaluator.num_images
        assert set(res["widerface"]) == {"AP_easy", "AP_medium", "AP_hard"}


@pytest.mark.slow
class TestTwoProcessGloo(unittest.TestCase):
    def test_teacher_identical_and_evaluation_complete(self):
        with tempfile.TemporaryDirectory() as tmp:
            launch(_ddp_worker, 2, dist_url="auto", args=(tmp,))


if __name__ == "__main__":
    unittest.main()
