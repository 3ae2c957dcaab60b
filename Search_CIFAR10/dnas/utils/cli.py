"""What every command-line tool shares: import path set-up and one-line errors.

Bad input (a missing file, malformed JSON, an unknown name, a mismatched checkpoint) must end in one
readable line on stderr and a non-zero exit, never a traceback. Library code raises ``ValueError``
(or a subclass) / ``FileNotFoundError`` with a message that names the file or flag; ``run_cli``
turns those into that line. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

EXIT_BAD_INPUT = 2


def _one_line_argument_error(parser: argparse.ArgumentParser, message: str):
    raise ValueError(f"{message} (see --help)")


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv=None) -> None:
    # argparse's own error() prints the whole usage first (40 lines for the search scripts) and hides the
    # one line that names the flag; while a CLI runs, a bad flag is a ValueError like any other bad input
    default_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _one_line_argument_error
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    finally:
        argparse.ArgumentParser.error = default_error
    sys.exit(code or 0)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already says its default or there is
    nothing to say (None, False: "(default: None)" tells a user nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {v}")
    return v
