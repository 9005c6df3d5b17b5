"""`jaxcnn sweep` and the command line of the experiments/*.py scripts."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

from jaxcnn.cli.dispatch import dispatch
from jaxcnn.errors import JaxcnnError


def add_sweep(sub, common) -> None:
    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="run / resume a sweep, run one sweep worker, or report a sweep",
        description="jaxcnn sweep CONFIG [--workdir DIR] [--storage URL] [--workers N]: run or "
        "resume a sweep (CONFIG: .toml/.json sweep file, experiments/*.py, or a sweep dir). "
        "jaxcnn sweep worker CONFIG --storage URL: one worker (start N of them, on any "
        "machines sharing the storage and workdir). jaxcnn sweep report DIR: ranked table "
        "and figures. jaxcnn sweep compare DIR_A DIR_B [--out FILE]: does A's ranking "
        "hold in B (the same grid at another budget or with other seeds)?",
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="CONFIG | worker CONFIG | report DIR | compare DIR_A DIR_B",
    )
    p.add_argument("--out", help="compare: also write the comparison to this file")
    p.add_argument(
        "--workdir",
        help="sweep directory (default: CONFIG when it is a sweep directory, else "
        "runs/sweeps/<name>)",
    )
    p.add_argument(
        "--storage", help="Optuna storage URL (default: a journal file in workdir)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine"
    )
    p.add_argument(
        "--smoke", action="store_true", help="the sweep's seconds-long version"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--restart", action="store_true", help=_RESTART_HELP)
    p.set_defaults(func=_cmd_sweep)


_RESTART_HELP = (
    "discard the trials this sweep already has in --workdir (and its study in "
    "--storage) and start afresh; needed after changing its base config, sampler or "
    "search space (new grid points, seeds or trials need no restart)"
)


def _cmd_sweep(args) -> int:
    from jaxcnn import sweep

    action, rest = args.target[0], args.target[1:]
    if action == "compare":
        if len(rest) != 2:
            raise JaxcnnError("usage: jaxcnn sweep compare DIR_A DIR_B [--out FILE]")
        from jaxcnn.sweep import compare

        print(compare.compare(rest[0], rest[1], args.out))
        return 0
    if action in ("report", "worker"):
        if args.restart:
            raise JaxcnnError(
                f"--restart applies to `jaxcnn sweep CONFIG`, not to `sweep {action}` "
                "(a worker must not discard trials other workers are running)"
            )
        if len(rest) != 1:
            raise JaxcnnError(
                f"usage: jaxcnn sweep {action} {'DIR' if action == 'report' else 'CONFIG'}"
            )
        if action == "report":
            from jaxcnn.sweep import report

            print(report.write_report(rest[0]))
            return 0
        sweep.work(
            rest[0],
            args.workdir,
            storage=args.storage,
            smoke=args.smoke,
            quiet=args.quiet,
        )
        return 0
    if rest:
        raise JaxcnnError(f"jaxcnn sweep takes one CONFIG, got {args.target}")
    _run_sweep(action, args)
    return 0


def _run_sweep(target: str, args) -> None:
    """Runs or resumes the sweep `target` with the command line's settings."""
    from jaxcnn import sweep

    sweep.run_sweep(
        target,
        args.workdir,
        storage=args.storage,
        workers=args.workers,
        smoke=args.smoke,
        quiet=args.quiet,
        restart=args.restart,
    )


def experiment_main(module_file: str, argv: Sequence[str] | None = None) -> int:
    """The command line of an experiments/*.py script: runs its sweep, then the report.

    `python -m experiments.NAME [--smoke] [--workdir DIR] [--storage URL] [--workers N]
    [--quiet] [--no-report]`; returns the exit status, as `main` does.
    """
    name = pathlib.Path(module_file).stem
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=f"Runs the {name!r} sweep, then its report.",
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long version")
    parser.add_argument(
        "--workdir",
        help=f"sweep directory (default runs/sweeps/{name}, or {name}-smoke)",
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: journal in workdir)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--restart", action="store_true", help=_RESTART_HELP)
    parser.add_argument("--no-report", action="store_true", help="skip the report")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return int(e.code or 0)
    args.module_file = module_file
    return dispatch(_cmd_experiment, args)


def _cmd_experiment(args) -> int:
    from jaxcnn.sweep import config

    if not args.workdir:  # under runs/ whatever the file is called
        name = config.check_name(pathlib.Path(args.module_file).stem)
        args.workdir = f"runs/sweeps/{name}{'-smoke' if args.smoke else ''}"
    _run_sweep(args.module_file, args)
    if not args.no_report:
        from jaxcnn.sweep import report

        print(report.write_report(args.workdir))
    return 0
