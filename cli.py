"""What every script's command line shares: the --help format, count arguments, the precision choices."""

from __future__ import annotations

import argparse

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PRECISION_HELP = ("Keras dtype policy of training. auto: mixed_bfloat16 on a GPU of compute capability 8.0+ "
                  "(Ampere on), a TPU, or a CPU with bfloat16 instructions (AVX512-BF16, AMX); mixed_float16, "
                  "with loss scaling, on a 7.x GPU (Volta, Turing); else float32")


def at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum`."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid int value" error
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the scripts write it: the description's own line breaks, and each option's default once."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # None, a flag's False and --help's SUPPRESS say nothing; a help that explains its default has it.
        if action.default in (None, argparse.SUPPRESS) or action.default is False or "default" in text:
            return text
        return f"{text} (default: %(default)s)"
