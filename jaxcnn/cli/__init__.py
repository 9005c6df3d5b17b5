"""The `jaxcnn` command: argument parsing only; one small function per subcommand
(`run`: summary, train, eval, predict; `exchange`: import, export; `sweeps`: sweep and
the experiments' command line; `figures`: viz; `dispatch`: running one).

Errors: a JaxcnnError prints "error: <message>" to stderr and exits 2 (traceback only with
--debug); an argparse usage error exits 2; anything unexpected exits 1 with a traceback.
Heavy libraries (JAX, TFDS) are imported inside the command functions, so `jaxcnn summary`
and `jaxcnn --help` start fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jaxcnn.cli import exchange, figures, run, sweeps
from jaxcnn.cli.dispatch import dispatch
from jaxcnn.cli.run import train_config_from_args
from jaxcnn.cli.sweeps import experiment_main

__all__ = ["build_parser", "experiment_main", "main", "train_config_from_args"]


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

    for add in (
        run.add_summary,
        run.add_train,
        run.add_eval,
        run.add_predict,
        exchange.add_import,
        exchange.add_export,
        sweeps.add_sweep,
        figures.add_viz,
    ):
        add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 usage/config, 1 unexpected)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return int(e.code or 0)
    return dispatch(args.func, args)
