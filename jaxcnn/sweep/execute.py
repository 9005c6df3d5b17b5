"""Training one popped trial and telling Optuna how it ended: ok with its result, pruned,
or failed with its error (written to the trial's error.txt); the sweep goes on."""

from __future__ import annotations

import math
import pathlib
import traceback
from typing import Any

from jaxcnn import errors, rundir
from jaxcnn.sweep import config, datasets, queueing
from jaxcnn.sweep import trial as trial_lib
from jaxcnn.sweep.status import TrialStatus


def execute(
    study: Any,
    trial: Any,
    sweep: config.Sweep,
    key: str,
    overrides: dict[str, Any],
    *,
    run_dir: pathlib.Path,
    cache: datasets.DatasetCache,
    quiet: bool,
) -> None:
    """Trains `trial` (the point `overrides`) in `run_dir` and tells the study its end.

    Raises:
      errors.Interrupted: a signal stopped training (the trial is not told; its
        checkpoint resumes it when it is handed back and popped again).
    """
    import optuna

    epochs_now = [0]

    def on_epoch(record: dict) -> None:
        epochs_now[0] += 1
        if sweep.pruner != "none":
            trial.report(float(record["val_accuracy"]), int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

    try:
        run_config = sweep.base.with_overrides(overrides)
        if not quiet:
            print(f"[sweep {sweep.name}] trial {key}: {overrides}", flush=True)
        result = trial_lib.run_trial(
            run_config,
            run_dir,
            seeds=queueing.trial_seeds(trial, sweep.seeds),
            quiet=quiet,
            dataset=cache.get(run_config),
            on_epoch=on_epoch,
        )
    except errors.Interrupted:
        raise
    except optuna.TrialPruned as e:
        trial.set_user_attr("status", TrialStatus.PRUNED.value)
        trial.set_user_attr("error", str(e))
        trial.set_user_attr("result", trial_lib.history_result(run_dir))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except Exception as e:  # noqa: BLE001 -- one bad trial must not stop the sweep
        message = f"{type(e).__name__}: {e}"
        rundir.write_text_atomic(run_dir / "error.txt", traceback.format_exc())
        trial.set_user_attr("status", TrialStatus.FAILED.value)
        trial.set_user_attr("error", message)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if not quiet:
            print(f"[sweep {sweep.name}] trial {key} failed: {message}", flush=True)
    else:
        result["epochs_this_attempt"] = epochs_now[0]
        result["resumed_from_epoch"] = int(result.get("epochs", 0)) - epochs_now[0]
        trial.set_user_attr("status", TrialStatus.OK.value)
        trial.set_user_attr("result", result)
        study.tell(trial, float(result.get("best_val_accuracy", math.nan)))
