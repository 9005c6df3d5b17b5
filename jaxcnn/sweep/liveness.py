"""Which worker holds which trial, and what happens to the trials of dead workers.

On one machine a worker holds `trial_lock` (an flock on `trials/<key>/.lock`) while it
runs the trial, so a RUNNING trial whose lock is free belongs to a dead worker; with an
RDB storage `beating` records Optuna heartbeats instead, which other machines see too.
`reclaim` fails such trials and re-enqueues them (storage.py's `retry_copy`), and
`give_back` does the same at once for a trial this worker could not finish.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from jaxcnn.sweep import optuna_api
from jaxcnn.sweep import storage as storage_lib


def coord_lock(sweep_dir: pathlib.Path) -> contextlib.AbstractContextManager[bool]:
    """The lock the workers of one sweep directory take to enqueue, reclaim and pop."""
    return storage_lib.flock(sweep_dir / ".coord.lock")


def trial_lock(
    sweep_dir: pathlib.Path, key: str, *, blocking: bool = True
) -> contextlib.AbstractContextManager[bool]:
    """The lock a worker holds on trial `key` while it runs it (yields False when
    non-blocking and another worker holds it)."""
    return storage_lib.flock(sweep_dir / "trials" / key / ".lock", blocking=blocking)


@contextlib.contextmanager
def beating(storage: Any, trial: Any) -> Iterator[None]:
    """Records the trial's heartbeat now and every HEARTBEAT_SECONDS until the block
    ends (RDB storages), so a worker that dies at any point is noticed."""
    trial_id = optuna_api.trial_id(trial)
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage_lib.HEARTBEAT_SECONDS):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reclaim(study: Any, storage: Any, sweep_dir: pathlib.Path, heartbeat: bool) -> None:
    """Fails RUNNING trials whose worker died and re-enqueues them."""
    import optuna

    if heartbeat:
        with warnings.catch_warnings():  # experimental; used on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
    ):
        key = t.user_attrs.get("key")
        if key is None:
            continue
        with trial_lock(sweep_dir, key, blocking=False) as free:
            if not free:
                continue  # its worker is alive
            try:
                ok = storage.set_trial_state_values(
                    optuna_api.trial_id(t), optuna.trial.TrialState.FAIL
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                ok = False
            if ok:
                storage_lib.retry_copy(study, study.get_trials(deepcopy=True)[t.number])


def give_back(study: Any, storage: Any, trial: Any, error: BaseException) -> None:
    """Fails a trial that never finished and enqueues it again (not counted as a
    retry); best effort, as the storage may be what failed."""
    import optuna

    with contextlib.suppress(Exception):
        frozen = storage.get_trial(optuna_api.trial_id(trial))
        if frozen.state != optuna.trial.TrialState.RUNNING:
            return
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        frozen = storage.get_trial(optuna_api.trial_id(trial))
        storage_lib.retry_copy(study, frozen, count=False)
