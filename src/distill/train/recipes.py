"""The paper's recipes as data: what ``distill teacher`` and ``distill student`` do by default and
what the MNIST experiments start from, stated once."""
from __future__ import annotations

import math
from dataclasses import dataclass

from distill.data.augment import Augment
from distill.losses.functional import DEFAULT_HARD_WEIGHT, DEFAULT_SOFT_WEIGHT
from distill.train.config import TrainConfig


@dataclass(frozen=True)
class MnistRecipe:
    """Hinton, Vinyals & Dean (2015), section 3: a 1200-1200 ReLU teacher trained with dropout
    (0.2 on the inputs, 0.5 on the hidden units), a max-norm bound on each unit's incoming weights
    and translations of up to 2 pixels; an 800-800 student distilled from it at T = 20 with a
    small weight on the hard labels; 20 epochs as the command-line default."""

    epochs: int = 20
    teacher_hidden: tuple = (1200, 1200)
    student_hidden: tuple = (800, 800)
    dropout_input: float = 0.2  # on an MLP's inputs
    dropout_hidden: float = 0.5
    max_norm: float = 3.5
    jitter: int = 2  # pixels, on images only
    temperature: float = 20.0
    hard_weight: float = DEFAULT_HARD_WEIGHT
    soft_weight: float = DEFAULT_SOFT_WEIGHT


PAPER_MNIST = MnistRecipe()


@dataclass(frozen=True)
class DataRecipe:
    """The defaults ``distill teacher``/``student`` choose for data that is not the paper's (a
    ``--data`` table or image folder), so a first run trains well; each is overridden by its flag
    and printed once in a ``[defaults]`` line. See :func:`data_defaults`."""

    steps_per_epoch: int = 10  # the batch is capped so that an epoch has at least this many steps
    min_steps: int = 300  # the epochs are raised (up to max_epochs) so that a run has at least this many
    max_epochs: int = 100
    min_batch: int = 8
    width_per_feature: int = 2  # a table teacher's hidden width: this x features, up to a power of 2,
    table_width: tuple = (32, 1024)  # in this range (chosen by 5-fold CV on four tables: docs/results.md)
    small_data: int = 2000  # below this many training rows, at most small_width units
    small_width: int = 128
    student_share: int = 4  # a student's width: the teacher's / this
    table_dropout: float = 0.2  # a table teacher's dropout on its hidden units (none on the inputs)
    # up to cv_max_rows training rows, a table's model is chosen by cv_folds-fold cross-validation among
    # {the MLP above, a linear model} x these weight decays (docs/results.md, "How the table defaults ...")
    cv_folds: int = 5
    cv_max_rows: int = 2000
    table_weight_decays: tuple = (0.0, 1e-2, 1e-1)
    # the MLP stays unless another candidate makes fewer errors (or fits better) by this many standard
    # errors: were five alternatives independent and no better, the best would pass 1 s.e. by chance in
    # 58 % of runs, 3 in under 1 %; measured at 1, 2 and 3 with benchmarks/table_selection.py (docs/results.md)
    cv_margin: float = 3.0
    image_width: int = 32  # the ConvNet teacher's first width (a student's: half of it)
    image_side: int = 64  # larger images are read downscaled to this longest side (a CPU epoch stays short)
    temperature: float = 4.0  # on others' data: T = 20 flattens the soft targets of a few classes


DATA_RECIPE = DataRecipe()


def data_defaults(n_train: int, num_features: int, image: bool, batch_size: int, epochs: int,
                  recipe: DataRecipe = DATA_RECIPE) -> dict:
    """What the data decides when the flags do not: ``batch_size`` = min(``batch_size``, max(min_batch,
    ceil(n / steps_per_epoch))); ``epochs`` = min(max_epochs, max(``epochs``, ceil(min_steps /
    steps))), steps = ceil(n / batch); for a table, ``teacher_hidden`` = 2 layers of
    w = clip(2^ceil(log2(width_per_feature d)), table_width) (at most small_width below small_data rows) and
    ``student_hidden`` = 2 layers of max(8, w / student_share); for images, ``teacher_width`` and
    ``student_width`` of the ConvNet."""
    batch = min(batch_size, max(recipe.min_batch, math.ceil(n_train / recipe.steps_per_epoch)))
    steps = math.ceil(n_train / batch)
    out = dict(batch_size=batch, epochs=min(recipe.max_epochs, max(epochs, math.ceil(recipe.min_steps / steps))))
    if image:
        out.update(teacher_width=recipe.image_width, student_width=max(4, recipe.image_width // 2))
    else:
        lo, hi = recipe.table_width
        w = min(hi, max(lo, 2 ** math.ceil(math.log2(max(1, recipe.width_per_feature * num_features)))))
        if n_train < recipe.small_data:
            w = min(w, recipe.small_width)
        out.update(teacher_hidden=[w, w], student_hidden=[max(8, w // recipe.student_share)] * 2)
    return out


@dataclass(frozen=True)
class CnnTeacherRecipe:
    """A teacher much stronger than the paper's MLP, for the experiments where the teacher must add
    knowledge: ``members`` residual CNNs with global pooling (:class:`distill.models.ResNet` of
    ``width`` and ``depth``), each trained with SGD (momentum 0.9), weight decay
    5e-4 and a cosine schedule on shifts of up to 2 pixels, rotations of up to 10 degrees and
    scalings of up to 10 % (``Augment(shift=2, rotate=10, scale=0.1)``), then combined by the
    arithmetic mean of their distributions (:class:`distill.teachers.teacher.Ensemble`)."""

    width: int = 16
    depth: int = 1
    members: int = 5
    config: TrainConfig = TrainConfig(epochs=30, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                                      augment=Augment(shift=2, rotate=10.0, scale=0.1))


CNN_TEACHER = CnnTeacherRecipe()
