"""A sweep worker: pops trials from the Optuna study and trains them until none is left.

A worker records the grid's invalid points and enqueues the valid ones in plan order,
then pops one waiting trial at a time (atomic in the storage), trains it in
`trials/<key>/` and tells the result. A trial that raises (or hits NaN) is recorded
`failed` with its error; the sweep goes on. Dead workers' trials are found and
re-enqueued as storage.py describes; a trial whose setup fails is handed back at once.

A sweep grows: every worker start enqueues the grid points the study has no trial for,
and a finished trial with fewer seeds than the sweep now asks for is enqueued again (its
finished seeds are read back, not retrained). Grid trials are stored by their key (a
user attribute), not as Optuna parameters, whose distributions could not gain values.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import threading
import time
import traceback
import warnings
from typing import Any

from jaxcnn import errors, rundir
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import RunConfig
from jaxcnn.sweep import config, plan, results
from jaxcnn.sweep import storage as storage_lib
from jaxcnn.sweep import trial as trial_lib
from jaxcnn.train import preemption

# The attributes a trial enqueued again for more seeds keeps.
_IDENTITY = ("key", "overrides", "params", "flops")


def trial_seeds(t: Any, default: int = 1) -> int:
    """How many seeds a stored trial was (or is to be) trained with; `default` for one
    that does not say (a result of one seed carries no count)."""
    attrs = t.user_attrs
    return int(
        attrs.get("seeds") or (attrs.get("result") or {}).get("seeds") or default
    )


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
        self.where = storage_lib.describe(storage, sweep_dir)
        self.heartbeat = isinstance(self.storage, optuna.storages.RDBStorage)
        # Stored trial key -> the current grid point it stands for (rows show its axes).
        self.shown: dict[str, dict[str, Any]] = {}
        self.study = self._open_study()
        self.datasets: dict[str, Any] = {}
        self.ran = 0

    def _coord_lock(self):
        return storage_lib.flock(self.dir / ".coord.lock")

    def _trial_lock_path(self, key: str) -> pathlib.Path:
        return self.dir / "trials" / key / ".lock"

    def _open_study(self):
        import optuna

        kwargs = dict(
            storage=self.storage,
            sampler=storage_lib.sampler(self.sweep),
            pruner=storage_lib.pruner(self.sweep),
        )
        with self._coord_lock():
            try:
                try:
                    study = optuna.create_study(
                        study_name=self.sweep.name, direction="maximize", **kwargs
                    )
                    created = True
                except optuna.exceptions.DuplicatedStudyError:
                    study = optuna.load_study(study_name=self.sweep.name, **kwargs)
                    created = False
            except (ValueError, OSError) as e:  # e.g. a journal that is not JSON lines
                raise JaxcnnError(
                    f"cannot read sweep {self.sweep.name!r} from its Optuna storage "
                    f"{self.where} ({type(e).__name__}: {e}); start it afresh with "
                    "--restart or in another --workdir"
                ) from None
            saved = study.user_attrs.get("sweep")
            if saved is not None:
                where = f"the Optuna storage {self.where}"
                config.check_unchanged(config.Sweep.from_dict(saved), self.sweep, where)
            if not created:
                # Another machine may be enqueueing right now; give it a moment.
                deadline = time.time() + 60
                while (
                    not study.user_attrs.get("initialized") and time.time() < deadline
                ):
                    time.sleep(1.0)
            self._enqueue(study)
            study.set_user_attr("sweep", self.sweep.to_dict())  # the latest version
            study.set_user_attr("initialized", True)
        return study

    def _attempts(self, study) -> dict[str, list]:
        """The study's trials by the key of the point they ran (recomputed from their
        overrides, so trials keyed before an axis was added still match)."""
        out: dict[str, list] = {}
        for t in study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            if "key" not in attrs or attrs.get("status") == "duplicate":
                continue
            key = attrs["key"]
            if "overrides" in attrs:
                key = plan.point_key(self.sweep.base, attrs["overrides"])
            out.setdefault(key, []).append(t)
        return out

    def _enqueue(self, study) -> None:
        """Records invalid points, enqueues valid ones not in the study yet and tops up
        finished trials to the sweep's seeds."""
        import optuna

        attempts = self._attempts(study)
        if self.sweep.sampler != "grid":
            for tried in attempts.values():
                self._top_up(study, tried)
            return
        for p in plan.plan_sweep(self.sweep):
            if p.key in attempts:
                for t in attempts[p.key]:
                    self.shown[t.user_attrs["key"]] = p.overrides
                self._top_up(study, attempts[p.key])
                continue
            attrs = {
                "key": p.key,
                "overrides": p.overrides,
                "params": p.params,
                "flops": p.flops,
            }
            if p.error is not None:
                study.add_trial(
                    optuna.trial.create_trial(
                        state=optuna.trial.TrialState.FAIL,
                        user_attrs={**attrs, "status": "invalid", "error": p.error},
                    )
                )
            else:
                study.enqueue_trial({}, user_attrs={**attrs, "seeds": self.sweep.seeds})

    def _top_up(self, study, tried: list) -> None:
        """Enqueues a finished trial again when the sweep now asks for more seeds."""
        import optuna

        state, seeds = optuna.trial.TrialState, self.sweep.seeds
        done = [t for t in tried if t.state == state.COMPLETE]
        queued = [t for t in tried if t.state in (state.WAITING, state.RUNNING)]
        if (
            not done
            or any(trial_seeds(t) >= seeds for t in done)
            or any(trial_seeds(t, seeds) >= seeds for t in queued)
        ):
            return
        last = done[-1]
        attrs = {k: last.user_attrs[k] for k in _IDENTITY if k in last.user_attrs}
        # A search trial keeps its sampled values; a grid trial needs none.
        params = dict(last.params) if self.sweep.sampler != "grid" else {}
        study.enqueue_trial(params, user_attrs={**attrs, "seeds": seeds})

    # ------------------------------------------------------------------ liveness
    def _reclaim(self) -> None:
        """Fails RUNNING trials whose worker died and re-enqueues them."""
        import optuna

        if self.heartbeat:
            with warnings.catch_warnings():  # experimental; used on purpose
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            return
        for t in self.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            key = t.user_attrs.get("key")
            if key is None:
                continue
            with storage_lib.flock(self._trial_lock_path(key), blocking=False) as free:
                if not free:
                    continue  # its worker is alive
                try:
                    ok = self.storage.set_trial_state_values(
                        t._trial_id, optuna.trial.TrialState.FAIL
                    )
                except optuna.exceptions.UpdateFinishedTrialError:
                    ok = False
                if ok:
                    storage_lib.retry_copy(
                        self.study, self.study.get_trials(deepcopy=True)[t.number]
                    )

    def _next(self):
        """Pops the next waiting trial, or asks a new one in a search sweep; or None."""
        import optuna

        # Optuna pops waiting trials atomically (set RUNNING only if still WAITING).
        trial_id = self.study._pop_waiting_trial_id()
        if trial_id is not None:
            return optuna.Trial(self.study, trial_id)
        if self.sweep.sampler == "grid":
            return None
        started = {
            t.user_attrs.get("key")
            for t in self.study.get_trials(deepcopy=False)
            if t.state != optuna.trial.TrialState.WAITING and t.user_attrs.get("key")
        }
        if len(started) >= self.sweep.trials:
            return None
        return self.study.ask()

    def _write_results(self) -> None:
        results.write_results(
            self.dir, storage_lib.collect_rows(self.study, self.shown)
        )

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
            with self._coord_lock():
                self._reclaim()
                trial = self._next()
                if trial is None:
                    break
                started = self._start(trial)
            if started is not None:
                key, overrides, lock = started
                try:
                    self._run_trial(trial, key, overrides)
                except BaseException as e:  # Ctrl-C, or the sweep dir went away
                    self._give_back(trial, e)
                    raise
                finally:
                    lock.__exit__(None, None, None)
            self.ran += 1
            self._write_results()
        self._write_results()
        return self.ran

    def _start(self, trial) -> tuple[str, dict, Any] | None:
        """Identifies a popped trial, takes its lock and creates its run directory;
        None when it is settled without training (a duplicate or an invalid sample).

        Whatever fails here hands the trial back, so none stays RUNNING.
        """
        lock = None
        try:
            if self.heartbeat:  # alive from the start: a death now is noticed too
                self.storage.record_heartbeat(trial._trial_id)
            key, overrides = self._identify(trial)
            if key is None:
                return None
            lock = storage_lib.flock(self._trial_lock_path(key))
            lock.__enter__()
            return key, overrides, lock
        except BaseException as e:
            if lock is not None:
                lock.__exit__(None, None, None)
            self._give_back(trial, e)
            if isinstance(e, OSError):
                raise JaxcnnError(
                    f"sweep {self.sweep.name!r}: cannot set up a trial in {self.dir} "
                    f"({type(e).__name__}: {e}); the trial went back to the queue"
                ) from None
            raise

    def _give_back(self, trial, error: BaseException) -> None:
        """Fails a trial that never finished and enqueues it again (not counted as a
        retry); best effort, as the storage may be what failed."""
        import optuna

        with contextlib.suppress(Exception):
            frozen = self.storage.get_trial(trial._trial_id)
            if frozen.state != optuna.trial.TrialState.RUNNING:
                return
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            frozen = self.storage.get_trial(trial._trial_id)
            storage_lib.retry_copy(self.study, frozen, count=False)

    def _identify(self, trial) -> tuple[str | None, dict]:
        """The trial's key and overrides; settles duplicates and invalid samples at once."""
        import optuna

        attrs = trial.user_attrs
        if "key" in attrs:  # enqueued: a grid point, or a search trial's top-up
            for path, axis in self.sweep.search.items():  # registers its params (TPE)
                axis.suggest(trial, path)
            key, seeds = attrs["key"], trial_seeds(trial, self.sweep.seeds)
            done = [
                t
                for t in self.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
                if t.user_attrs.get("key") == key and trial_seeds(t) >= seeds
            ]
            if done:  # a duplicate (e.g. enqueued twice by racing machines)
                trial.set_user_attr("status", "duplicate")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None, attrs["overrides"]
            return key, dict(attrs["overrides"])
        overrides = {
            path: axis.suggest(trial, path) for path, axis in self.sweep.search.items()
        }
        p = plan.check_trial(self.sweep.base, overrides)
        for name, value in (
            ("key", p.key),
            ("overrides", p.overrides),
            ("params", p.params),
            ("flops", p.flops),
            ("seeds", self.sweep.seeds),
        ):
            trial.set_user_attr(name, value)
        if p.error is not None:
            trial.set_user_attr("status", "invalid")
            trial.set_user_attr("error", p.error)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None, overrides
        return p.key, overrides

    # ------------------------------------------------------------------ one trial
    def _dataset(self, run_config: RunConfig):
        from jaxcnn import data, train

        input_shape = train.resolve_spec(run_config).input_shape
        cache_key = json.dumps(
            [run_config.to_dict()["data"], list(input_shape)], sort_keys=True
        )
        if cache_key not in self.datasets:
            if len(self.datasets) >= 2:  # keep memory bounded in long mixed sweeps
                self.datasets.pop(next(iter(self.datasets)))
            self.datasets[cache_key] = data.load_dataset(
                run_config.data, input_shape=input_shape
            )
        return self.datasets[cache_key]

    def _run_trial(self, trial, key: str, overrides: dict) -> None:
        import optuna

        run_dir = self.dir / "trials" / key
        stop = threading.Event()
        beat = None
        if self.heartbeat:
            beat = threading.Thread(
                target=self._beat, args=(trial._trial_id, stop), daemon=True
            )
            beat.start()
        epochs_now = [0]

        def on_epoch(record: dict) -> None:
            epochs_now[0] += 1
            if self.sweep.pruner != "none":
                trial.report(float(record["val_accuracy"]), int(record["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        try:
            run_config = self.sweep.base.with_overrides(overrides)
            if not self.quiet:
                print(f"[sweep {self.sweep.name}] trial {key}: {overrides}", flush=True)
            result = trial_lib.run_trial(
                run_config,
                run_dir,
                seeds=trial_seeds(trial, self.sweep.seeds),
                quiet=self.quiet,
                dataset=self._dataset(run_config),
                on_epoch=on_epoch,
            )
        except errors.Interrupted:
            raise  # `run` hands the trial back; its checkpoint resumes it
        except optuna.TrialPruned as e:
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("result", trial_lib.history_result(run_dir))
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as e:  # noqa: BLE001 -- one bad trial must not stop the sweep
            message = f"{type(e).__name__}: {e}"
            rundir.write_text_atomic(run_dir / "error.txt", traceback.format_exc())
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("error", message)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if not self.quiet:
                print(
                    f"[sweep {self.sweep.name}] trial {key} failed: {message}",
                    flush=True,
                )
        else:
            result["epochs_this_attempt"] = epochs_now[0]
            result["resumed_from_epoch"] = int(result.get("epochs", 0)) - epochs_now[0]
            trial.set_user_attr("status", "ok")
            trial.set_user_attr("result", result)
            self.study.tell(trial, float(result.get("best_val_accuracy", math.nan)))
        finally:
            stop.set()
            if beat is not None:
                beat.join()

    def _beat(self, trial_id: int, stop: threading.Event) -> None:
        while not stop.is_set():
            self.storage.record_heartbeat(trial_id)
            stop.wait(storage_lib.HEARTBEAT_SECONDS)
