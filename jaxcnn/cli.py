"""The `jaxcnn` command: argument parsing only; one small function per subcommand.

Errors: a JaxcnnError prints "error: <message>" to stderr and exits 2 (traceback only with
--debug); an argparse usage error exits 2; anything unexpected exits 1 with a traceback.
Heavy libraries (JAX, TFDS) are imported inside the command functions, so `jaxcnn summary`
and `jaxcnn --help` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence

from jaxcnn.errors import JaxcnnError


def _input_shape(text: str) -> tuple[int, int, int]:
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


# --------------------------------------------------------------------------- commands
def cmd_summary(args: argparse.Namespace) -> int:
    """Prints the per-layer table (or JSON) of a preset, family or spec file."""
    from jaxcnn import models, shapes

    spec = models.load_spec(
        args.model, input_shape=args.input_shape, num_classes=args.classes
    )
    summary = shapes.summarize(spec)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(shapes.format_table(summary))
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks for configuration errors too",
    )
    parser = argparse.ArgumentParser(
        prog="jaxcnn",
        description="Define, inspect, train, checkpoint and sweep CNNs in JAX / Flax NNX.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "summary",
        parents=[common],
        help="per-layer output shapes, parameters, FLOPs and receptive fields",
        description="Per-layer table of a model: output shape, parameters, FLOPs, "
        "receptive field; totals. MODEL is a preset, a family (simple_cnn) or a "
        ".toml/.json spec file.",
    )
    p.add_argument("model", metavar="MODEL", help="preset / family name or spec file")
    p.add_argument(
        "--input-shape",
        type=_input_shape,
        metavar="H,W,C",
        help="override the input shape",
    )
    p.add_argument(
        "--classes", type=int, metavar="N", help="override the number of classes"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 usage/config, 1 unexpected)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return int(e.code or 0)
    debug = getattr(args, "debug", False)
    try:
        return args.func(args)
    except JaxcnnError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
