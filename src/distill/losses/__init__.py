"""Losses: the formulas as pure functions (:mod:`distill.losses.functional`, each docstring states
its formula) and the objectives ``fit`` calls (:mod:`distill.losses.objectives`). The names below
are the package's public face; code inside distill imports from the two modules."""
from distill.checks import check_number, check_temperature
from distill.losses.functional import (
    DEFAULT_HARD_WEIGHT,
    DEFAULT_IGNORE_INDEX,
    DEFAULT_SOFT_WEIGHT,
    LM_IGNORE_INDEX,
    TEACHER_KINDS,
    TOKEN_DIVERGENCES,
    TOKEN_TAILS,
    channel_wise_distillation_loss,
    dense_hard_cross_entropy,
    distillation_loss,
    dkd_loss,
    dkd_terms,
    hard_cross_entropy,
    logit_matching_loss,
    next_token_pairs,
    pixelwise_distillation_loss,
    soft_cross_entropy,
    soften,
    standardize_logits,
    teacher_distribution,
    token_cross_entropy,
    token_divergence,
    valid_token_count,
    zero_mean,
)
from distill.losses.objectives import (
    DKD,
    ChannelWiseDistillation,
    DenseHardLabels,
    Distillation,
    HardLabels,
    LogitMatching,
    NextTokenLoss,
    PixelwiseDistillation,
    Standardized,
    TokenDistillation,
    needs,
    objective_spec,
)
