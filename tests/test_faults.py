"""Faults around a run: nothing deleted without --restart, no silent architecture mix,
no lost epoch record, and SIGTERM / mid-epoch checkpoints that resume bit-identically."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn import rundir, train
from jaxcnn.errors import JaxcnnError, TrainingError
from jaxcnn.spec import RunConfig


def _digits(**overrides) -> RunConfig:
    return RunConfig().with_overrides({"train.epochs": 3, **overrides})


def _params(model) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _records(workdir) -> list[dict]:
    timing = ("epoch_seconds", "images_per_second")
    return [
        {k: v for k, v in r.items() if k not in timing}
        for r in rundir.read_metrics(workdir)
    ]


def _run_script(body: str, *args, env=None):
    """Runs `body` in a fresh interpreter (faults that end the process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


# --------------------------------------------------------------------------- workdir
def test_run_files_without_config_are_kept_and_refused(tmp_path):
    workdir = tmp_path / "run"
    train.fit(_digits(**{"train.epochs": 2}), workdir, quiet=True)
    (workdir / "config.json").unlink()
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    with pytest.raises(JaxcnnError, match="no config.json.*--restart"):
        train.fit(_digits(**{"train.epochs": 1}), workdir, quiet=True)
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


def test_restart_removes_only_what_jaxcnn_wrote(tmp_path):
    workdir = tmp_path / "run"
    train.fit(_digits(**{"train.epochs": 1}), workdir, quiet=True)
    (workdir / "checkpoints" / "model.pt").write_text("a user's file")
    (workdir / "notes.txt").write_text("mine")
    (workdir / "tensorboard" / "mine.txt").write_text("mine")
    train.fit(_digits(**{"train.epochs": 1}), workdir, restart=True, quiet=True)
    assert (workdir / "checkpoints" / "model.pt").read_text() == "a user's file"
    assert (workdir / "notes.txt").exists() and (
        workdir / "tensorboard" / "mine.txt"
    ).exists()
    assert [r["epoch"] for r in _records(workdir)] == [1]


def test_edited_spec_file_is_not_resumed(tmp_path):
    spec = {
        "input_shape": [8, 8, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3, "activation": "relu"},
            {"type": "pool", "pool": "max", "window": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10},
        ],
    }
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    config = _digits(**{"model.name": str(path), "train.epochs": 1})
    train.fit(config, tmp_path / "run", quiet=True)
    spec["layers"][0]["activation"] = "tanh"
    path.write_text(json.dumps(spec))
    more = config.override("train.epochs", 2)
    with pytest.raises(JaxcnnError, match=r"different model.*activation"):
        train.fit(more, tmp_path / "run", quiet=True)


# --------------------------------------------------------------------------- kills
_KILL_AFTER_LOG = """
    import os, sys
    from jaxcnn import rundir, train
    from jaxcnn.spec import RunConfig
    log_epoch = rundir.MetricsLog.log_epoch
    def log_then_die(self, record):
        log_epoch(self, record)
        if record["epoch"] == 2:
            os._exit(9)  # after the record, before the checkpoint
    rundir.MetricsLog.log_epoch = log_then_die
    train.fit(RunConfig().with_overrides({"train.epochs": 3}), sys.argv[1], quiet=True)
"""


def test_kill_between_record_and_checkpoint_loses_no_epoch(tmp_path):
    killed = _run_script(_KILL_AFTER_LOG, tmp_path / "a")
    assert killed.returncode == 9, killed.stderr
    assert [r["epoch"] for r in _records(tmp_path / "a")] == [1, 2]
    _assert_resumes_as_fresh(tmp_path, _digits())
    assert [r["epoch"] for r in _records(tmp_path / "a")] == [1, 2, 3]


_FAULT_AT_CALL = """
    import os, signal, sys
    from jaxcnn import cli
    from jaxcnn.train import step
    workdir, call, fault, checkpoint_steps = sys.argv[1:]
    steps_train = step.Steps.train
    calls = {"n": 0}
    def train_with_fault(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(call):
            if fault == "SIGKILL":
                os._exit(9)
            os.kill(os.getpid(), getattr(signal, fault))
        return steps_train(self, *args, **kwargs)
    step.Steps.train = train_with_fault
    sys.exit(cli.main([
        "train", "--workdir", workdir, "--epochs", "3", "--quiet",
        "--set", f"train.checkpoint_steps={checkpoint_steps}",
    ]))
"""


def _assert_resumes_as_fresh(tmp_path, config: RunConfig) -> None:
    resumed = train.fit(config, tmp_path / "a", quiet=True)
    fresh = train.fit(config, tmp_path / "b", quiet=True)
    assert resumed.epochs == 3
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    jax.tree.map(
        np.testing.assert_array_equal, _params(resumed.model), _params(fresh.model)
    )


