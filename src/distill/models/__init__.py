"""Models: classifiers (:class:`MLP`, :class:`CNN`, :class:`ConvNet`, :class:`ResNet`; :class:`Standardize`
in front of any of them), segmentation nets (:class:`DeepLabV3`,
:class:`MobileNetSeg`) and a small language model (:class:`GPT`; :func:`generate`, :func:`left_pad` and :func:`continuations`
sample from language models). Checkpoints name them by their stable factory names
(``distill.models:MLP``, ``distill.models:GPT``, ``distill.segmentation:DeepLabV3``; see
:mod:`distill.checkpoints`)."""
from distill.models.classifiers import CNN, MLP, ConvNet, ResNet, count_params
from distill.models.preprocess import Standardize
from distill.models.hf import causal_lm
from distill.models.lm import GPT, continuations, generate, left_pad
from distill.models.segmentation import DeepLabV3, MobileNetSeg

__all__ = ["MLP", "CNN", "ConvNet", "ResNet", "Standardize", "DeepLabV3", "MobileNetSeg", "GPT", "generate", "left_pad", "continuations", "causal_lm",
           "count_params"]
