"""The paper's recipes as data: what ``distill teacher`` and ``distill student`` do by default and
what the MNIST experiments start from, stated once."""
from __future__ import annotations

from dataclasses import dataclass

from distill.losses.functional import DEFAULT_HARD_WEIGHT, DEFAULT_SOFT_WEIGHT


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
