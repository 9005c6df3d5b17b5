"""Running a sweep: `run_sweep` (in this process or N local worker processes) and `work`
(one worker, e.g. one per machine sharing a database storage).

A sweep directory holds:
  sweep.json            the resolved sweep (base config, points, settings)
  optuna.journal        the default Optuna storage (storage.py; a database URL may be
                        given instead, for workers on many machines)
  trials/<key>/         one `fit` run directory per trial (config, metrics, checkpoints)
  results.csv/.jsonl    one row per trial, rewritten atomically after every trial
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

from jaxcnn import rundir
from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import config, results, worker


def prepare_dir(sweep: config.Sweep, workdir: str | os.PathLike | None) -> pathlib.Path:
    sweep_dir = pathlib.Path(workdir or f"runs/sweeps/{sweep.name}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    saved = sweep_dir / config.SWEEP_FILE
    if saved.exists():
        old = json.loads(saved.read_text())
        if old.get("base") != sweep.to_dict()["base"] or old.get("name") != sweep.name:
            raise JaxcnnError(
                f"{sweep_dir} holds sweep {old.get('name')!r} with a different base config; "
                "use another --workdir for a changed sweep"
            )
    rundir.write_json_atomic(saved, sweep.to_dict())
    return sweep_dir


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
    sweep_dir = prepare_dir(sweep, workdir)
    return worker.Worker(sweep, sweep_dir, storage, quiet).run(max_trials)


def run_sweep(
    config_or_path: Any,
    workdir: str | os.PathLike | None = None,
    *,
    storage: str | None = None,
    workers: int = 1,
    smoke: bool = False,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Runs (or resumes) a sweep to the end and returns its result rows.

    Args:
      config_or_path: a `Sweep`, a TOML/JSON/.py file, an experiment module, or a sweep
        directory.
      workdir: the sweep directory (default runs/sweeps/<name>).
      storage: Optuna storage URL (default: a journal file in workdir).
      workers: worker processes on this machine (1 = run in this process).
      smoke: shrink the sweep to seconds (the module's / file's smoke settings).
      quiet: no progress output.

    Returns:
      The rows written to results.jsonl: one per trial.
    """
    sweep = config.load_sweep(config_or_path, smoke=smoke)
    sweep_dir = prepare_dir(sweep, workdir)
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
        procs = [subprocess.Popen(command) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise JaxcnnError(f"sweep workers exited with {codes}; rerun to resume")
    rows = results.read_results(sweep_dir)
    if not quiet:
        counts = {s: sum(r["status"] == s for r in rows) for s in results.STATUSES}
        print(
            f"sweep {sweep.name}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f"; results in {sweep_dir / 'results.csv'}"
        )
    return rows
