"""The plan of a training run: every check and coercion ``fit`` makes before it trains, in one
place, and the run key.

The run key covers everything that decides a finished run's result: the config (with the
resolved lr), the objective (:func:`distill.losses.objectives.objective_spec`), the model's
structure (:func:`distill.digest.model_signature`: stable class name, module tree, parameter
shapes, factory with its keyword arguments), the teacher's identity, a digest of every example of
the training and validation data, and :data:`RUN_KEY_VERSION`.

The rule for :data:`RUN_KEY_VERSION`: bump it by hand, in the same change, whenever a change alters
what a finished run would hold for the same key (a fix to a loss, to the loop, to augmentation,
to how data are read), so that runs computed by the old code are not returned as "(cached)".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill import distributed
from distill.checkpoints import check_checkpointable, resolve_factory
from distill.data.augment import Augment
from distill.data.files import FileData
from distill.data.sources import Source, as_source, dataset_test_split
from distill.digest import model_signature
from distill.losses.functional import DEFAULT_IGNORE_INDEX, LM_IGNORE_INDEX
from distill.losses.objectives import Distillation, HardLabels, LogitMatching, Objective, as_objective, needs, \
    objective_spec
from distill.modelio import context_length, inputs_to, logits_of, model_forward
from distill.teachers.teacher import Teacher, as_teacher
from distill.train.augmenter import Augmenter
from distill.train.config import LOGGING_FIELDS, TrainConfig, resolve_device
from distill.train.features import FeatureRun, plan_features
from distill.train.rundir import run_key

#: part of every run key (see the module docstring for when to bump it)
#: (2: keys cover every example of a Dataset or DataLoader, the module tree and factory arguments)
RUN_KEY_VERSION = 2


@dataclass
class Plan:
    """What ``fit`` trains, checked and coerced: the model and where it lives, the resolved config,
    the objective, the teacher, the data sources, the per-batch augmenter (``jitter`` included, as
    ``Augment(shift=jitter)``), what the probe found, the factory, the run key."""

    model: nn.Module
    home: torch.device
    device: torch.device
    config: TrainConfig
    objective: Objective
    teacher: Teacher | None
    source: Source
    val: Source | None
    test: Source | None
    augmenter: Augmenter | None
    num_classes: int
    input_shape: list
    factory: dict | None
    key: str | None
    rank: int
    world_size: int
    #: next-token training (a language model): the loss averages over valid target tokens
    tokens: bool = False
    #: feature distillation's taps and projectors (:mod:`distill.train.features`); None for other objectives
    features: FeatureRun | None = None


def make_plan(model, train, config=None, *, teacher=None, val=None, test=None, run_dir=None, device=None,
              factory=None, data_id: str | None = None) -> Plan:
    """Check and coerce :func:`distill.fit`'s arguments (a ``ValueError`` naming the problem, before
    anything trains) and compute the run key when there is a run folder."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a distill.TrainConfig, got {type(config).__name__}")
    dev = resolve_device(device)
    home = next(model.parameters()).device if next(model.parameters(), None) is not None else torch.device("cpu")
    source, val_src, test_src = _sources(train, val, test, data_id)
    lm = getattr(source, "task", None) == "lm"
    objective = as_objective(config.objective_for(teacher is not None, tokens=lm))
    tokens = lm or bool(getattr(objective, "tokens", False))
    config = config.resolved(objective)
    teacher = as_teacher(teacher, objective.temperature or 1.0)
    _check_parts(config, objective, teacher, source, val_src, test_src)
    augment = config.augment if config.augment is not None else Augment(shift=config.jitter) if config.jitter else None
    augmenter = Augmenter(augment, source, objective) if augment is not None else None
    if tokens:
        num_classes, input_shape = probe_lm(model, source, home, teacher)
    else:
        num_classes, input_shape = probe(model, source, home, objective)
    if config.on_policy is not None:
        check_on_policy(config, tokens, teacher, source, model)
    features = plan_features(objective, model, teacher, source, config, home)  # FeatureDistillation's taps, projectors
    factory_spec = check_checkpointable(model, factory) if run_dir is not None else resolve_factory(model, factory)
    # (a Dataset's or DataLoader's fingerprint reads every example once, so only a run folder asks)
    key = None if run_dir is None else run_key_of(config, objective, model, factory_spec, source, val_src, teacher)
    rank, world_size = distributed.world()
    return Plan(model, home, dev, config, objective, teacher, source, val_src, test_src, augmenter, num_classes,
                input_shape, factory_spec, key, rank, world_size, tokens, features)


def run_key_of(config, objective, model, factory_spec, source, val_src, teacher) -> str:
    """The run key (module docstring). The loss shorthand fields enter through the objective;
    ``precision`` only when it is not the default fp32 and the logging fields (``divergence``,
    ``log_every``, ``tensorboard``) never, so that turning the guard or a log on or off, or adding a
    field, re-keys no earlier run."""
    cfg = {k: v for k, v in config.to_dict().items()
           if k not in ("temperature", "hard_weight", "soft_weight", "objective", *LOGGING_FIELDS)
           and not (k == "precision" and v == "fp32")}
    return run_key(dict(version=RUN_KEY_VERSION, config=cfg, objective=objective_spec(objective),
                        model=model_signature(model, factory_spec), data=source.fingerprint,
                        val=val_src.fingerprint if val_src else None, teacher=teacher.id if teacher else None))


def _sources(train, val, test, data_id):
    if data_id is not None:
        if not isinstance(data_id, str) or not data_id.strip():
            raise ValueError(f"data_id must be a non-empty string that names the training data, got {data_id!r}")
        if isinstance(train, (Source, FileData)):
            raise ValueError("data_id= names data given as arrays, a Dataset or a DataLoader; this training set "
                             "already has its own identity (its file digests)")
    source = as_source(train, name="train", fingerprint=None if data_id is None else f"id:{data_id}")
    val_src = as_source(val, name="val") if val is not None else None
    test_src = as_source(test, name="test") if test is not None else dataset_test_split(train)
    return source, val_src, test_src


def _check_parts(config, objective, teacher, source, val_src, test_src) -> None:
    """The parts fit together: the objective's needs, labels, jitter on images, a val set to select on."""
    name = type(getattr(objective, "fn", objective)).__name__
    if needs(objective, "teacher") and teacher is None:
        raise ValueError(f"the objective {name} needs a teacher; pass teacher=")
    if teacher is not None and not needs(objective, "teacher"):
        raise ValueError(f"a teacher was given but the objective {name} does not use one")
    if objective.needs_logits and teacher.kind != "logits":
        raise ValueError("logit matching needs teacher logits, not probabilities")
    if needs(objective, "labels") and not source.labeled:
        raise ValueError("this transfer set has no labels: use a teacher with hard_weight=0")
    if config.jitter and getattr(source, "y", None) is not None and source.y.dim() > 1:
        raise ValueError("jitter shifts the images but not their label masks; use jitter=0 with dense labels")
    if config.jitter and source.image_shape is None:
        raise ValueError("jitter needs image data: examples of shape (H, W) or (C, H, W), or a distill Dataset "
                         "with an image_shape")
    if config.select == "best" and val_src is None:
        raise ValueError('select="best" picks the epoch with the fewest validation errors; pass val=')
    for split, src in (("val", val_src), ("test", test_src)):
        if src is not None and not src.labeled:
            raise ValueError(f"{split} needs labels")


def check_on_policy(config, tokens: bool, teacher, source, model) -> None:
    """On-policy training fits: next-token data with prompts, a teacher model to score the samples,
    an EOS to stop them, room in both models' context for the longest prompt plus the samples, and
    DDP or one process (FSDP2's collectives cannot follow generations that end at different steps)."""
    pol = config.on_policy
    if not tokens:
        raise ValueError("on_policy samples completions from a language model; the training data are not token "
                         "sequences")
    if getattr(source, "prompt_lengths", None) is None:
        raise ValueError("on_policy needs prompts: train on prompt/completion rows (distill.data.prompts: "
                         "load_prompts for JSONL, split_blocks for text blocks, prompt_pairs for token ids)")
    if teacher is None or teacher.module is None:
        raise ValueError("on_policy has the teacher score the student's own samples, so it needs the teacher model, "
                         "not stored outputs")
    if getattr(source, "eos_id", None) is None:
        raise ValueError("on_policy stops samples at EOS, and these prompts name no EOS token")
    if distributed.world()[1] > 1 and config.parallel == "fsdp":
        raise ValueError("on_policy runs on one process or under DDP (parallel='ddp'); FSDP2 cannot sample: its "
                         "processes would stop generating at different steps")
    need = source.longest_prompt + pol.max_new_tokens
    for who, m in (("the student", model), ("the teacher", teacher.module)):
        ctx = context_length(m)
        if ctx is not None and need > ctx:
            raise ValueError(f"the longest prompt ({source.longest_prompt} tokens) + max_new_tokens "
                             f"({pol.max_new_tokens}) is {need} tokens, longer than {who}'s context ({ctx}); "
                             "lower max_new_tokens or cut the prompts (max_prompt)")


def probe_lm(model: nn.Module, source, dev, teacher=None) -> tuple[int, list]:
    """The language-model probe, on two training sequences before step 1: the model maps
    ``input_ids`` (+ ``attention_mask``) to next-token logits ``[B, L, V]``; the targets lie in its
    vocabulary; a teacher's vocabulary is the student's, or both hold the tokenizer's whole vocabulary
    (a padded tail: the objective compares the shared prefix). ``(V, [L])``."""
    x, y, _ = next(iter(source.batches(2, None)))
    if not isinstance(x, dict) or "input_ids" not in x:
        raise ValueError("next-token training needs inputs as a dict with input_ids (and attention_mask); "
                         f"got {type(x).__name__}")
    out = _probe_forward(model, x, dev, "the model")
    ids = x["input_ids"]
    if out.dim() != 3 or tuple(out.shape[:2]) != tuple(ids.shape):
        raise ValueError(f"a language model must return next-token logits of shape (batch, length, vocabulary) = "
                         f"({ids.shape[0]}, {ids.shape[1]}, V); it returned {tuple(out.shape)}")
    vocab = int(out.shape[-1])
    labels = getattr(source, "y", None)
    labels = y if labels is None else labels
    if labels is not None:
        kept = labels[labels != LM_IGNORE_INDEX]
        if kept.numel() and (int(kept.max()) >= vocab or int(kept.min()) < 0):
            raise ValueError(f"the training tokens go up to {int(kept.max())} but the model's vocabulary has {vocab} "
                             "entries; build it with the tokenizer's vocabulary size")
    tokenizer_vocab = getattr(source, "vocab_size", None)
    if tokenizer_vocab is not None and vocab < tokenizer_vocab:
        raise ValueError(f"the model's vocabulary has {vocab} entries but the tokenizer's has {tokenizer_vocab}")
    if teacher is not None and teacher.module is not None:
        tv = int(_probe_forward(teacher.module, x, dev, "the teacher").shape[-1])
        if tv != vocab and tokenizer_vocab is not None and min(tv, vocab) < tokenizer_vocab:
            raise ValueError(f"the teacher predicts {tv} tokens and the student {vocab}, but the tokenizer has "
                             f"{tokenizer_vocab}: they do not share one vocabulary (distilling across tokenizers "
                             "is not supported)")
        if tv != vocab and tokenizer_vocab is None:
            raise ValueError(f"the teacher predicts {tv} tokens and the student {vocab}; without a tokenizer that "
                             "says how many are real, they cannot be compared")
    return vocab, list(ids.shape[1:])


def _probe_forward(model, x, dev, who: str) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return logits_of(model_forward(model, inputs_to(x, dev)))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shape = tuple(x["input_ids"].shape[1:]) if isinstance(x, dict) else tuple(x.shape[1:])
        if "index out of range" in first and isinstance(x, dict):
            raise ValueError(f"{who} cannot take token ids up to {int(x['input_ids'].max())}: its vocabulary is "
                             "smaller than the tokenizer's; build it with the tokenizer's vocabulary size") from None
        raise ValueError(f"{who} cannot take the training inputs of shape {shape} ({first})") from None
    finally:
        model.train(was)


def probe(model: nn.Module, source, dev, objective=None) -> tuple[int, list]:
    """Run the model on two training examples before epoch 1: a model that cannot take these
    inputs, or does not return class logits ``[B, C]`` (``[B, C, *S]`` for label masks ``[B, *S]``,
    dense prediction), is an error now, not after an epoch."""
    x, y, _ = next(iter(source.batches(2, None)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = logits_of(model_forward(model, inputs_to(x, dev)))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"the model cannot take the training inputs of shape {tuple(x.shape[1:])} ({first})") from None
    finally:
        model.train(was)
    masks = y is not None and y.dim() > 1
    dense = isinstance(out, torch.Tensor) and out.dim() >= 3 and out.shape[0] == len(x) and (masks or y is None)
    if not dense and (not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x) or masks):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if masks:
            raise ValueError(f"the labels are masks of shape {tuple(y.shape[1:])}, so the model must return class "
                             f"logits of shape (batch, classes, {', '.join(map(str, y.shape[1:]))}); it returned {shape}")
        raise ValueError(f"the model must return class logits of shape (batch, classes); it returned {shape}")
    num_classes = int(out.shape[1])
    labels = getattr(source, "y", None)
    if masks:
        if tuple(y.shape[1:]) != tuple(out.shape[2:]):
            raise ValueError(f"the label masks have shape {tuple(y.shape[1:])} but the model returns class scores "
                             f"over positions {tuple(out.shape[2:])}")
        if isinstance(objective, (HardLabels, Distillation, LogitMatching)):
            raise ValueError(f"the labels are masks, which {type(objective).__name__} cannot take: pass a dense "
                             "objective, e.g. TrainConfig(objective=distill.losses.DenseHardLabels()) or "
                             "objective=distill.losses.PixelwiseDistillation(temperature, hard_weight)")
        ignore = getattr(objective, "ignore_index", DEFAULT_IGNORE_INDEX)
        kept = labels[labels != ignore] if labels is not None else y[y != ignore]
        if kept.numel() and int(kept.max()) >= num_classes:
            raise ValueError(f"the training masks hold class {int(kept.max())} but the model predicts "
                             f"{num_classes} classes (and {ignore} is the ignore index)")
        return num_classes, list(x.shape[1:])
    if labels is not None and len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"the training labels go up to {int(labels.max())} but the model predicts "
                         f"{num_classes} classes")
    return num_classes, list(x.shape[1:])
