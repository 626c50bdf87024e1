"""``distill run FILE.toml``: any command as one config file, and ``distill run --print-config
COMMAND ...``: the resolved file of a command line.

The file's schema is the command line's: ``command`` names the subcommand (with ``experiment`` for
``reproduce``, ``figure`` for ``plot``), and every other key is one of that command's flags without
its dashes (``batch-size = 64``, ``teacher = ["runs/t/model"]``; ``batch_size`` is read as the same
key) or a positional argument (``checkpoint = "..."``). The keys, their types, choices and ranges
are read from the parser, whose defaults and choices come from the library's config dataclasses, so
the file and the flags cannot drift apart; the file becomes the argument list the flags would have
given, parsed by the same parser, so a file and its command line train to the same run key.

Every training command writes its resolved file into its output folder (``config.toml``).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import tomllib
from pathlib import Path

from distill.checks import number_flag_value
from distill.errors import DistillError

#: the file a run folder keeps
CONFIG_FILE = "config.toml"
#: the key naming the subcommand
COMMAND_KEY = "command"
#: the commands ``distill run`` does not run (itself)
NOT_RUNNABLE = ("run",)


# ---------------------------------------------------------------- the parser as a schema

def _subparsers(parser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _choose(parser, name: str):
    """The subparser ``name`` of ``parser``, with its lazily added flags loaded."""
    sub = _subparsers(parser)
    load = getattr(sub, "lazy", {}).pop(name, None)
    if load is not None:
        load(sub._name_parser_map[name])
    return sub._name_parser_map[name]


def _key(action) -> str:
    """An action's key in the file: its long flag without the dashes, or a positional's name."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    return longs[0][2:] if longs else action.dest.replace("_", "-")


def _settable(parser) -> dict:
    """``{key: action}`` of the flags and positionals a file may set in ``parser``."""
    return {_key(a): a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.dest != argparse.SUPPRESS}


def _numbers(parser) -> dict:
    """The numeric flags' rules (:func:`distill.checks.add_number_flag`), by dest."""
    return dict(parser._defaults.get("_numbers", {}))


# ---------------------------------------------------------------- file -> argument list

def _fail(file, message: str):
    raise DistillError(f"{file}: {message}")


def _type_name(v) -> str:
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list"}.get(type(v),
                                                                                                      type(v).__name__)


def _scalar(file, key: str, action, value, rules) -> str:
    if isinstance(value, (list, dict)) or isinstance(value, bool):
        _fail(file, f"key '{key}' takes one value, got {_type_name(value)}")
    if rules is not None:
        if not isinstance(value, (int, float)):
            _fail(file, f"key '{key}' must be a number, got {value!r}")
        number_flag_value(f"{file}: key '{key}'", value, rules)
    elif not isinstance(value, str) and action.type is None and action.choices is None:
        _fail(file, f"key '{key}' must be a string, got {_type_name(value)} {value!r}")
    if action.choices is not None and value not in action.choices:
        _fail(file, f"key '{key}' must be one of {', '.join(map(str, action.choices))}; got {value!r}")
    return str(value)


def _arguments(file, key: str, action, value, rules) -> list[str]:
    """The command-line words that give ``action`` the file's ``value``."""
    flag = next((o for o in action.option_strings if o.startswith("--")), None)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            _fail(file, f"key '{key}' is true or false, got {value!r}")
        return [flag] if value else []  # the key is the flag's name: true gives the flag
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [w for v in items for w in (flag, _scalar(file, key, action, v, rules))]
    if many:
        items = value if isinstance(value, list) else [value]
        if not items and action.nargs == "+":
            _fail(file, f"key '{key}' needs at least one value")
        words = [_scalar(file, key, action, v, rules) for v in items]
    else:
        words = [_scalar(file, key, action, value, rules)]
    return words if flag is None else [flag, *words]


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def file_argv(file, table: dict, parser) -> list[str]:
    """The argument list that the config ``table`` (read from ``file``) stands for."""
    table = dict(table)
    argv = []
    node = parser
    key = COMMAND_KEY
    while _subparsers(node) is not None:
        sub = _subparsers(node)
        choices = [c for c in sub.choices if c not in NOT_RUNNABLE]
        name = table.pop(key, None)
        if name is None:
            _fail(file, f"no '{key}' key: say which one to run ({', '.join(choices)})")
        if name not in choices:
            _fail(file, f"'{key}' must be one of {', '.join(choices)}; got {name!r}{_suggest(str(name), choices)}")
        argv.append(name)
        node = _choose(node, name)
        key = _subparsers(node).dest if _subparsers(node) is not None else None
    known = _settable(node)
    numbers = _numbers(node)
    positionals, flags = [], []
    for raw, value in table.items():
        k = raw.replace("_", "-")
        action = known.get(k)
        if action is None:
            _fail(file, f"unknown key '{raw}' for `distill {' '.join(argv)}`{_suggest(k, known)}")
        if isinstance(value, dict):
            _fail(file, f"key '{raw}' is a table; `distill {' '.join(argv)}` takes its keys at the top level")
        words = _arguments(file, k, action, value, numbers.get(action.dest, (None, None))[1]
                           if action.dest in numbers else None)
        (flags if action.option_strings else positionals).append((action, words))
    missing = [_key(a) for a in node._actions if a.required and a.option_strings and a not in [x for x, _ in flags]]
    order = {a: i for i, a in enumerate(node._actions)}
    pos_missing = [_key(a) for a in node._actions if not a.option_strings and a.nargs not in ("?", "*")
                   and not isinstance(a, argparse._SubParsersAction) and a not in [x for x, _ in positionals]]
    if missing or pos_missing:
        _fail(file, f"`distill {' '.join(argv)}` needs the key '{(missing + pos_missing)[0]}'")
    for _, words in sorted(positionals, key=lambda aw: order[aw[0]]):
        argv += words
    for _, words in flags:
        argv += words
    return argv


def read_config(path) -> dict:
    """The table of a TOML file, or a one-line error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DistillError(f"config file {p} not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise DistillError(f"{p} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DistillError(f"cannot read {p} ({e})") from None


# ---------------------------------------------------------------- parsed command -> file

def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # a TOML basic string


def config_text(args, parser) -> str:
    """The resolved config file of the parsed command ``args``: its command (and experiment or
    figure) and every flag's value, defaults included (flags left unset and without a default are
    left out)."""
    lines = ["# distill run FILE: this command with every setting it ran with"]
    node = parser
    while _subparsers(node) is not None:
        dest = _subparsers(node).dest
        lines.append(f"{dest} = {_toml(getattr(args, dest))}")
        node = _choose(node, getattr(args, dest))
    for k, action in _settable(node).items():
        if action.dest.startswith("_") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None:
            continue
        if isinstance(action, argparse._StoreFalseAction):
            value = not value if isinstance(value, bool) else value
            if value is False:
                continue
        lines.append(f"{k} = {_toml(value)}")
    return "\n".join(lines) + "\n"
