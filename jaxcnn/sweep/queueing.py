"""A sweep's queue of trials in its Optuna study: opening the study, growing the queue
(new grid points, more seeds) and popping the next trial.

Grid trials are stored by their key (a user attribute), not as Optuna parameters, whose
distributions could not gain values; a finished trial with fewer seeds than the sweep
now asks for is enqueued again (its finished seeds are read back, not retrained).
"""

from __future__ import annotations

import time
from typing import Any

from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import config, optuna_api, plan
from jaxcnn.sweep import storage as storage_lib
from jaxcnn.sweep.status import TrialStatus

# The attributes a trial enqueued again for more seeds keeps.
IDENTITY = ("key", "overrides", "params", "flops")


def trial_seeds(t: Any, default: int = 1) -> int:
    """How many seeds a stored trial was (or is to be) trained with; `default` for one
    that does not say (a result of one seed carries no count)."""
    attrs = t.user_attrs
    return int(
        attrs.get("seeds") or (attrs.get("result") or {}).get("seeds") or default
    )


def open_study(
    sweep: config.Sweep, storage: Any, where: str
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Creates or loads the sweep's study and enqueues what it lacks; the caller holds
    the sweep's coordination lock.

    Returns:
      The study, and stored trial key -> the current grid point it stands for (result
      rows show that point's axes).

    Raises:
      JaxcnnError: the storage cannot be read.
      SpecError: the study holds this sweep with another base config, sampler or space.
    """
    import optuna

    kwargs = dict(
        storage=storage,
        sampler=storage_lib.sampler(sweep),
        pruner=storage_lib.pruner(sweep),
    )
    try:
        try:
            study = optuna.create_study(
                study_name=sweep.name, direction="maximize", **kwargs
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=sweep.name, **kwargs)
            created = False
    except (ValueError, OSError) as e:  # e.g. a journal that is not JSON lines
        raise JaxcnnError(
            f"cannot read sweep {sweep.name!r} from its Optuna storage {where} "
            f"({type(e).__name__}: {e}); start it afresh with --restart or in another "
            "--workdir"
        ) from None
    saved = study.user_attrs.get("sweep")
    if saved is not None:
        where = f"the Optuna storage {where}"
        config.check_unchanged(config.Sweep.from_dict(saved), sweep, where)
    if not created:
        # Another machine may be enqueueing right now; give it a moment.
        deadline = time.time() + 60
        while not study.user_attrs.get("initialized") and time.time() < deadline:
            time.sleep(1.0)
    shown = enqueue(study, sweep)
    study.set_user_attr("sweep", sweep.to_dict())  # the latest version
    study.set_user_attr("initialized", True)
    return study, shown


def enqueue(study: Any, sweep: config.Sweep) -> dict[str, dict[str, Any]]:
    """Records invalid points, enqueues valid ones not in the study yet and tops up
    finished trials to the sweep's seeds; returns stored key -> current grid point."""
    import optuna

    shown: dict[str, dict[str, Any]] = {}
    attempts = _attempts(study, sweep)
    if sweep.sampler != "grid":
        for tried in attempts.values():
            _top_up(study, sweep, tried)
        return shown
    for p in plan.plan_sweep(sweep):
        if p.key in attempts:
            for t in attempts[p.key]:
                shown[t.user_attrs["key"]] = p.overrides
            _top_up(study, sweep, attempts[p.key])
            continue
        attrs = {
            "key": p.key,
            "overrides": p.overrides,
            "params": p.params,
            "flops": p.flops,
        }
        if p.error is not None:
            status = TrialStatus.INVALID.value
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.FAIL,
                    user_attrs={**attrs, "status": status, "error": p.error},
                )
            )
        else:
            study.enqueue_trial({}, user_attrs={**attrs, "seeds": sweep.seeds})
    return shown


def _attempts(study: Any, sweep: config.Sweep) -> dict[str, list]:
    """The study's trials by the key of the point they ran (recomputed from their
    overrides, so trials keyed before an axis was added still match)."""
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "key" not in attrs or attrs.get("status") == TrialStatus.DUPLICATE:
            continue
        key = attrs["key"]
        if "overrides" in attrs:
            key = plan.point_key(sweep.base, attrs["overrides"])
        out.setdefault(key, []).append(t)
    return out


def _top_up(study: Any, sweep: config.Sweep, tried: list) -> None:
    """Enqueues a finished trial again when the sweep now asks for more seeds."""
    import optuna

    state, seeds = optuna.trial.TrialState, sweep.seeds
    done = [t for t in tried if t.state == state.COMPLETE]
    queued = [t for t in tried if t.state in (state.WAITING, state.RUNNING)]
    if (
        not done
        or any(trial_seeds(t) >= seeds for t in done)
        or any(trial_seeds(t, seeds) >= seeds for t in queued)
    ):
        return
    last = done[-1]
    attrs = {k: last.user_attrs[k] for k in IDENTITY if k in last.user_attrs}
    # A search trial keeps its sampled values; a grid trial needs none.
    params = dict(last.params) if sweep.sampler != "grid" else {}
    study.enqueue_trial(params, user_attrs={**attrs, "seeds": seeds})


def next_trial(study: Any, sweep: config.Sweep) -> Any:
    """Pops the next waiting trial, or asks a new one in a search sweep; or None."""
    import optuna

    trial = optuna_api.pop_waiting_trial(study)
    if trial is not None:
        return trial
    if sweep.sampler == "grid":
        return None
    started = {
        t.user_attrs.get("key")
        for t in study.get_trials(deepcopy=False)
        if t.state != optuna.trial.TrialState.WAITING and t.user_attrs.get("key")
    }
    if len(started) >= sweep.trials:
        return None
    return study.ask()
