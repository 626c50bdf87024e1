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
}

#: the commands that run as every process of a ``torchrun`` job (the others run as one process)
DISTRIBUTED = ("teacher", "student", "targets")


def main(argv=None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in logs too
    try:
        args = build_parser().parse_args(argv)
        check_number_flags(args)
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
