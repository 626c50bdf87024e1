"""distill: knowledge distillation as in Hinton, Vinyals & Dean (2015), for any PyTorch model and data.

The public API (everything else is internal)::

    import distill
    result = distill.fit(student, (x, y), distill.TrainConfig(epochs=20, temperature=4.0),
                         teacher=teacher, val=(x_val, y_val), run_dir="runs/student")
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
from distill.losses import Distillation, HardLabels, LogitMatching  # noqa: E402
from distill.metrics import evaluate, predict_logits  # noqa: E402
from distill.soft_targets import SoftTargetStore, get_store  # noqa: E402
from distill.sources import as_source  # noqa: E402
from distill.teachers import Ensemble, Teacher  # noqa: E402
from distill.training import FitResult, TrainConfig, TrainingDiverged, fit, seed_everything  # noqa: E402

__all__ = [
    "fit", "TrainConfig", "FitResult", "TrainingDiverged", "seed_everything",
    "HardLabels", "Distillation", "LogitMatching",
    "Teacher", "Ensemble",
    "as_source", "evaluate", "predict_logits",
    "get_store", "SoftTargetStore",
    "save_checkpoint", "load_checkpoint",
    "DistillError",
]
