"""argparse pieces shared by the scripts: value types that reject a bad value with a one-line message, and the
--help formatter. argparse only: a script parses its arguments (and answers --help) before anything heavy loads."""

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A fraction in (0, 1]: a k-WTA ratio, a tolerance."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def gpu_ids(text: str) -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES: a comma-separated list of distinct non-negative integers ('0,1,3')."""
    items = [item.strip() for item in text.split(",")]
    if not all(item.isascii() and item.isdecimal() for item in items):
        raise argparse.ArgumentTypeError(f"must be comma-separated non-negative integers (GPU ids), got {text!r}")
    ids = [str(int(item)) for item in items]
    if len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"lists a GPU twice: {text!r}")
    return ids


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout (examples stay on their own lines) and shows every default that says
    something: not a flag's (off), nor None or an empty list (no default: the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if action.nargs == 0 or default is None or (isinstance(default, list | tuple) and not default):
            return action.help
        return super()._get_help_string(action)
