"""The experiments' numeric flags follow the command's one regime (distill.checks.add_number_flag):
a bad value is a one-line error naming the flag, exit code 2, before anything is loaded or trained."""
import argparse
import importlib

import pytest

from conftest import one_line_error
from distill.checks import check_number_flags
from distill.cli import EXPERIMENTS

BAD = [
    (["reproduce", "specialists", "--seeds", "0", "-1"], "--seeds must be >= 0"),
    (["specialists", "--seed", "1.5"], "--seed must be a whole number"),
    (["reproduce", "specialists", "--n-specialists", "0"], "--n-specialists must be >= 1"),
    (["reproduce", "specialists", "--overlap-ratio", "nan"], "--overlap-ratio must be a finite number"),
    (["reproduce", "specialists", "--cluster-temperature", "0"], "--cluster-temperature must be > 0"),
    (["reproduce", "specialists", "--specialist-epochs", "1e23"], "--specialist-epochs"),
    (["reproduce", "specialists", "--top-n", "two"], "--top-n must be a number"),
    (["reproduce", "specialists", "--holdout", "inf"], "--holdout must be a finite number"),
    (["reproduce", "mnist", "--seeds", "0"], "--seeds must be >= 1"),
    (["reproduce", "methods", "--seeds", "nan"], "--seeds must be a finite number"),
    (["reproduce", "segmentation", "--seeds", "2.5"], "--seeds must be a whole number"),
    (["reproduce", "trees", "--seeds", "0"], "--seeds must be >= 1"),
    (["reproduce", "trees", "--temperature", "-1"], "--temperature must be > 0"),
]


@pytest.mark.parametrize("argv,msg", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_a_bad_experiment_flag_is_a_one_line_error(capsys, argv, msg):
    err = one_line_error(capsys, *argv)
    assert msg in err, err


def test_every_numeric_experiment_flag_is_checked():
    # each experiment's parser: every flag whose default parse is not a string is recorded as a number
    for name, (module, _) in EXPERIMENTS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module).add_arguments(parser)
        numbers = parser._defaults.get("_numbers", {})  # where add_number_flag records the rules
        for action in parser._actions:
            if action.type in (int, float):
                pytest.fail(f"{name}: {action.option_strings} uses type={action.type.__name__}, not add_number_flag")
        args = parser.parse_args([])
        assert set(numbers) <= set(vars(args)) and vars(args).get("_numbers", {}) == numbers, name
        check_number_flags(args)  # the defaults themselves pass


def test_good_values_are_numbers_after_the_check():
    from distill.cli import build_parser

    args = build_parser().parse_args(["reproduce", "trees", "--seeds", "3", "--temperature", "2.5"])
    check_number_flags(args)
    assert args.seeds == 3 and isinstance(args.seeds, int) and args.temperature == 2.5
    args = build_parser().parse_args(["reproduce", "specialists", "--seeds", "0", "2", "--overlap-ratio", "0"])
    check_number_flags(args)
    assert args.seeds == [0, 2] and args.overlap_ratio == 0
