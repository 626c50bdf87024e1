"""Models: classifiers (:class:`MLP`, :class:`CNN`) and segmentation nets (:class:`DeepLabV3`,
:class:`MobileNetSeg`). Checkpoints name them by their stable factory names
(``distill.models:MLP``, ``distill.segmentation:DeepLabV3``; see :mod:`distill.checkpoints`)."""
from distill.models.classifiers import CNN, MLP, count_params
from distill.models.segmentation import DeepLabV3, MobileNetSeg

__all__ = ["MLP", "CNN", "DeepLabV3", "MobileNetSeg", "count_params"]