@pytest.mark.parametrize(
    "name, status",
    [("SIGTERM", 143), pytest.param("SIGINT", 130, marks=pytest.mark.slow)],
)
def test_signal_checkpoints_mid_epoch_and_resumes_bit_identically(
    tmp_path, name, status
):
    stopped = _run_script(_FAULT_AT_CALL, tmp_path / "a", 14, name, 0)
    assert stopped.returncode == status, stopped.stderr
    assert f"{name} received" in stopped.stderr and "Traceback" not in stopped.stderr
    assert [r["epoch"] for r in _records(tmp_path / "a")] == [1]  # inside epoch 2
    _assert_resumes_as_fresh(tmp_path, _digits())


@pytest.mark.slow  # ~25 s: trains, kills mid-epoch, resumes and trains again
def test_step_checkpoints_resume_mid_epoch_bit_identically(tmp_path):
    killed = _run_script(_FAULT_AT_CALL, tmp_path / "a", 17, "SIGKILL", 10)
    assert killed.returncode == 9, killed.stderr
    per_epoch = _records(tmp_path / "a")[0]["step"]
    ckpts = (tmp_path / "a" / "checkpoints").iterdir()
    saved = [int(p.name) for p in ckpts if p.name.isdigit()]
    assert max(saved) % per_epoch, "the kill should follow a mid-epoch checkpoint"
    _assert_resumes_as_fresh(tmp_path, _digits(**{"train.checkpoint_steps": 10}))


def test_a_model_that_cannot_fit_is_refused_before_allocating(tmp_path):
    spec = {
        "input_shape": [8, 8, 1],
        "num_classes": 10,
        "layers": [
            {"type": "conv", "filters": 64, "kernel": 3, "padding": "same"},
            {"type": "flatten"},
            {"type": "dense", "units": 2**20},
            {"type": "dense", "units": 10},
        ],
    }
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(spec))
    config = _digits(**{"model.name": str(path), "train.epochs": 1})
    with pytest.raises(
        JaxcnnError, match=r"needs about .* GiB per training step.*over the .* GiB"
    ):
        train.fit(config, tmp_path / "run", quiet=True)


def test_an_eval_batch_larger_than_its_split_is_cut_to_the_split(tmp_path):
    """train.eval_batch_size=10**8 once padded every evaluation batch to 10**8 images
    (23.8 GiB) and died allocating them; the batch is the split at most."""
    workdir = tmp_path / "run"
    train.fit(_digits(**{"train.epochs": 1, "train.eval_batch_size": 10**8}), workdir)
    reference = tmp_path / "reference"
    train.fit(_digits(**{"train.epochs": 1}), reference, quiet=True)
    (huge,), (usual,) = _records(workdir), _records(reference)
    assert huge["val_accuracy"] == usual["val_accuracy"]
    assert huge["train_loss"] == usual["train_loss"]


