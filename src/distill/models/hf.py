"""Hugging Face causal language models as distill models: built from a config (nothing is
downloaded, no code from a model repository runs), saved so that ``transformers`` loads them back.
``transformers`` is an optional extra (``pip install distill[lm]``): it is imported only here, when
such a model is built or saved."""
from __future__ import annotations

import shutil
from pathlib import Path

from distill.atomic import TMP_SUFFIX
from distill.errors import DistillError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise DistillError("this model is a Hugging Face transformers model; install it with "
                           "`pip install 'distill[lm]'` (transformers)") from None
    return transformers


def causal_lm(config: dict):
    """``AutoModelForCausalLM.from_config`` of the config dict (``model_type`` and its fields, as
    ``config.to_dict()`` writes them), with ``trust_remote_code`` off: only model classes that
    ship inside transformers can be built."""
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise DistillError("a Hugging Face model's factory needs its config as a dict with a model_type")
    tf = _transformers()
    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "auto_map")}
    try:
        cfg = tf.AutoConfig.for_model(config["model_type"], **fields)
        return tf.AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"cannot build a Hugging Face causal LM of type {config['model_type']!r}: {first}") from None


def save_pretrained(model, folder, tokenizer_file=None) -> Path:
    """``model.save_pretrained(folder)`` (safetensors), and ``tokenizer.json`` beside it when given,
    so that ``AutoModelForCausalLM.from_pretrained(folder)`` (and the tokenizer) load it back. Written
    to a temporary folder first and moved into place, so a crash leaves no half-written folder."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer_file is not None and Path(tokenizer_file).is_file():
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
