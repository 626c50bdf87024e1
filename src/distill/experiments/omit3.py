"""Paper §3: distil the MNIST teacher on a transfer set without any 3s; bias correction for the 3s.

See :mod:`distill.experiments.partial` for what is trained, the three corrections (none, the
paper's +3.5, automatic) and the data the automatic correction uses."""
from __future__ import annotations

from distill.experiments import partial

NAME = "omit-3"


def add_arguments(p) -> None:
    partial.add_arguments(p)


def run(preset: str = "quick", **kw) -> list[dict]:
    return partial.run(NAME, preset, **kw)


def main(args) -> list[dict]:
    return partial.main_for(NAME, args)
