"""The sweep's contract with Optuna: the private attributes it uses (optuna_api.py) and the
trial statuses it stores (status.py)."""

import json

import optuna
import pytest

from jaxcnn.errors import JaxcnnError
from jaxcnn.sweep import optuna_api, storage
from jaxcnn.sweep.status import ROW_STATUSES, TrialStatus


def test_the_installed_optuna_has_every_private_attribute_the_worker_uses():
    # Fails, naming the attribute and the Optuna version, after an Optuna release that
    # renames or removes one of them.
    optuna_api.check()


def test_popping_takes_each_waiting_trial_once_and_sets_it_running():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for i in range(2):
        study.enqueue_trial({}, user_attrs={"key": f"t{i}"})
    popped = [optuna_api.pop_waiting_trial(study) for _ in range(3)]
    assert popped[2] is None
    keys = [t.user_attrs["key"] for t in popped[:2]]
    assert keys == ["t0", "t1"]
    frozen = study.get_trials()
    assert [optuna_api.trial_id(t) for t in frozen] == [
        optuna_api.trial_id(t) for t in popped[:2]
    ]
    assert {t.state for t in frozen} == {optuna.trial.TrialState.RUNNING}


def _missing(name: str) -> str:
    return rf"Optuna {optuna.__version__} has no .*\.{name}, a private attribute"


def test_a_removed_pop_names_itself_and_the_optuna_version(monkeypatch):
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    monkeypatch.delattr(optuna.study.Study, "_pop_waiting_trial_id")
    with pytest.raises(JaxcnnError, match=_missing("_pop_waiting_trial_id")):
        optuna_api.pop_waiting_trial(study)
    with pytest.raises(JaxcnnError, match=_missing("_pop_waiting_trial_id")):
        optuna_api.check()


def test_a_renamed_trial_id_names_itself_and_the_optuna_version(monkeypatch):
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    monkeypatch.delattr(trial, "_trial_id")  # as if this Optuna stored it elsewhere
    with pytest.raises(JaxcnnError, match=_missing("_trial_id")):
        optuna_api.trial_id(trial)
    owner, _ = optuna_api.TRIAL_ID
    monkeypatch.setattr(optuna_api, "TRIAL_ID", (owner, "_trial_id_renamed"))
    with pytest.raises(JaxcnnError, match=_missing("_trial_id_renamed")):
        optuna_api.check()


def test_trial_statuses_are_the_strings_on_disk():
    assert [s.value for s in ROW_STATUSES] == [
        "ok",
        "invalid",
        "failed",
        "pruned",
        "running",
        "pending",
    ]
    assert (
        TrialStatus.DUPLICATE == "duplicate"
        and TrialStatus.DUPLICATE not in ROW_STATUSES
    )
    assert json.dumps({"status": TrialStatus.OK}) == '{"status": "ok"}'
    assert f"{TrialStatus.PRUNED}" == "pruned"


def test_rows_map_optuna_states_to_statuses(tmp_path):
    study = optuna.create_study(
        study_name="s", storage=storage.open_storage(None, tmp_path)
    )
    state = optuna.trial.TrialState
    for key, st, attrs in [
        ("a", state.WAITING, {}),
        ("b", state.FAIL, {"status": "invalid", "error": "bad"}),
        ("c", state.FAIL, {}),
        ("d", state.FAIL, {"status": "duplicate"}),
        ("e", state.COMPLETE, {"status": "ok"}),
    ]:
        study.add_trial(
            optuna.trial.create_trial(
                state=st,
                value=1.0 if st == state.COMPLETE else None,
                user_attrs={"key": key, **attrs},
            )
        )
    rows = storage.collect_rows(study)
    assert [(r["trial"], r["status"]) for r in rows] == [
        ("a", "pending"),
        ("b", "invalid"),
        ("c", "failed"),
        ("e", "ok"),
    ]
    assert all(type(r["status"]) is str for r in rows)
    assert "worker running this trial died" in rows[2]["error"]
