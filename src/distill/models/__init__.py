"""Models: classifiers (:class:`MLP`, :class:`CNN`), segmentation nets (:class:`DeepLabV3`,
:class:`MobileNetSeg`) and a small language model (:class:`GPT`; :func:`generate` and :func:`left_pad`
sample from language models). Checkpoints name them by their stable factory names
(``distill.models:MLP``, ``distill.models:GPT``, ``distill.segmentation:DeepLabV3``; see
:mod:`distill.checkpoints`)."""
from distill.models.classifiers import CNN, MLP, count_params
from distill.models.hf import causal_lm
from distill.models.lm import GPT, generate, left_pad
from distill.models.segmentation import DeepLabV3, MobileNetSeg

__all__ = ["MLP", "CNN", "DeepLabV3", "MobileNetSeg", "GPT", "generate", "left_pad", "causal_lm", "count_params"]
