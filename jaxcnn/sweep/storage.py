"""Optuna storage: the journal file or database URL, the study's sampler and pruner, the
file lock and retry copy that liveness.py builds on, and reading the study into rows.

Liveness (liveness.py): on one machine a worker holds an flock on `trials/<key>/.lock`
while it runs the trial; a RUNNING trial whose lock is free belongs to a dead worker and
is failed and re-enqueued. With an RDB URL (PostgreSQL, SQLite) Optuna's heartbeat does
the same across machines; a worker records a heartbeat as soon as it pops a trial, so one
that dies while setting it up is noticed too. The re-enqueued copy uses the same run
directory, so `fit` resumes from its last checkpoint; completed trials are never run again.

Accepted `--storage` values: a journal file path, or a URL whose scheme is one of
URL_SCHEMES (sqlite:///PATH.db, postgresql://..., mysql://...); anything else, a missing
driver or SQLite folder, or a storage that cannot be opened is a JaxcnnError.

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
import os
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import config, results
from jaxcnn.sweep.status import TrialStatus

HEARTBEAT_SECONDS = 20  # RDB storages: a worker silent for GRACE_SECONDS is dead
GRACE_SECONDS = 90
MAX_RETRIES = 3  # a trial whose worker died is re-enqueued at most this often
JOURNAL = "optuna.journal"
URL_SCHEMES = ("sqlite", "postgresql", "mysql")  # SQLAlchemy backends Optuna supports


def _check_journal(path: pathlib.Path, lock: Any) -> None:
    """Drops a cut last line of an Optuna journal; refuses one damaged before its end.

    A line without its newline at the end of the file is a write that was interrupted
    (a kill, a full disk): Optuna skips it when reading but would append the next
    operation to it, damaging both; it is removed, with a warning. A line before the end
    that is not JSON cannot be skipped: the message says where the intact part ends.
    The check runs under Optuna's journal lock, so another worker's append in progress
    is never taken for a cut line.

    Raises:
      JaxcnnError: a line other than a cut last one is not valid JSON.
    """
    import json
    import sys

    if not path.is_file():
        return
    with _held(lock):
        data = path.read_bytes()
        intact = data.rfind(b"\n") + 1
        if intact < len(data):
            with open(path, "r+b") as f:
                f.truncate(intact)
                f.flush()
                os.fsync(f.fileno())
            print(
                f"warning: the last line of {path} was cut ({len(data) - intact} bytes "
                f"of an interrupted write); it was dropped and the sweep goes on",
                file=sys.stderr,
            )
        offset = 0
        for number, line in enumerate(data[:intact].splitlines(keepends=True), 1):
            try:
                json.loads(line)
            except ValueError as e:
                raise JaxcnnError(
                    f"line {number} of the Optuna journal {path} is not valid JSON "
                    f"({type(e).__name__}: {e}); the file was damaged there. Its first "
                    f"{number - 1} lines are intact: keep them with `truncate -s "
                    f"{offset} {path}` (the trials recorded after them run again), or "
                    f"start the sweep afresh with --restart"
                ) from None
            offset += len(line)


@contextlib.contextmanager
def _held(lock: Any) -> Iterator[None]:
    """Holds an Optuna journal lock (`JournalFileOpenLock`) for the block."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def retry_copy(study: Any, trial: Any, *, count: bool = True) -> None:
    """Re-enqueues a trial whose worker died; the copy reuses its run directory.

    With count=False (the trial never started training) the copy does not use up one
    of the MAX_RETRIES.
    """
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if count and len(history) > MAX_RETRIES:
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

    Raises:
      JaxcnnError: an unknown URL scheme, a missing database driver or SQLite folder, or
        a storage that cannot be opened (unreachable server, unreadable journal).
    """
    import optuna

    if storage is None or "://" not in storage:
        path = pathlib.Path(storage) if storage else sweep_dir / JOURNAL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = optuna.storages.journal.JournalFileOpenLock(str(path))
            _check_journal(path, lock)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=lock
            )
            return optuna.storages.JournalStorage(backend)
        except (OSError, ValueError) as e:
            raise JaxcnnError(
                f"cannot open the Optuna journal {path} ({type(e).__name__}: {e}); "
                "it must be a writable file written only by `jaxcnn sweep` (start "
                "afresh with --restart or another --workdir)"
            ) from None
    url = _check_url(storage)
    engine_kwargs = {}
    if url.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 120}}
    # Heartbeats are experimental in Optuna 5.0; we opt in on purpose, so every worker
    # need not warn about it.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                storage,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry_copy,
            )
    except Exception as e:  # noqa: BLE001 -- drivers raise their own types
        shown = url.render_as_string(hide_password=True)
        hint = (
            " (install its driver, e.g. pip install 'psycopg[binary]')"
            if isinstance(e, ImportError)
            else ""
        )
        raise JaxcnnError(
            f"cannot open the Optuna storage {shown}{hint}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def describe(storage: str | None, sweep_dir: pathlib.Path) -> str:
    """The storage's path or URL for messages (without its password)."""
    if storage is None or "://" not in storage:
        return str(pathlib.Path(storage) if storage else sweep_dir / JOURNAL)
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def _check_url(storage: str) -> Any:
    """The parsed database URL; its scheme must be one Optuna supports."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    usage = (
        "use a journal file path (the default: optuna.journal in the sweep dir), "
        "sqlite:///PATH.db, postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
    )
    try:
        url = make_url(storage)
    except ArgumentError as e:
        raise JaxcnnError(
            f"--storage {storage!r} is not a database URL ({e}); {usage}"
        ) from None
    if url.get_backend_name() not in URL_SCHEMES:
        raise JaxcnnError(
            f"--storage {url.render_as_string(hide_password=True)!r}: unknown scheme "
            f"{url.drivername!r}; the accepted schemes are "
            f"{', '.join(s + '://' for s in URL_SCHEMES)}; {usage}"
        )
    if url.get_backend_name() == "sqlite" and url.database not in (None, ":memory:"):
        folder = pathlib.Path(url.database).parent
        if not folder.is_dir():
            raise JaxcnnError(
                f"--storage {storage!r}: the folder {folder} of the SQLite file does not "
                "exist; create it first (four slashes for an absolute path: "
                "sqlite:////abs/path.db)"
            )
    return url


def discard(storage: Any, name: str) -> None:
    """Deletes the study `name` from `storage` (an opened storage), if it is there."""
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


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


def collect_rows(
    study: Any, shown: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per trial key (its latest completed attempt, else its latest), in trial
    order. `shown` maps a trial key to the grid point it stands for now: its row shows
    those values too (axes added after the trial ran, at the value it ran with)."""
    import optuna

    state_status = {
        optuna.trial.TrialState.WAITING: TrialStatus.PENDING,
        optuna.trial.TrialState.RUNNING: TrialStatus.RUNNING,
        optuna.trial.TrialState.COMPLETE: TrialStatus.OK,
        optuna.trial.TrialState.PRUNED: TrialStatus.PRUNED,
        optuna.trial.TrialState.FAIL: TrialStatus.FAILED,
    }
    latest: dict[str, Any] = {}
    order: list[str] = []
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if key is None or t.user_attrs.get("status") == TrialStatus.DUPLICATE:
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
        status = attrs.get("status") or state_status.get(t.state, TrialStatus.FAILED)
        if t.state == optuna.trial.TrialState.FAIL and status not in (
            TrialStatus.INVALID,
            TrialStatus.FAILED,
        ):
            status = TrialStatus.FAILED
        status = TrialStatus(status).value  # the stored string, or the state's
        error = attrs.get("error")
        if status == TrialStatus.FAILED and error is None:
            error = "the worker running this trial died (retries exhausted)"
        result = attrs.get("result") or {}
        row: dict[str, Any] = {"trial": key, "status": status, "error": error or ""}
        row.update((shown or {}).get(key, {}))
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
