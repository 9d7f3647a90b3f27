"""What every mimic student shares, whatever its detector: a frozen teacher beside it and the RoI
mimic head (paper §3.2-3.3).

:class:`MimicStudent` is the mixin of the meta-architectures that train a detectron2 detector with
λ·L_m (eq. 4): :class:`~quant_mimic.mimic_rcnn.MimicRCNN` (two-stage: the RoIs are its RPN's
proposals) and :class:`~quant_mimic.mimic_dense.MimicRetinaNet` /
:class:`~quant_mimic.mimic_dense.MimicFCOS` (one-stage: the RoIs come from the ground truth and the
student's own detections). It holds the teacher out of the student's state, optimizer and DDP, in
eval mode, on the student's device; :func:`build_mimic_parts` builds the teacher and the head from
the student's config.
"""

from typing import Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import get_event_storage

from .config import MIMIC_ARCHITECTURES
from .mimic_head import RoIMimicHead, mimic_feature_names
from .teacher import FrozenTeacher, build_teacher_cfg, mimic_quantizer_args
from .teacher_cache import TeacherMapCache

__all__ = ["MimicStudent", "build_mimic_parts"]


def build_mimic_parts(cfg: CfgNode, student_shapes: Dict[str, ShapeSpec]) -> Dict:
    """
    The frozen teacher and the RoI mimic head of the student of ``cfg``.

    Args:
        cfg: the student's config (``MODEL.MIMIC``).
        student_shapes: the student backbone's ``output_shape()``.

    Returns:
        dict: ``teacher`` (:class:`FrozenTeacher`) and ``mimic_head`` (:class:`RoIMimicHead`), the
        keyword arguments :class:`MimicStudent` takes.
    """
    tcfg = build_teacher_cfg(cfg)
    arch = tcfg.MODEL.META_ARCHITECTURE
    assert arch not in MIMIC_ARCHITECTURES, f"A {arch} cannot be a teacher"
    assert tcfg.INPUT.FORMAT == cfg.INPUT.FORMAT, (
        f"Teacher INPUT.FORMAT {tcfg.INPUT.FORMAT} != student {cfg.INPUT.FORMAT}: "
        "both read the same images"
    )
    teacher = build_model(tcfg)
    t_shapes = teacher.backbone.output_shape()
    _, t_names = mimic_feature_names(cfg, tcfg, student_shapes, t_shapes)
    quantizer = mimic_quantizer_args(cfg, tcfg)
    return {
        "mimic_head": RoIMimicHead(cfg, tcfg, student_shapes, t_shapes, quantizer),
        "teacher": FrozenTeacher.from_config(cfg, tcfg, teacher, t_names),
    }


class MimicStudent:
    """
    Mixin of a detectron2 meta-architecture trained with the RoI mimic loss against a frozen
    teacher. Put it first among the bases (``class MimicRCNN(MimicStudent, GeneralizedRCNN)``) and
    pass ``teacher`` and ``mimic_head`` (:func:`build_mimic_parts`) to ``__init__``.

    The teacher (:class:`FrozenTeacher`) is *not* a submodule: not in ``state_dict()`` (so never in
    checkpoints), not in the optimizer, not wrapped by DDP, and not switched to train mode by
    ``model.train()``; it follows the student's device (``.to()``). The mimic head's adapters r are
    submodules (``mimic_adapters``, in the student's checkpoint), unused at inference, which is
    exactly the student detector's.
    """

    def __init__(self, *, teacher: FrozenTeacher, mimic_head: RoIMimicHead, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "frozen_teacher", teacher)  # not a submodule (class docstring)
        self.mimic_head = mimic_head
        self.mimic_adapters = mimic_head.adapters  # the head's parameters, in the student's state

    @property
    def teacher(self):
        """The frozen teacher detector (not a submodule)."""
        return self.frozen_teacher.model

    @property
    def teacher_weights(self) -> str:
        """``MODEL.MIMIC.TEACHER.WEIGHTS``."""
        return self.frozen_teacher.weights

    def load_teacher(self, path: Optional[str] = None) -> None:
        """Load the teacher's weights (default ``MODEL.MIMIC.TEACHER.WEIGHTS``), strictly."""
        self.frozen_teacher.load(path)

    @property
    def teacher_cache(self) -> Optional[TeacherMapCache]:
        """The teacher-map cache (:attr:`FrozenTeacher.cache`), None when off."""
        return self.frozen_teacher.cache

    def teacher_maps(self, batched_inputs, fill_only: bool = False):
        """The teacher's maps for a batch (:meth:`FrozenTeacher.maps`; the cache in training)."""
        return self.frozen_teacher.maps(batched_inputs, self.training, fill_only)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # BN statistics of the teacher never drift
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)  # the teacher follows the student's device/dtype
        return self

    def test_mimic_boxes(self, images, student_maps: Dict) -> List:
        """The mimic RoIs of a test image (no ground truth): for the Fig. 5 statistics
        (:mod:`quant_mimic.diagnostics`). Returns list[Boxes], one per image."""
        # abstract: each meta-architecture has its own RoIs (MimicRCNN, mimic_dense._DenseMimic)
        raise NotImplementedError

    def add_mimic_loss(
        self,
        losses: Dict,
        batched_inputs: List[Dict],
        student_maps: Dict,
        boxes: List,
    ) -> Dict:
        """
        Add ``loss_mimic`` (λ·L_m, eq. 4-6) to the student's detection ``losses`` (in place) and
        log λ·L_m / L_det as ``mimic/loss_ratio``.

        Args:
            losses (dict[str->Tensor]): the student's detection losses of this step.
            batched_inputs (list[dict]): the model inputs (the teacher reads the same images).
            student_maps (dict[str->Tensor]): the student's backbone outputs.
            boxes (list[Boxes]): the N_j mimic boxes of each image, detached.

        Returns:
            dict: ``losses``.
        """
        teacher_maps = self.teacher_maps(batched_inputs)
        # λ·L_m against the detection losses: the balance that decides whether a student learns
        detection = sum(v.detach() for v in losses.values())
        mimic = self.mimic_head.losses(teacher_maps, student_maps, boxes, float(detection))
        storage = get_event_storage()
        storage.put_scalar(
            "mimic/loss_ratio", float(mimic["loss_mimic"].detach() / detection.clamp(min=1e-12))
        )
        losses.update(mimic)
        self.frozen_teacher.put_cache_scalars(storage)
        return losses
