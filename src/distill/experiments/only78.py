"""Paper §3: distil the MNIST teacher on a transfer set of 7s and 8s only; bias correction for the rest.

See :mod:`distill.experiments.partial` for what is trained, the three corrections (none, the
paper's -7.6 on the biases of 7 and 8, automatic) and the data the automatic correction uses."""
from __future__ import annotations

from distill.experiments import partial

NAME = "only-7-8"


def add_arguments(p) -> None:
    partial.add_arguments(p)


def run(preset: str = "quick", **kw) -> list[dict]:
    return partial.run(NAME, preset, **kw)


def main(args) -> list[dict]:
    return partial.main_for(NAME, args)
