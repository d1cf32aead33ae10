"""The command line: the only place that prints and chooses exit codes.

Each subcommand lives in ``klpkit.commands.<name>`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit code.  Errors raised as
:class:`klpkit.errors.KlpkitError` become one line on stderr and exit code 2
(or the error's own code); no traceback reaches the user.
"""

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from klpkit import __version__
from klpkit.errors import KlpkitError
from klpkit.output import escaping

# Subcommand modules, in the order they appear in --help.
COMMANDS = ["build", "inspect", "convert", "symbols", "vm", "setup", "deps", "check"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klpkit", description="Linux kernel livepatch module toolchain."
    )
    parser.add_argument("--version", action="version", version=f"klpkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"klpkit.commands.{name}").register(sub)
    return parser


def run(func: Callable[[Any], object], args: object) -> int:
    """Run a command: its errors become one line and an exit code, and nothing it prints
    can fail to encode (names and paths are bytes that need not be UTF-8)."""
    _open_closed_streams()
    with escaping(sys.stdout, sys.stderr):
        return _run(func, args)


def _open_closed_streams() -> None:
    """A process started with stdout or stderr closed (``>&-``) has None there; what a
    command prints then goes nowhere, as print() would let it, instead of failing."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")


def _run(func: Callable[[Any], object], args: object) -> int:
    try:
        status = func(args)
        return int(status) if isinstance(status, int) else 0
    except KlpkitError as e:
        print(f"klpkit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("klpkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


def klp_convert_main(argv=None) -> int:
    """``klp-convert SYMBOLS.LIST IN.ko OUT.ko``: the kernel proposal's command line."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        mod = importlib.import_module("klpkit.commands.klp_convert")
    except ModuleNotFoundError:
        print("klp-convert: not yet implemented in this klpkit version", file=sys.stderr)
        return 2
    return run(mod.main, argv)


if __name__ == "__main__":
    sys.exit(main())
