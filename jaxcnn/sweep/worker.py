"""A sweep worker: pops trials from the Optuna study and trains them until none is left.

A worker opens the study and grows its queue (queueing.py: the grid's invalid points
recorded, valid new ones and seed top-ups enqueued in plan order), then under the sweep's
coordination lock reclaims dead workers' trials and pops one waiting trial at a time
(liveness.py, queueing.py), identifies it (identity.py), takes its lock and trains it in
`trials/<key>/` (execute.py). A trial that raises (or hits NaN) is recorded `failed` with
its error and the sweep goes on; a trial whose setup fails is handed back at once.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any

from jaxcnn import errors
from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import (
    config,
    datasets,
    execute,
    identity,
    liveness,
    queueing,
    results,
)
from jaxcnn.sweep import storage as storage_lib
from jaxcnn.train import preemption


class Worker:
    """Runs waiting trials of one sweep until none is left."""

    def __init__(
        self,
        sweep: config.Sweep,
        sweep_dir: pathlib.Path,
        storage: str | None,
        quiet: bool,
    ):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep, self.dir, self.quiet = sweep, sweep_dir, quiet
        self.storage = storage_lib.open_storage(storage, sweep_dir)
        self.heartbeat = isinstance(self.storage, optuna.storages.RDBStorage)
        with liveness.coord_lock(self.dir):
            self.study, self.shown = queueing.open_study(
                sweep, self.storage, storage_lib.describe(storage, sweep_dir)
            )
        self.datasets = datasets.DatasetCache()
        self.ran = 0

    def run(self, max_trials: int | None = None) -> int:
        """Runs trials until the sweep is done (or `max_trials`); returns how many ran.

        SIGTERM / SIGINT stop the worker: a trial that is training saves a checkpoint
        and goes back to the queue (rerunning resumes it), and `errors.Interrupted`
        (exit status 128 + the signal) says so.
        """
        with preemption.Stop.on_signals() as stop:
            return self._run(max_trials, stop)

    def _run(self, max_trials: int | None, stop: preemption.Stop) -> int:
        self._write_results()
        while max_trials is None or self.ran < max_trials:
            if stop.signal:
                raise errors.Interrupted(
                    f"{stop.name} received: sweep {self.sweep.name!r} stopped between "
                    f"trials ({self.ran} run by this worker); run the same command "
                    f"again to resume",
                    stop.signal,
                )
            with contextlib.ExitStack() as held:  # the trial's lock and heartbeat
                with liveness.coord_lock(self.dir):
                    liveness.reclaim(self.study, self.storage, self.dir, self.heartbeat)
                    trial = queueing.next_trial(self.study, self.sweep)
                    if trial is None:
                        break
                    started = self._start(trial, held)
                if started is not None:
                    self._train(trial, *started)
            self.ran += 1
            self._write_results()
        self._write_results()
        return self.ran

    def _start(
        self, trial: Any, held: contextlib.ExitStack
    ) -> tuple[str, dict[str, Any]] | None:
        """Identifies a popped trial and takes its lock (into `held`); None when it is
        settled without training (a duplicate or an invalid sample).

        Whatever fails here hands the trial back, so none stays RUNNING.
        """
        try:
            if self.heartbeat:  # alive from the start: a death now is noticed too
                held.enter_context(liveness.beating(self.storage, trial))
            key, overrides = identity.identify(self.study, self.sweep, trial)
            if key is None:
                return None
            held.enter_context(liveness.trial_lock(self.dir, key))
            return key, overrides
        except BaseException as e:
            held.close()
            liveness.give_back(self.study, self.storage, trial, e)
            if isinstance(e, OSError):
                raise JaxcnnError(
                    f"sweep {self.sweep.name!r}: cannot set up a trial in {self.dir} "
                    f"({type(e).__name__}: {e}); the trial went back to the queue"
                ) from None
            raise

    def _train(self, trial: Any, key: str, overrides: dict[str, Any]) -> None:
        """Trains a started trial; one that does not end (a signal, Ctrl-C, the sweep
        directory gone) is handed back, and resumes from its checkpoint when popped."""
        try:
            execute.execute(
                self.study,
                trial,
                self.sweep,
                key,
                overrides,
                run_dir=self.dir / "trials" / key,
                cache=self.datasets,
                quiet=self.quiet,
            )
        except BaseException as e:
            liveness.give_back(self.study, self.storage, trial, e)
            raise

    def _write_results(self) -> None:
        results.write_results(
            self.dir, storage_lib.collect_rows(self.study, self.shown)
        )
