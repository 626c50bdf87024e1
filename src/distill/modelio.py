"""What any model distill trains takes and returns: the seam between the loop and a model.

Inputs are a tensor (images, features) or a dict of tensors (``input_ids``, ``attention_mask``,
... as Hugging Face models take them); outputs are a tensor of logits or an object carrying
``.logits`` (a Hugging Face ``ModelOutput``) or a dict with a ``"logits"`` entry.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch


def model_forward(model, inputs):
    """``model(inputs)`` for a tensor, ``model(**inputs)`` for a dict of named tensors."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def logits_of(output) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, its ``.logits``, or its ``["logits"]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ValueError(f"the model returned a {type(output).__name__}; it must return logits as a tensor, or an "
                     "object with a .logits tensor")


def inputs_to(inputs, device):
    """``inputs`` (a tensor or a dict of tensors) on ``device``."""
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def context_length(model) -> int | None:
    """The longest input a language model takes: its ``block_size`` (:class:`distill.models.GPT`),
    else a Hugging Face config's ``n_positions`` / ``max_position_embeddings``; None when it does
    not say."""
    config = getattr(model, "config", None)
    for v in (getattr(model, "block_size", None), getattr(config, "n_positions", None),
              getattr(config, "max_position_embeddings", None)):
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None
