"""Optuna storage and liveness: the journal file or database URL, the study's sampler and
pruner, locks, re-enqueueing trials of dead workers, and reading the study into rows.

Liveness: on one machine a worker holds an flock on `trials/<key>/.lock` while it runs
the trial; a RUNNING trial whose lock is free belongs to a dead worker and is failed and
re-enqueued. With an RDB URL (PostgreSQL, SQLite) Optuna's heartbeat does the same across
machines. The re-enqueued copy uses the same run directory, so `fit` resumes from its last
checkpoint; completed trials are never run again.

Storage notes (Optuna 5.0): only RDBStorage has heartbeats; JournalStorage has none, hence
the flock check, which holds on one machine only. An SQLite file shared by several local
workers needs a busy timeout (set here: 120 s). Do not put SQLite (or the journal file) on
a network filesystem: its locking is unreliable there. For workers on many machines use
PostgreSQL (`--storage postgresql://...`) and a shared workdir; it needs a driver
(`pip install 'psycopg[binary]'`, SQLAlchemy 2.1's default for postgresql://).
"""

from __future__ import annotations

import contextlib
import fcntl
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

from jaxcnn.sweep import config, results

HEARTBEAT_SECONDS = 20  # RDB storages: a worker silent for GRACE_SECONDS is dead
GRACE_SECONDS = 90
MAX_RETRIES = 3  # a trial whose worker died is re-enqueued at most this often
JOURNAL = "optuna.journal"


def retry_copy(study: Any, trial: Any) -> None:
    """Re-enqueues a trial whose worker died; the copy reuses its run directory."""
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES:
        return
    system_attrs = {**trial.system_attrs, "retry_history": history}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )


def open_storage(storage: str | None, sweep_dir: pathlib.Path) -> Any:
    """The Optuna storage: a journal file in the sweep dir by default, or a URL.

    A URL with a scheme (postgresql://, mysql://, sqlite:///) is an RDBStorage with
    heartbeats (dead workers are detected across machines); SQLite gets a busy timeout
    so several local workers can share the file. A plain path is a journal file.
    """
    import optuna

    if storage is None or "://" not in storage:
        path = pathlib.Path(storage) if storage else sweep_dir / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.JournalStorage(backend)
    engine_kwargs = {}
    if storage.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
    # Heartbeats are experimental in Optuna 5.0; we opt in on purpose, so every worker
    # need not warn about it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            storage,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=retry_copy,
        )


def sampler(sweep: config.Sweep) -> Any:
    import optuna

    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=sweep.seed)
    return optuna.samplers.RandomSampler(seed=sweep.seed)


def pruner(sweep: config.Sweep) -> Any:
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if sweep.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def flock(path: pathlib.Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive fcntl lock on `path`; yields False when non-blocking and taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def collect_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial key (its latest attempt), in trial order."""
    import optuna

    state_status = {
        optuna.trial.TrialState.WAITING: "pending",
        optuna.trial.TrialState.RUNNING: "running",
        optuna.trial.TrialState.COMPLETE: "ok",
        optuna.trial.TrialState.PRUNED: "pruned",
        optuna.trial.TrialState.FAIL: "failed",
    }
    latest: dict[str, Any] = {}
    order: list[str] = []
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if key is None or t.user_attrs.get("status") == "duplicate":
            continue
        if key not in latest:
            order.append(key)
            latest[key] = t
        elif (
            t.state == optuna.trial.TrialState.COMPLETE
            or latest[key].state != optuna.trial.TrialState.COMPLETE
        ):
            latest[key] = t
    rows = []
    for key in order:
        t = latest[key]
        attrs = t.user_attrs
        status = attrs.get("status") or state_status.get(t.state, "failed")
        if t.state == optuna.trial.TrialState.FAIL and status not in (
            "invalid",
            "failed",
        ):
            status = "failed"
        error = attrs.get("error")
        if status == "failed" and error is None:
            error = "the worker running this trial died (retries exhausted)"
        result = attrs.get("result") or {}
        row: dict[str, Any] = {"trial": key, "status": status, "error": error or ""}
        row.update(attrs.get("overrides", {}))
        row.update(
            {
                "dataset": result.get("dataset"),
                "params": result.get("total_params", attrs.get("params")),
                "flops": result.get("total_flops", attrs.get("flops")),
            }
        )
        for name in results.RESULT_COLUMNS[3:]:
            row[name] = result.get(name)
        for name in ("epochs_this_attempt", "resumed_from_epoch", "seeds"):
            if name in result:
                row[name] = result[name]
        for name in results.SEED_METRICS:
            for suffix in ("_mean", "_std", "_ci95"):
                if name + suffix in result:
                    row[name + suffix] = result[name + suffix]
        row["attempts"] = len(t.system_attrs.get("retry_history", [])) + 1
        row["optuna_number"] = t.number
        rows.append(row)
    return rows
