"""Command-line flags generated from the option dataclasses, shared by the `mirror_sfm` and `gtgen` commands.

One mechanism for every command: each flag is a field of an option dataclass (`Flag` names the field and its
option strings); its help text is the field's entry in the class docstring's ``Attributes:`` section and its
default the field's default, both shown by `--help`. `--config FILE.yaml` (keys: long option names) becomes
argparse defaults (`apply_config`) before the command line is parsed, so a flag given on the command line
always wins, however it is spelt (``-k5``, ``--num-match 5``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import MirrorError


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and example epilogs keep their line breaks; every optional flag's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required:
            return action.help
        return super()._get_help_string(action)


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> one-line help from the ``Attributes:`` section of a dataclass docstring.

    Entries are ``name: text`` lines indented under ``Attributes:``; deeper-indented lines continue the text.
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    docs: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return docs
    current = None
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:
            break
        m = re.match(r"\s+(\w+)(?: \([^)]*\))?: (.*)", line)
        if m and (indent is None or width == indent):
            indent = width
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif current is not None and width > (indent or 0):
            docs[current] += " " + line.strip()
    return docs


@dataclass(frozen=True)
class Flag:
    """One command-line flag for one field of an option dataclass.

    Attributes:
        field: the dataclass field it sets.
        names: its option strings (``("--num-matched", "-k")``); the first long one names the parsed value.
        help: help text; default: the field's entry in the class docstring.
        choices: the accepted values, when the field is a choice.
        metavar: the value's name in the usage line.
        type: converts the command-line string (default: the type of the field's default value).
    """

    field: str
    names: tuple[str, ...]
    help: str | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None

    @property
    def dest(self) -> str:
        long = next((n for n in self.names if n.startswith("--")), self.names[0])
        return long.lstrip("-").replace("-", "_")


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    flags: Iterable[Flag],
    defaults: object | None = None,
) -> None:
    """Add one argument per `Flag` of dataclass `cls`, with its docstring help and its default.

    `defaults`: an instance whose values are the flags' defaults (default: ``cls()``).
    """
    defaults = cls() if defaults is None else defaults
    docs = field_docs(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for flag in flags:
        if flag.field not in known:
            raise ValueError(f"{cls.__name__} has no field {flag.field!r}")
        text = flag.help or docs.get(flag.field)
        if not text:
            raise ValueError(f"{cls.__name__}.{flag.field}: no help (document it under 'Attributes:')")
        text = text.rstrip(".").replace("%", "%%")
        default = getattr(defaults, flag.field)
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": default, "help": text}
        if isinstance(default, bool):
            kwargs["action"] = "store_true" if not default else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = flag.type or (type(default) if isinstance(default, (int, float, str)) else None)
            if kwargs["type"] is None:
                del kwargs["type"]
            if flag.choices is not None:
                kwargs["choices"] = flag.choices
            if flag.metavar is not None:
                kwargs["metavar"] = flag.metavar
        parser.add_argument(*flag.names, **kwargs)


def options_from_args(cls: type, flags: Iterable[Flag], args: argparse.Namespace, **extra: Any):
    """An instance of `cls` from the parsed flags (fields without a flag keep their defaults) and `extra`."""
    values = {flag.field: getattr(args, flag.dest) for flag in flags}
    values.update(extra)
    return cls(**values)


# ----------------------------------------------------------------------------- parsers


def _example_epilog(examples: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines())


def main_parser(
    prog: str, version: str, description: str, examples: str
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A command line's top-level parser (description, example epilog, --version, -v/-q) and its COMMAND
    subparsers, the same for `mirror_sfm` and `gtgen`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=HelpFormatter,
        description=description,
        epilog=f"{_example_epilog(examples)}\n\n'{prog} COMMAND --help' lists each command's options.",
    )
    parser.add_argument("--version", action="version", version=version)
    add_verbosity(parser, top=True)
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def command_parser(sub, name: str, summary: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand parser with a description, an example epilog, -v/-q, and defaults shown in its help."""
    p = sub.add_parser(
        name,
        help=summary,
        description=f"{summary}.\n\n{description}".rstrip(),
        epilog=_example_epilog(examples),
        formatter_class=HelpFormatter,
    )
    add_verbosity(p, top=False)
    return p


# ----------------------------------------------------------------------------- verbosity


def add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v / -q on `parser`. Subcommands get them too (`top` False) so they work before or after the subcommand:
    there they default to SUPPRESS, so an unused subcommand flag does not reset the top-level one."""
    default: Any = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="warnings and errors only (no INFO lines)"
    )


def log_level(args: argparse.Namespace) -> int:
    """DEBUG with -v, WARNING with -q (and no -v), else INFO."""
    if getattr(args, "verbose", False):
        return logging.DEBUG
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.INFO


# ----------------------------------------------------------------------------- YAML defaults


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand parser `name` of `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


_NOT_CONFIGURABLE = {"help", "version", "config", "verbose", "quiet"}


def config_defaults(parser: argparse.ArgumentParser, path: str | Path, command: str) -> dict[str, Any]:
    """Read `--config` YAML (keys: `parser`'s long option names, '-' or '_') into {dest: value}, checked.

    Unknown keys, values outside a flag's choices and values its type cannot convert are one MirrorError
    naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"config file not found: {path}")
    try:
        conf = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MirrorError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(conf, dict):
        raise MirrorError(f"{path}: expected 'option: value' lines, got a {type(conf).__name__}")
    by_name = {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--")}
    values: dict[str, Any] = {}
    for key, value in conf.items():
        action = by_name.get(str(key).replace("_", "-"))
        if action is None or action.dest in _NOT_CONFIGURABLE:
            raise MirrorError(f"{path}: unknown option {key!r} for '{command}'")
        if isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise MirrorError(f"{path}: bad value for {key!r}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(str(c) for c in action.choices)
            raise MirrorError(f"{path}: {key!r} must be one of {choices}; got {value!r}")
        values[action.dest] = value
    return values


def parse_with_config(
    parser: argparse.ArgumentParser,
    argv: list[str],
    args: argparse.Namespace | None = None,
    config_dest: str = "config",
) -> argparse.Namespace:
    """`argv` parsed (`args`: already parsed once); when the chosen subcommand got `--config FILE`, parsed again
    with FILE's values as the subcommand's defaults, so every flag given on the command line beats the file."""
    args = parser.parse_args(argv) if args is None else args
    path = getattr(args, config_dest, None)
    command = getattr(args, "command", None)
    if not path or command is None:
        return args
    sub = subparser(parser, command)
    sub.set_defaults(**config_defaults(sub, path, command))
    return parser.parse_args(argv)
