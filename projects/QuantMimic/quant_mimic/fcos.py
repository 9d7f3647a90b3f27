"""FCOS from a yacs config (``MODEL.META_ARCHITECTURE "FCOS"``, ``MODEL.FCOS.*``).

Detectron2 ships :class:`~detectron2.modeling.meta_arch.fcos.FCOS` for its LazyConfig system only
(no ``from_config``, not registered). This is that detector, unchanged, registered as "FCOS" and
built from the ``MODEL.FCOS`` keys this project adds (config.py, detectron2's defaults), so an FCOS
student trains, evaluates and exports like every other detector here (``train_net.py
--config-file``).
"""

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch import fcos

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(fcos.FCOS):
    """Detectron2's FCOS, built from ``MODEL.FCOS`` (module docstring)."""

    @configurable
    def __init__(self, **kwargs):
        """Args: detectron2's :class:`~detectron2.modeling.meta_arch.fcos.FCOS` arguments."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode):
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [n for n in f.IN_FEATURES if n not in shapes]
        assert (
            not missing
        ), f"MODEL.FCOS.IN_FEATURES {missing} are not backbone outputs {list(shapes)}"
        input_shape = [shapes[n] for n in f.IN_FEATURES]
        channels = {s.channels for s in input_shape}
        assert len(channels) == 1, f"FCOS's head needs one channel count, got {sorted(channels)}"
        head = fcos.FCOSHead(
            input_shape=input_shape,
            conv_dims=[channels.pop()] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            prior_prob=f.PRIOR_PROB,
            norm=f.NORM,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }
