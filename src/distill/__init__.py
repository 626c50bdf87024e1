"""distill: knowledge distillation as in Hinton, Vinyals & Dean (2015), for any PyTorch model and data.

The public API (everything else is internal)::

    import distill
    result = distill.fit(student, (x, y), distill.TrainConfig(epochs=20, temperature=4.0),
                         teacher=teacher, val=(x_val, y_val), run_dir="runs/student")

The package is built in layers; a module imports only from its own layer and the ones listed
before it (``tests/core/test_layers.py`` parses every import and fails on an upward one or a circle):

    core         errors, checks (numbers, temperatures), digest, atomic (writes, the folder lock),
                 checkpoints, distributed, modelio (a model's inputs and outputs: tensors, dicts, .logits)
    losses/      functional (the formulas, pure) · objectives (what fit calls)
    data/        sources (what fit accepts) · datasets, files, text (corpora, tokenizers, token blocks), prompts
                 (prompt/completion rows), augment, transfer sets
    metrics      evaluation over a source
    models/      classifiers (MLP, CNN, ResNet) · segmentation (DeepLabV3, MobileNetSeg) · lm (GPT, generate) ·
                 hf (Hugging Face causal LMs from a config)
    teachers/    teacher (Teacher, Ensemble) · store (the soft-target store: knows nothing of Teacher) ·
                 token_store (a language model's top-k store) · sequence_kd (the teacher's own completions)
    train/       fit · config · recipes (the paper's) · rundir · divergence · augmenter · features (hooks,
                 projectors) · logs (metrics.csv, TensorBoard, callbacks) · onpolicy (the student's own samples)
    methods/     specialists · trees · tuning (held-out selection)
    tools/       bench · compare · export · plots · history (training curves)
    experiments/ the paper's experiments and the registry
    cli          the ``distill`` command
"""

__version__ = "0.2.0"

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

# OpenMP threads spin-wait between parallel regions by default, so two torch jobs sharing a few
# cores slow each other down many times over; waiting passively costs a solo job little. Unless
# the user chose a policy (or torch, and so OpenMP, is already loaded), wait passively (README:
# "Speed and scale"; OMP_WAIT_POLICY=ACTIVE restores OpenMP's default).
if "OMP_WAIT_POLICY" not in _os.environ and "torch" not in _sys.modules:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from distill.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.losses.objectives import Distillation, FeatureDistillation, HardLabels, LogitMatching, NextTokenLoss, \
    TokenDistillation
from distill.metrics import evaluate, predict_logits  # noqa: E402
from distill.teachers import store as _store  # noqa: E402
from distill.teachers.store import SoftTargetStore  # noqa: E402
from distill.data.sources import as_source  # noqa: E402
from distill.teachers.teacher import Ensemble, Teacher  # noqa: E402
from distill.train.fit import FitResult, fit  # noqa: E402
from distill.train.config import TrainConfig, seed_everything
from distill.train.divergence import TrainingDiverged
from distill.train.onpolicy import OnPolicy

__all__ = [
    "fit", "TrainConfig", "FitResult", "TrainingDiverged", "seed_everything", "OnPolicy",
    "HardLabels", "Distillation", "LogitMatching", "TokenDistillation", "NextTokenLoss", "FeatureDistillation",
    "Teacher", "Ensemble",
    "as_source", "evaluate", "predict_logits",
    "get_store", "SoftTargetStore",
    "save_checkpoint", "load_checkpoint",
    "DistillError",
]


def get_store(root, teacher, data, **options) -> SoftTargetStore:
    """:func:`distill.teachers.store.get_store` for ``teacher`` given as anything
    :class:`distill.Teacher` accepts (a module, an ensemble, a checkpoint path, a Teacher)."""
    return _store.get_store(root, teacher if isinstance(teacher, Teacher) else Teacher(teacher), data, **options)
