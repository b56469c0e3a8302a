"""What every script's command line shares: the --help format, count arguments, counts in messages, Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer no smaller than `minimum` (and no larger than `maximum`, if given)."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid int value" error
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {value}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


SEED = at_least(0, 2**32 - 1)  # what numpy's and Keras's seeding take


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, the noun with an s unless the count is one: "1 trial", "3 trials"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the scripts write it: the description's own line breaks, and each option's default once."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # None, a flag's False and --help's SUPPRESS say nothing; a help that explains its default has it.
        if action.default in (None, argparse.SUPPRESS) or action.default is False or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def run(main: Callable[[], int]) -> None:
    """Exit with main()'s status; a Ctrl-C that main does not handle itself ends in one line and 130, not a traceback."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        status = 130
    sys.exit(status)
