"""Running a sweep: `run_sweep` (in this process or N local worker processes) and `work`
(one worker, e.g. one per machine sharing a database storage).

A sweep directory holds:
  sweep.json            the resolved sweep (base config, points, settings)
  optuna.journal        the default Optuna storage (storage.py; a database URL may be
                        given instead, for workers on many machines)
  trials/<key>/         one `fit` run directory per trial (config, metrics, checkpoints);
                        with seeds > 1 it is seed 0's, and seed1/, seed2/, ... the others
  results.csv/.jsonl    one row per trial, rewritten atomically after every trial

Rerunning a sweep resumes it, and a sweep may grow between runs: new grid points, more
seeds or trials run, finished ones do not. A changed base config, sampler or search space
is refused with what changed; `restart` discards the old trials instead.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

from jaxcnn import errors, rundir
from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import config, results, status, worker
from jaxcnn.sweep import storage as storage_lib
from jaxcnn.train import preemption


def prepare_dir(
    sweep: config.Sweep,
    workdir: str | os.PathLike | None,
    *,
    storage: str | None = None,
    restart: bool = False,
) -> pathlib.Path:
    """Creates (or checks) the sweep directory and writes sweep.json.

    A sweep may grow (`config.changes` says how); with `restart` the trials already
    there (run directories, results and the study in `storage`) are discarded first.

    Raises:
      JaxcnnError: the directory is a file or not writable, its sweep.json is
        unreadable, or it holds a sweep with other settings (and not `restart`).
    """
    sweep_dir = pathlib.Path(workdir or f"runs/sweeps/{config.check_name(sweep.name)}")
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise JaxcnnError(
            f"the sweep directory {sweep_dir} is a file; pass a folder as --workdir"
        )
    saved = sweep_dir / config.SWEEP_FILE
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if restart:
            _discard(sweep, sweep_dir, storage)
        elif saved.exists():
            old = config.read_saved(sweep_dir)
            config.check_unchanged(old, sweep, str(sweep_dir))
        rundir.write_json_atomic(saved, sweep.to_dict())
    except OSError as e:
        raise JaxcnnError(
            f"cannot write to the sweep directory {sweep_dir} ({type(e).__name__}: "
            f"{e}); pass a writable folder as --workdir"
        ) from None
    return sweep_dir


def _workdir(source: Any, workdir: str | os.PathLike | None) -> Any:
    """A sweep directory given as the source resumes in place unless told otherwise."""
    if workdir is None and isinstance(source, str | os.PathLike):
        if pathlib.Path(source).is_dir():
            return source
    return workdir


def _discard(sweep: config.Sweep, sweep_dir: pathlib.Path, storage: str | None) -> None:
    """Removes what a sweep wrote in `sweep_dir`, and its study from `storage` (the
    default journal in `sweep_dir` is the sweep's own, so it goes whole)."""
    if storage is None:
        (sweep_dir / storage_lib.JOURNAL).unlink(missing_ok=True)
    else:
        storage_lib.discard(storage_lib.open_storage(storage, sweep_dir), sweep.name)
    shutil.rmtree(sweep_dir / "trials", ignore_errors=True)
    for name in ("results.csv", "results.jsonl", "report.md"):
        (sweep_dir / name).unlink(missing_ok=True)


def work(
    source: Any,
    workdir: str | os.PathLike | None = None,
    *,
    storage: str | None = None,
    smoke: bool = False,
    quiet: bool = False,
    max_trials: int | None = None,
) -> int:
    """Runs one worker: trials of the sweep until none is left. Returns how many it ran.

    Start it N times (on one machine with the default journal storage, or on many
    machines with one `storage` URL and a shared workdir) to run trials in parallel.
    """
    sweep = config.load_sweep(source, smoke=smoke)
    sweep_dir = prepare_dir(sweep, _workdir(source, workdir), storage=storage)
    return worker.Worker(sweep, sweep_dir, storage, quiet).run(max_trials)


def _run_workers(command: list[str], workers: int, name: str) -> None:
    """Runs `workers` copies of `command` to the end; SIGTERM / SIGINT sent to this
    process are passed on to them, and `errors.Interrupted` raised once they stopped."""
    with preemption.Stop.on_signals() as stop:
        # their own process group: a Ctrl-C in the terminal reaches them once, from here
        procs = [subprocess.Popen(command, process_group=0) for _ in range(workers)]
        passed_on = 0
        while any(p.poll() is None for p in procs):
            if stop.signal and not passed_on:
                passed_on = stop.signal
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(stop.signal)
            time.sleep(0.1)
        codes = [p.returncode for p in procs]
    if stop.signal:
        raise errors.Interrupted(
            f"{stop.name} received: the {workers} workers of sweep {name!r} stopped "
            f"(exit statuses {codes}); run the same command again to resume",
            stop.signal,
        )
    if any(codes):
        raise JaxcnnError(f"sweep workers exited with {codes}; rerun to resume")


def run_sweep(
    config_or_path: Any,
    workdir: str | os.PathLike | None = None,
    *,
    storage: str | None = None,
    workers: int = 1,
    smoke: bool = False,
    quiet: bool = False,
    restart: bool = False,
) -> list[dict[str, Any]]:
    """Runs (or resumes) a sweep to the end and returns its result rows.

    Args:
      config_or_path: a `Sweep`, a TOML/JSON/.py file, an experiment module, or a sweep
        directory.
      workdir: the sweep directory (default: `config_or_path` when that is a sweep
        directory, else runs/sweeps/<name>).
      storage: Optuna storage URL (default: a journal file in workdir).
      workers: worker processes on this machine (1 = run in this process).
      smoke: shrink the sweep to seconds (the module's / file's smoke settings).
      quiet: no progress output.
      restart: discard the trials of this sweep already in workdir / storage first
        (needed to rerun a sweep whose base config, sampler or search space changed).

    Returns:
      The rows written to results.jsonl: one per trial.
    """
    sweep = config.load_sweep(config_or_path, smoke=smoke)
    workdir = _workdir(config_or_path, workdir)
    sweep_dir = prepare_dir(sweep, workdir, storage=storage, restart=restart)
    if workers <= 1:
        worker.Worker(sweep, sweep_dir, storage, quiet).run()
    else:
        # Workers load the resolved sweep from sweep_dir/sweep.json, so any source works.
        worker.Worker(
            sweep, sweep_dir, storage, True
        )  # creates the study and enqueues once
        command = [
            sys.executable,
            "-m",
            "jaxcnn",
            "sweep",
            "worker",
            str(sweep_dir),
            "--workdir",
            str(sweep_dir),
        ]
        if storage:
            command += ["--storage", storage]
        if quiet:
            command.append("--quiet")
        _run_workers(command, workers, sweep.name)
    rows = results.read_results(sweep_dir)
    if not quiet:
        counts = {s: sum(r["status"] == s for r in rows) for s in status.ROW_STATUSES}
        print(
            f"sweep {sweep.name}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f"; results in {sweep_dir / 'results.csv'}"
        )
    return rows
