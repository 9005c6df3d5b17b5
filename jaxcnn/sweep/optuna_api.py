"""The parts of Optuna's private API the sweep worker relies on, in one place.

Optuna has no public call that pops one waiting trial atomically (it only runs inside
`Study.optimize`), and its storages address a trial by an internal id that `Trial` and
`FrozenTrial` keep in `_trial_id`. Every such access goes through this module; when an
Optuna release renames or removes one, `check` (run by the tests) and each call here
raise a JaxcnnError naming the attribute and the installed Optuna version.
"""

from __future__ import annotations

from typing import Any

from jaxcnn.errors import JaxcnnError

# (owner, attribute): the private names used below.
POP_WAITING = ("optuna.study.Study", "_pop_waiting_trial_id")
TRIAL_ID = ("optuna.trial.Trial / optuna.trial.FrozenTrial", "_trial_id")


def changed(owner: str, name: str) -> JaxcnnError:
    """The error for a private Optuna attribute that is gone."""
    import optuna

    return JaxcnnError(
        f"Optuna {optuna.__version__} has no {owner}.{name}, a private attribute the "
        "jaxcnn sweep worker uses (jaxcnn/sweep/optuna_api.py); this Optuna release "
        "changed it: install an earlier Optuna release that has it, or update that "
        "module to the new release"
    )


def _private(obj: Any, owner_and_name: tuple[str, str]) -> Any:
    owner, name = owner_and_name
    try:
        return getattr(obj, name)
    except AttributeError:
        raise changed(owner, name) from None


def pop_waiting_trial(study: Any) -> Any:
    """The next WAITING trial of `study` as an `optuna.Trial`, set RUNNING atomically in
    the storage (so two workers never pop the same one); None when none is waiting."""
    import optuna

    trial_id = _private(study, POP_WAITING)()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def trial_id(trial: Any) -> int:
    """The storage's id of a `Trial` or `FrozenTrial` (what storage methods take)."""
    return _private(trial, TRIAL_ID)


def check() -> None:
    """Raises unless the installed Optuna has every private attribute used here.

    Raises:
      JaxcnnError: one is missing; the message names it and the Optuna version.
    """
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({})
    popped = pop_waiting_trial(study)
    if popped is None:
        raise changed(*POP_WAITING)
    frozen = storage.get_trial(trial_id(popped))
    if trial_id(frozen) != trial_id(popped) or frozen.state != (
        optuna.trial.TrialState.RUNNING
    ):
        raise changed(*TRIAL_ID)
