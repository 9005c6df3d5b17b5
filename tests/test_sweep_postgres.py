"""Sweeps on a PostgreSQL storage (Optuna RDBStorage): concurrent workers run every
trial once, and a SIGKILLed worker is found by its stale heartbeat and its trial re-run.

These tests start a throwaway PostgreSQL server (Debian's `postgresql` package) in a temp
directory; they are marked `postgres` and deselected by default (`pytest -m postgres`).
"""

import glob
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
from test_sweep import _write_sweep_file

from jaxcnn import sweep
from jaxcnn.sweep import storage

pytestmark = pytest.mark.postgres

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _pg_bin() -> pathlib.Path | None:
    """The newest PostgreSQL server bin dir (Debian: /usr/lib/postgresql/<ver>/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(n) for n in pathlib.Path(p).parts[-3].split(".")],
    )
    if found:
        return pathlib.Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return pathlib.Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url():
    """Starts a private PostgreSQL server on a unix socket in a temp dir, creates the
    database `jaxcnn` and yields its SQLAlchemy URL; stops the server afterwards.

    As root the server runs as the `postgres` user (PostgreSQL refuses root).
    """
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.fail(
            "-m postgres needs the PostgreSQL server binaries: apt-get install postgresql"
        )
    root = pathlib.Path(tempfile.mkdtemp(prefix="jaxcnn-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"

    def pg(tool: str, *args: str) -> None:
        done = subprocess.run(
            [*as_user, str(bin_dir / tool), *args],
            capture_output=True,
            text=True,
            cwd=root,
        )
        if done.returncode != 0:
            server_log = log.read_text() if log.is_file() else ""
            pytest.fail(
                f"{tool} {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}{server_log}"
            )

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-c listen_addresses='' -c unix_socket_directories='{root}' -c fsync=off"
    pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        pg("createdb", "-h", str(root), "-U", "postgres", "jaxcnn")
        yield f"postgresql+psycopg://postgres@/jaxcnn?host={root}"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _trials_by_key(url: str, name: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    study = optuna.load_study(study_name=name, storage=url)
    out: dict[str, list] = {}
    for t in study.get_trials():
        out.setdefault(t.user_attrs["key"], []).append(t)
    return out


def test_three_concurrent_workers_on_postgres_run_every_trial_once(
    tmp_path, postgres_url
):
    epochs = 2
    config = _write_sweep_file(tmp_path, epochs, [4, 6, 8, 10, 12, 14], name="pg_grid")
    workdir = tmp_path / "sweep"
    rows = sweep.run_sweep(config, workdir, storage=postgres_url, workers=3, quiet=True)
    assert not (workdir / storage.JOURNAL).exists()  # the trials went to PostgreSQL
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    trials = _trials_by_key(postgres_url, "pg_grid")
    assert len(trials) == 6
    for attempts in trials.values():
        assert [t.state for t in attempts] == [optuna.trial.TrialState.COMPLETE]
    for r in rows:
        # The default heartbeat (20 s, grace 90 s) never mistook a live worker for dead.
        assert r["epochs_this_attempt"] == epochs and r["attempts"] == 1
        lines = (
            (workdir / "trials" / r["trial"] / "metrics.jsonl").read_text().splitlines()
        )
        assert len(lines) == epochs


# A worker with a 1 s heartbeat and a 3 s grace period, so the test need not wait 90 s.
_FAST_WORKER = (
    "import sys; from jaxcnn import cli; from jaxcnn.sweep import storage; "
    "storage.HEARTBEAT_SECONDS, storage.GRACE_SECONDS = 1, 3; "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def test_sigkilled_worker_is_found_by_heartbeat_and_its_trial_resumed(
    tmp_path, postgres_url
):
    epochs = 8
    config = _write_sweep_file(tmp_path, epochs, [8, 16, 24], name="pg_kill")
    workdir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-c",
        _FAST_WORKER,
        "sweep",
        "worker",
        str(config),
        "--workdir",
        str(workdir),
        "--storage",
        postgres_url,
        "--quiet",
    ]
    plans = sweep.plan_sweep(sweep.load_sweep(config))
    victim = workdir / "trials" / plans[1].key / "metrics.jsonl"
    proc = subprocess.Popen(command, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for two finished epochs of the second trial
        if victim.is_file() and len(victim.read_text().splitlines()) >= 2:
            break
        assert proc.poll() is None, "the worker ended before it could be killed"
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the second trial never reached epoch 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(victim.read_text().splitlines())
    assert done_before < epochs
    # The dead worker's trial is still RUNNING in the storage: only its heartbeat stopped.
    killed_first = _trials_by_key(postgres_url, "pg_kill")[plans[1].key]
    assert [t.state for t in killed_first] == [optuna.trial.TrialState.RUNNING]

    subprocess.run(command, check=True, env=ENV, timeout=120)
    rows = {r["trial"]: r for r in sweep.read_results(workdir)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    trials = _trials_by_key(postgres_url, "pg_kill")
    complete = optuna.trial.TrialState.COMPLETE
    for p in plans:
        assert [t.state for t in trials[p.key]].count(complete) == 1
    # The stale trial was failed by the heartbeat check and re-enqueued once.
    stale, retry = trials[plans[1].key]
    assert stale.number == killed_first[0].number
    assert stale.state == optuna.trial.TrialState.FAIL
    assert retry.state == complete
    assert retry.system_attrs["retry_history"] == [stale.number]
    first, killed, last = (rows[p.key] for p in plans)
    assert first["attempts"] == 1 and first["epochs_this_attempt"] == epochs
    assert killed["attempts"] == 2
    assert killed["resumed_from_epoch"] >= 1  # from its checkpoint, not from scratch
    assert killed["resumed_from_epoch"] <= done_before
    assert killed["epochs_this_attempt"] == epochs - killed["resumed_from_epoch"]
    assert last["attempts"] == 1 and last["resumed_from_epoch"] == 0


def test_a_sweep_on_postgres_grows_by_one_value_running_only_it(tmp_path, postgres_url):
    workdir = tmp_path / "sweep"
    for filters in ([4, 6], [4, 6, 8]):
        config = _write_sweep_file(tmp_path, 1, filters, name="pg_grow")
        rows = sweep.run_sweep(config, workdir, storage=postgres_url, quiet=True)
        assert [r["model.filters"] for r in rows] == filters
        assert {r["status"] for r in rows} == {"ok"}
    trials = _trials_by_key(postgres_url, "pg_grow")
    assert len(trials) == 3
    for attempts in trials.values():
        assert [t.state for t in attempts] == [optuna.trial.TrialState.COMPLETE]
