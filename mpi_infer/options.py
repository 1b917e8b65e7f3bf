"""Run options from elsewhere than the command line: ``@args.txt`` files, ``run --config run.yaml`` and the
Python API's keyword arguments. All three become the same argv, which the one ``run`` parser checks: an option
means the same, and is checked the same, whichever way it came.

A YAML (or API) key is named like the flag (``batch-size`` or ``batch_size``; ``class`` for ``--class``); a
flag's value is a string or a number, ``true``/``false`` for a switch, a list for a repeatable or a
several-valued flag (``split: [test, validation]``, ``size: [256, 256]``), and a mapping ``{NAME: VALUE}`` for
``model`` and ``activation``. Flags given on the command line win over the file's.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from .atomic import read_input
from .errors import UsageError, clip

MAX_OPTIONS_BYTES = 1 << 20  # an options file is a few lines; a bigger one is a mistake (or /dev/zero)
NAMED = ("model", "activation")  # flags whose values may be given as a mapping NAME: VALUE


def expand_argv(argv: Sequence[str], run: argparse.ArgumentParser) -> tuple[list[str], dict[str, Any] | None]:
    """``@FILE`` arguments replaced by the file's lines (one argument a line; blank lines and ``#`` comments
    skipped), then, for ``run --config FILE``, the file's options placed before the command line's (which
    override them). Returns the argv and the config file's options (None without one)."""
    expanded: list[str] = []
    for arg in argv:
        if arg.startswith("@") and len(arg) > 1:
            text = read_input(arg[1:], UsageError, "arguments file", MAX_OPTIONS_BYTES).decode("utf-8", "replace")
            expanded += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            expanded.append(arg)
    if not expanded or expanded[0] != "run":
        return expanded, None
    path = _config_path(expanded[1:])
    if path is None:
        return expanded, None
    options = load_options(path)
    given = _dests_given(expanded[1:], run)
    extra = options_argv(run, {k: v for k, v in options.items() if _action(run, k, path).dest not in given}, path)
    return ["run", *extra, *expanded[1:]], options


def load_options(path: str) -> dict[str, Any]:
    """A ``--config`` file: a YAML mapping of run options."""
    import yaml

    from .data.yamltext import MAX_NESTING, yaml_nesting

    text = read_input(path, UsageError, "--config file", MAX_OPTIONS_BYTES)
    if yaml_nesting(text.decode("utf-8", "replace")) > MAX_NESTING:
        raise UsageError(f"argument --config: {path} is nested deeper than run options need; refused")
    try:
        options = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"argument --config: {path} is not valid YAML: {clip(str(exc), 300)}") from None
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise UsageError(f"argument --config: {path} holds a {type(options).__name__}; expected a mapping of "
                         f"run options (dataset: ..., model: ..., out: ...)")
    return options


def options_argv(run: argparse.ArgumentParser, options: Mapping[str, Any], where: str) -> list[str]:
    """Options named like the flags, as the argv that gives them."""
    argv: list[str] = []
    for key, value in options.items():
        action = _action(run, key, where)
        flag = max(action.option_strings, key=len)
        if value is None:
            continue
        if isinstance(value, Mapping) and str(key).replace("_", "-") in NAMED:
            value = [f"{name}={v}" for name, v in value.items()]
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise UsageError(f"{where}: option {key!r}: expected true or false, got {clip(repr(value), 80)}")
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            for v in value if isinstance(value, list | tuple) else [value]:
                argv += [flag, _scalar(key, v, where)]
        elif isinstance(action.nargs, int) or action.nargs == "+":  # several values: --size H W, --mean R G B
            values = value if isinstance(value, list | tuple) else [value]
            argv += [flag, *(_scalar(key, v, where) for v in values)]
        else:
            argv += [flag, _scalar(key, value, where)]
    return argv


def _scalar(key: str, value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"{where}: option {key!r}: expected a string or a number, got {clip(repr(value), 80)}")
    return str(value)


def _action(run: argparse.ArgumentParser, key: Any, where: str) -> argparse.Action:
    name = "--" + str(key).replace("_", "-")
    action = run._option_string_actions.get(name)
    if action is None or action.dest in ("help", "config"):
        known = sorted(s[2:] for s in run._option_string_actions if s.startswith("--") and s not in
                       ("--help", "--config"))
        raise UsageError(f"{where}: unknown option {clip(str(key), 80)!r}; run options are: {', '.join(known)}")
    return action


def _config_path(args: Sequence[str]) -> str | None:
    for k, arg in enumerate(args):
        if arg == "--config":
            if k + 1 >= len(args):
                raise UsageError("argument --config: expected a YAML file of run options")
            return args[k + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _dests_given(args: Sequence[str], run: argparse.ArgumentParser) -> set[str]:
    """The options the command line gives itself (they win over the config file's)."""
    given = set()
    for arg in args:
        action = run._option_string_actions.get(arg.split("=", 1)[0]) if arg.startswith("-") else None
        if action is not None:
            given.add(action.dest)
    return given
