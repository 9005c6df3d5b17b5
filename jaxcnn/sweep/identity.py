"""A popped trial's identity: its key and config overrides, and settling the trials that
need no training (a duplicate of a finished one, an invalid sampled config)."""

from __future__ import annotations

from typing import Any

from jaxcnn.sweep import config, plan, queueing
from jaxcnn.sweep.status import TrialStatus


def identify(study: Any, sweep: config.Sweep, trial: Any) -> tuple[str | None, dict]:
    """The trial's key and overrides; the key is None when the trial was settled here
    (told FAIL with status duplicate or invalid)."""
    import optuna

    attrs = trial.user_attrs
    if "key" in attrs:  # enqueued: a grid point, or a search trial's top-up
        for path, axis in sweep.search.items():  # registers its params (TPE)
            axis.suggest(trial, path)
        key, seeds = attrs["key"], queueing.trial_seeds(trial, sweep.seeds)
        done = [
            t
            for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
            if t.user_attrs.get("key") == key and queueing.trial_seeds(t) >= seeds
        ]
        if done:  # a duplicate (e.g. enqueued twice by racing machines)
            trial.set_user_attr("status", TrialStatus.DUPLICATE.value)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None, attrs["overrides"]
        return key, dict(attrs["overrides"])
    overrides = {path: axis.suggest(trial, path) for path, axis in sweep.search.items()}
    p = plan.check_trial(sweep.base, overrides)
    for name, value in (
        ("key", p.key),
        ("overrides", p.overrides),
        ("params", p.params),
        ("flops", p.flops),
        ("seeds", sweep.seeds),
    ):
        trial.set_user_attr(name, value)
    if p.error is not None:
        trial.set_user_attr("status", TrialStatus.INVALID.value)
        trial.set_user_attr("error", p.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None, overrides
    return p.key, overrides
