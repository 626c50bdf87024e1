"""The ``distill`` command. Thin: parse flags, call the library, print one result line and
where the outputs went. Bad input is a one-line message on stderr and exit code 2, never a
traceback.

    parser      the command line (choices and defaults read from the library)
    train       teacher, student: the config, the teacher, the model, fit
    evaluate    evaluate
    targets     targets: a teacher's soft targets into a store
    tools       export, compare, bench, plot
    reproduce   reproduce, specialists: the experiment registry
    common      data loading and the checks that a checkpoint fits it

Experiments are loaded lazily: ``distill reproduce NAME`` imports ``NAME``'s module (and its
flags) only when ``NAME`` is the one being run, so ``distill teacher`` / ``student`` /
``evaluate`` never import scikit-learn, matplotlib or :mod:`distill.experiments`.
"""
from __future__ import annotations

import os
import re
import sys

from distill import distributed
from distill.checks import check_number_flags
from distill.cli import evaluate, lm, reproduce, targets, tools, train
from distill.cli.config import config_text, file_argv, read_config
from distill.cli.parser import build_parser
from distill.cli.reproduce import EXPERIMENTS
from distill.errors import DistillError

__all__ = ["main", "build_parser", "COMMANDS", "EXPERIMENTS"]

#: ``distill COMMAND`` -> its handler, called with the parsed (and checked) arguments
COMMANDS = {
    "teacher": train.teacher,
    "student": train.student,
    "evaluate": evaluate.evaluate,
    "generate": lm.generate,
    "targets": targets.targets,
    "export": tools.export,
    "compare": tools.compare,
    "bench": tools.bench,
    "plot": tools.plot,
    "reproduce": reproduce.run,
    "specialists": reproduce.run,
    "run": lambda args: run_config(args),
}

#: the commands that run as every process of a ``torchrun`` job (the others run as one process)
DISTRIBUTED = ("teacher", "student", "targets", "run")
#: the commands whose run folder keeps the resolved config file they ran with (config.toml)
CONFIGURED = ("teacher", "student", "reproduce", "specialists")


def run_config(args) -> None:
    """``distill run FILE.toml`` (the command the file describes, parsed as its flags would be) or
    ``distill run --print-config COMMAND ...`` (:mod:`distill.cli.config`)."""
    if args.print_config is not None:
        if not args.print_config or args.print_config[0] == "run":
            raise DistillError("--print-config needs the command line to write out, e.g. `distill run --print-config "
                               "student --teacher runs/t/model --out runs/s`")
        inner = build_parser().parse_args(args.print_config)
        check_number_flags(inner)
        print(config_text(inner, build_parser()), end="")
        return
    if args.file is None:
        raise DistillError("distill run needs a FILE.toml (or --print-config COMMAND ... to write one)")
    argv = file_argv(args.file, read_config(args.file), build_parser()) + list(args.overrides or [])
    inner = build_parser().parse_args(argv)
    try:
        check_number_flags(inner)
    except ValueError as e:
        raise DistillError(f"{args.file}: {e}") from None
    if inner.command in CONFIGURED:
        inner.config_toml = config_text(inner, build_parser())
    if distributed.world()[1] > 1 and inner.command not in DISTRIBUTED:
        raise DistillError(f"under torchrun only training commands run data-parallel; {args.file} runs "
                           f"`distill {inner.command}`")
    COMMANDS[inner.command](inner)


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in logs too
    try:
        args = build_parser().parse_args(argv)
        check_number_flags(args)
        if args.command in CONFIGURED:
            args.config_toml = config_text(args, build_parser())
        if distributed.init_from_env(device=getattr(args, "device", None)) and args.command not in DISTRIBUTED:
            raise DistillError("under torchrun only the `teacher` and `student` commands train data-parallel "
                               f"(and `targets` builds a store in shards); run `distill {args.command}` as a single "
                               "process")
        COMMANDS[args.command](args)
    except (DistillError, ValueError) as e:
        print(f"distill: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a command never ends in a traceback; $DISTILL_DEBUG shows it
        if os.environ.get("DISTILL_DEBUG"):
            raise
        if distributed.world()[1] > 1 and isinstance(e, RuntimeError):  # a collective failed: a peer died
            print(f"distill: error: process {distributed.world()[0]} stopped: another process of this torchrun job "
                  f"failed or was killed ({_one_line(e)[:200]}); rerun the same command to resume", file=sys.stderr)
            return 2
        print(f"distill: error: unexpected {type(e).__name__}: {_one_line(e)} (set DISTILL_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (ANSI colour codes dropped, at most 500 characters)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", str(e)).strip()
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."
