"""The CLI states no choice or default of the library's own: the parser reads them from the library,
every subcommand has a handler in the dispatch table, and the sources are organised by what they
do (no issue numbers)."""
import argparse
import re
from pathlib import Path

import pytest

import distill.cli
from distill import data as D
from distill.cli import COMMANDS, build_parser
from distill.losses.functional import DEFAULT_HARD_WEIGHT, DEFAULT_SOFT_WEIGHT
from distill.losses.objectives import ChannelWiseDistillation
from distill.models import segmentation
from distill.teachers.store import DTYPES
from distill.teachers.teacher import COMBINES
from distill.tools.bench import SECTIONS
from distill.tools.export import FORMATS
from distill.train.config import OPTIMIZERS, PRECISIONS, SCHEDULES, SELECT, TrainConfig


def _subparsers(parser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _action(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_subcommand_has_a_handler():
    assert set(_subparsers(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize("command", ["teacher", "student"])
def test_training_choices_and_defaults_are_the_library_s(command):
    p = _subparsers(build_parser())[command]
    config = TrainConfig()
    for flag, allowed, default in (("--optimizer", OPTIMIZERS, config.optimizer),
                                   ("--schedule", SCHEDULES, config.schedule),
                                   ("--precision", PRECISIONS, config.precision),
                                   ("--select", SELECT, config.select)):
        a = _action(p, flag)
        # --optimizer is resolved by --task (a language model's default differs): its help states both
        assert tuple(a.choices) == tuple(allowed), flag
        assert a.default == default or (a.default is None and f"default {default};" in a.help), flag
    assert tuple(_action(p, "--dataset").choices) == tuple(D.LOADERS)
    assert f"default {config.batch_size};" in _action(p, "--batch-size").help
    assert _action(p, "--momentum").default == config.momentum
    assert _action(p, "--seed").default == config.seed
    assert set(segmentation.ARCHS) <= set(_action(p, "--arch").choices)


def test_distillation_defaults_are_stated_from_the_library():
    p = _subparsers(build_parser())["student"]
    assert tuple(_action(p, "--combine").choices) == tuple(COMBINES)
    assert f"default {DEFAULT_HARD_WEIGHT:g};" in _action(p, "--hard-weight").help
    assert f"{segmentation.DISTILL_HARD_WEIGHT:g} on label masks" in _action(p, "--hard-weight").help
    assert f"default {DEFAULT_SOFT_WEIGHT:g};" in _action(p, "--soft-weight").help
    assert f"{segmentation.DISTILL_TEMPERATURE:g} on label masks" in _action(p, "--temperature").help
    cwd = ChannelWiseDistillation()
    assert (f"T = {cwd.temperature:g}, --soft-weight {cwd.soft_weight:g}, --hard-weight {cwd.hard_weight:g}"
            in _action(p, "--cwd").help)


def test_tool_choices_are_the_library_s():
    sub = _subparsers(build_parser())
    assert tuple(_action(sub["targets"], "--dtype").choices) == tuple(DTYPES)
    assert tuple(_action(sub["targets"], "--combine").choices) == tuple(COMBINES)
    assert tuple(_action(sub["export"], "--format").choices) == tuple(FORMATS)
    assert tuple(_action(sub["bench"], "--skip").choices) == tuple(SECTIONS)


def test_sources_name_no_issue_numbers():
    folder = Path(distill.cli.__file__).parent
    found = [f"{p.name}:{i}: {line.strip()}" for p in sorted(folder.glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bissue\s*#?\d+", line, re.I)]
    assert not found, "\n".join(found)
