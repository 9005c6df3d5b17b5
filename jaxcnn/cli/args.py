"""Argument types the subcommands share."""

from __future__ import annotations

import argparse


def input_shape(text: str) -> tuple[int, int, int]:
    """Parses "H,W,C" (also "HxWxC")."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected H,W,C with three positive integers (e.g. 28,28,1), got {text!r}"
        )
    return shape
