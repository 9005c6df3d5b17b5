"""A sweep worker: pops trials from the Optuna study and trains them until none is left.

A worker records the grid's invalid points and enqueues the valid ones in plan order
(once per study), then pops one waiting trial at a time (atomic in the storage), trains
it in `trials/<key>/` and tells the result. A trial that raises (or hits NaN) is recorded
`failed` with its error; the sweep goes on. Dead workers' trials are found and
re-enqueued as storage.py describes.
"""

from __future__ import annotations

import json
import math
import pathlib
import threading
import time
import traceback
from typing import Any

from jaxcnn import rundir
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import RunConfig
from jaxcnn.sweep import config, plan, results
from jaxcnn.sweep import storage as storage_lib
from jaxcnn.sweep import trial as trial_lib


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
        self.study = self._open_study()
        self.datasets: dict[str, Any] = {}
        self.ran = 0
        # One categorical distribution per grid axis (Optuna needs it fixed per name).
        self._choices: dict[str, list] = {}
        for point in sweep.points:
            for path, value in point.items():
                choices = self._choices.setdefault(path, [])
                if config.encode_choice(value) not in choices:
                    choices.append(config.encode_choice(value))

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
                study = optuna.create_study(
                    study_name=self.sweep.name, direction="maximize", **kwargs
                )
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=self.sweep.name, **kwargs)
                created = False
            saved = study.user_attrs.get("sweep")
            if saved is not None and saved["base"] != self.sweep.to_dict()["base"]:
                raise JaxcnnError(
                    f"sweep {self.sweep.name!r} in this storage has a different base config; "
                    "use another --workdir (or study name) for a changed sweep"
                )
            if not created:
                # Another machine may be enqueueing right now; give it a moment.
                deadline = time.time() + 60
                while (
                    not study.user_attrs.get("initialized") and time.time() < deadline
                ):
                    time.sleep(1.0)
            self._enqueue(study)
            if not study.user_attrs.get("initialized"):
                study.set_user_attr("sweep", self.sweep.to_dict())
                study.set_user_attr("initialized", True)
        return study

    def _enqueue(self, study) -> None:
        """Records invalid points and enqueues valid ones not in the study yet."""
        import optuna

        if self.sweep.sampler != "grid":
            return
        known = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False)}
        for p in plan.plan_sweep(self.sweep):
            if p.key in known:
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
                study.enqueue_trial(
                    {k: config.encode_choice(v) for k, v in p.overrides.items()},
                    user_attrs=attrs,
                )

    # ------------------------------------------------------------------ liveness
    def _reclaim(self) -> None:
        """Fails RUNNING trials whose worker died and re-enqueues them."""
        import optuna

        if self.heartbeat:
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
        results.write_results(self.dir, storage_lib.collect_rows(self.study))

    def run(self, max_trials: int | None = None) -> int:
        """Runs trials until the sweep is done (or `max_trials`); returns how many ran."""
        self._write_results()
        while max_trials is None or self.ran < max_trials:
            lock_cm = None
            with self._coord_lock():
                self._reclaim()
                trial = self._next()
                if trial is None:
                    break
                key, overrides = self._identify(trial)
                if key is not None:
                    lock_cm = storage_lib.flock(self._trial_lock_path(key))
                    lock_cm.__enter__()
            try:
                if key is not None:
                    self._run_trial(trial, key, overrides)
            finally:
                if lock_cm is not None:
                    lock_cm.__exit__(None, None, None)
            self.ran += 1
            self._write_results()
        self._write_results()
        return self.ran

    def _identify(self, trial) -> tuple[str | None, dict]:
        """The trial's key and overrides; settles duplicates and invalid samples at once."""
        import optuna

        attrs = trial.user_attrs
        if "key" in attrs:
            overrides = dict(attrs["overrides"])
            for path, value in overrides.items():  # registers params for plots / TPE
                trial.suggest_categorical(
                    path, self._choices.get(path, [config.encode_choice(value)])
                )
            key = attrs["key"]
            done = [
                t
                for t in self.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
                if t.user_attrs.get("key") == key
            ]
            if (
                done
            ):  # a duplicate (e.g. enqueued twice by racing machines): never re-run
                trial.set_user_attr("status", "duplicate")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None, overrides
            return key, overrides
        overrides = {
            path: axis.suggest(trial, path) for path, axis in self.sweep.search.items()
        }
        p = plan.check_trial(self.sweep.base, overrides)
        for name, value in (
            ("key", p.key),
            ("overrides", p.overrides),
            ("params", p.params),
            ("flops", p.flops),
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
        run_dir.mkdir(parents=True, exist_ok=True)
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
                seeds=self.sweep.seeds,
                replicas=self.sweep.replicas,
                quiet=self.quiet,
                dataset=self._dataset(run_config),
                on_epoch=on_epoch,
            )
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