def test_an_eval_batch_that_cannot_fit_is_refused_naming_one_that_does(
    tmp_path, monkeypatch
):
    from jaxcnn import footprint, memory, models, shapes

    config = _digits(**{"train.epochs": 1, "train.eval_batch_size": 512})
    summary = shapes.infer(models.preset(config.model.name))
    train_needs = footprint.memory_estimate(summary, config.train.batch_size)["total"]
    val_needs = footprint.eval_memory_estimate(summary, 150)[
        "total"
    ]  # 150 val, 297 test
    assert val_needs > train_needs  # so a limit between them stops evaluation only
    monkeypatch.setattr(
        memory, "device_memory_bytes", lambda: (train_needs + val_needs) // 2
    )
    with pytest.raises(
        JaxcnnError, match=r"batch of 297 images .*use train.eval_batch_size <= \d+"
    ):
        train.fit(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_random_crop_larger_than_a_quarter_of_the_image_is_refused(tmp_path):
    config = _digits(**{"train.epochs": 1, "data.augment_crop": 3})  # 8x8 digits
    with pytest.raises(JaxcnnError, match=r"augment_crop=3 .* 8x8 .*use 0 to 2"):
        train.fit(config, tmp_path / "run", quiet=True)
    train.fit(_digits(**{"train.epochs": 1, "data.augment_crop": 2}), tmp_path / "ok")


@pytest.mark.parametrize(
    "model, dataset, expected",
    [
        ("keras_mnist", "mnist", "keras_mnist-mnist"),
        ("../../specs/net.toml", "mnist", "net-mnist"),
        ("/abs/x/../net.json", "mnist/3.0.1", "net-mnist_3.0.1"),
        ("..", "mnist", "run-mnist"),
    ],
)
def test_default_workdir_stays_under_runs(model, dataset, expected):
    from jaxcnn import rundir
    from jaxcnn.spec import ModelConfig

    config = RunConfig()
    config = type(config)(
        model=ModelConfig(name=model),
        data=config.data,
        optim=config.optim,
        train=config.train,
    )
    config = config.override("data.dataset", dataset)
    path = rundir.default_workdir(config)
    assert path.parent.as_posix() == "runs" and path.name == expected


def test_default_workdir_of_a_folder_dataset_is_its_name(tmp_path):
    from jaxcnn import rundir

    folder = tmp_path / "my images"
    folder.mkdir()
    config = RunConfig().override("data.dataset", str(folder) + "/")
    assert rundir.default_workdir(config).as_posix() == "runs/digits_cnn-my_images"


def test_weights_that_overflow_under_a_finite_loss_are_not_kept(tmp_path, monkeypatch):
    """The loss is computed before the update, so an update that overflows the weights
    (an exploding learning rate) leaves that step's loss finite."""
    import jax.numpy as jnp

    from jaxcnn.train import step

    train_step = step.train_step

    def overflowing_step(graph, state, *args):
        state, sums = train_step(graph, state, *args)
        state = jax.tree.map(
            lambda x: x * jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else x,
            state,
        )
        return state, sums

    monkeypatch.setattr(step, "train_step", overflowing_step)
    with pytest.raises(TrainingError, match="NaN or Inf in epoch 1"):
        one_step_epochs = {"data.train_examples": 40, "train.batch_size": 32}
        train.fit(_digits(**one_step_epochs), tmp_path / "run", quiet=True)
    ckpts = tmp_path / "run" / "checkpoints"
    assert not ckpts.exists() or not any(p.name.isdigit() for p in ckpts.iterdir())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _train_cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "jaxcnn", "train", "--epochs", "1", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_workdir_that_is_a_file_or_under_one_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for workdir in (blocker, blocker / "run"):
        done = _train_cli("--workdir", str(workdir))
        assert done.returncode == 2, done.stderr
        assert f"{blocker} is a file" in done.stderr
        assert "Traceback" not in done.stderr


def test_garbage_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{not json")
    done = _train_cli("--workdir", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr
    assert "is not a readable run config" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "run" / "config.json").read_text() == "{not json"


def test_read_only_workdir_is_a_clear_error(as_nobody):
    as_user = as_nobody
    home = pathlib.Path(tempfile.mkdtemp(prefix="jaxcnn-ro-"))
    try:
        workdir = home / "run"
        (workdir / "checkpoints").mkdir(parents=True)
        for path in (home, workdir, workdir / "checkpoints"):
            os.chmod(path, 0o777)
        for read_only in (workdir / "checkpoints", workdir):
            read_only.chmod(0o555)
            done = subprocess.run(
                [*as_user, sys.executable, "-m", "jaxcnn", "train", "--epochs", "1",
                 "--quiet", "--workdir", str(workdir)],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=home,
                env={**os.environ, "HOME": str(home),
                     "JAXCNN_COMPILATION_CACHE": str(home / "xla"),
                     "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])},
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert f"cannot write in {read_only}" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        for path in (home, *home.rglob("*")):
            path.chmod(0o777)
        shutil.rmtree(home)


# --------------------------------------------------------------------------- one writer
_HOLD_WRITER_LOCK = """
    import os, sys, time
    from jaxcnn import rundir
    run_dir = rundir.RunDir(sys.argv[1])
    run_dir.prepare()
    with run_dir.lock_for_writing():
        print("locked", flush=True)
        if sys.argv[2] == "die":
            os._exit(9)  # killed while training: the kernel drops its lock
        time.sleep(600)
"""


def _hold_writer_lock(workdir, then: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD_WRITER_LOCK), str(workdir), then],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked", holder.communicate()[1]
    return holder


def test_second_trainer_on_a_live_run_is_refused_naming_the_first(tmp_path):
    import socket

    workdir = tmp_path / "run"
    holder = _hold_writer_lock(workdir, "sleep")
    try:
        done = _train_cli("--workdir", str(workdir))
        assert holder.poll() is None  # refused at once, not after waiting for it
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr
    assert (
        f"workdir {workdir} is being trained by process {holder.pid} on host "
        f"{socket.gethostname()} (since " in done.stderr
    )
    assert "use another --workdir" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [".writer.lock"]


def test_writer_lock_of_a_killed_process_is_taken_over(tmp_path):
    workdir = tmp_path / "run"
    dead = _hold_writer_lock(workdir, "die")
    assert dead.wait() == 9
    assert json.loads((workdir / ".writer.lock").read_text())["pid"] == dead.pid
    result = train.fit(_digits(**{"train.epochs": 1}), workdir, quiet=True)
    assert result.epochs == 1
    holder = json.loads((workdir / ".writer.lock").read_text())
    assert holder["pid"] == os.getpid()
    # released at the end: the next run in this process (or another) may write
    (workdir / ".writer.lock").write_text("{not json")  # a damaged lock file is no harm
    assert train.fit(_digits(**{"train.epochs": 2}), workdir, quiet=True).epochs == 2


def test_signal_handlers_nest_so_a_sweep_and_its_trials_share_one_stop():
    import signal

    from jaxcnn.train import preemption

    before = signal.getsignal(signal.SIGTERM)
    with preemption.Stop.on_signals() as outer:
        with preemption.Stop.on_signals() as inner:  # a trial's fit inside a sweep
            assert inner is outer
        os.kill(os.getpid(), signal.SIGTERM)  # between trials: still caught
        assert outer.signal == signal.SIGTERM and outer.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_cut_last_metrics_line_is_rebuilt_from_its_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    train.fit(_digits(**{"train.epochs": 2}), workdir, quiet=True)
    path = workdir / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(
        first + "\n" + second[:30]
    )  # epoch 2's line cut, its checkpoint kept
    result = train.fit(_digits(), workdir, quiet=True)
    assert result.epochs == 3
    assert [r["epoch"] for r in _records(workdir)] == [1, 2, 3]
    assert path.read_text().splitlines()[:2] == [first, second]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs"] == 3


def test_a_writer_lock_that_cannot_be_opened_is_a_clear_error(tmp_path):
    from jaxcnn import rundir

    run_dir = rundir.RunDir(tmp_path / "run")
    run_dir.prepare()
    (run_dir.path / ".writer.lock").mkdir()  # stands in for a file it may not open
    with pytest.raises(
        JaxcnnError, match=r"cannot open the writer lock .*\.writer\.lock"
    ):
        run_dir.lock_for_writing()


# --------------------------------------------------------------------------- disk full
_TMPFS_SCRIPT = r"""
set -e
mount -t tmpfs -o size="$SIZE" tmpfs "$DISK"
head -c "$BALLAST" /dev/zero > "$DISK/ballast"
set +e
"$@" --workdir "$DISK/run" > "$OUT/full.out" 2> "$OUT/full.err"
echo $? > "$OUT/full.rc"
cp -r "$DISK/run" "$OUT/after_full"
rm "$DISK/ballast"
"$@" --workdir "$DISK/run" > "$OUT/freed.out" 2> "$OUT/freed.err"
echo $? > "$OUT/freed.rc"
cp -r "$DISK/run" "$OUT/after_freed"
"""


def _du(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_line_and_resumes_exactly(tmp_path):
    """A tmpfs (in a private mount namespace) with room for the run's files and one
    checkpoint: the second checkpoint meets a full disk. One error line, exit 2, the
    first checkpoint intact; with the space freed, the same command resumes and ends
    exactly where an unconstrained run ends."""
    if (
        not shutil.which("unshare")
        or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode
    ):
        pytest.skip("needs `unshare -rm` (user and mount namespaces) for a small tmpfs")
    command = [sys.executable, "-m", "jaxcnn", "train", "--epochs", "2"]
    reference = tmp_path / "reference"
    done = subprocess.run([*command, "--workdir", reference], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    checkpoint = max(_du(p) for p in (reference / "checkpoints").iterdir())
    run_files = _du(reference) - _du(reference / "checkpoints")
    size = 8 * 2**20
    # free: the run's other files and one checkpoint, and half of a second one
    free = run_files + checkpoint + checkpoint // 2 + 64 * 4096
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    env = {
        **os.environ,
        "SIZE": str(size),
        "BALLAST": str(size - free),
        "DISK": str(disk),
        "OUT": str(out),
    }
    script = ["unshare", "-rm", "bash", "-c", _TMPFS_SCRIPT, "tmpfs", *command]
    subprocess.run(script, env=env, check=True, timeout=600)

    assert (out / "full.rc").read_text().strip() == "2"
    err = (out / "full.err").read_text()
    assert "Traceback" not in err and "ERROR" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "the disk is full" in line and "latest: step 42" in line, line
    kept = (out / "after_full" / "checkpoints").iterdir()
    assert [p.name for p in kept if p.name.isdigit()] == ["42"]

    assert (out / "freed.rc").read_text().strip() == "0", (
        out / "freed.err"
    ).read_text()
    assert _records(out / "after_freed") == _records(reference)
    resumed = json.loads((out / "after_freed" / "summary.json").read_text())
    fresh = json.loads((reference / "summary.json").read_text())
    assert resumed["test_accuracy"] == fresh["test_accuracy"]
