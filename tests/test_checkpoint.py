"""Checkpoint round trips, retention, error messages and crash safety."""

import glob
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcnn import checkpoint
from jaxcnn.errors import CheckpointError, TrainingError


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, filters: int = 4):
        self.conv_0 = nnx.Conv(1, filters, (3, 3), rngs=rngs)
        self.norm_1 = nnx.BatchNorm(filters, rngs=rngs)
        self.dropout_2 = nnx.Dropout(0.5, rngs=rngs)
        self.dense_3 = nnx.Linear(filters, 3, rngs=rngs)
        self.rngs = rngs  # an nnx.RngState with typed keys travels with the model

    def __call__(self, x):
        x = nnx.relu(self.norm_1(self.conv_0(x)))
        return self.dense_3(self.dropout_2(x).mean(axis=(1, 2)))


def _tx():
    return optax.adam(1e-2)


def _train_state(model, optimizer):
    return {
        "model": nnx.to_pure_dict(nnx.state(model)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
    }


def _abstract_state(filters=4):
    def build():
        model = _Net(nnx.Rngs(123, dropout=7), filters)
        return _train_state(model, nnx.Optimizer(model, _tx(), wrt=nnx.Param))

    return nnx.eval_shape(build)


def _trained_state():
    model = _Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    x = jax.random.uniform(jax.random.key(2), (4, 6, 6, 1))
    y = jnp.array([0, 1, 2, 0])

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)

    model.train()
    step(model, optimizer)
    model.rngs()  # advance the default stream too
    return _train_state(model, optimizer)


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        assert x.dtype == y.dtype
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _small_state(value=0.0):
    return {"w": jnp.full((2, 3), float(value)), "key": jax.random.key(int(value * 10))}


def test_round_trip_of_a_real_nnx_model_and_optimizer_is_exact(tmp_path):
    state = _trained_state()
    assert int(state["optimizer"]["step"]) == 1
    assert int(state["model"]["dropout_2"]["rngs"]["count"]) == 1
    meta = {"epoch": 3, "config": {"optim": {"lr": 0.01}}}
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.save(40, state, metrics={"val_accuracy": 0.5}, meta=meta)
    assert checkpoint.has_checkpoint(tmp_path / "ckpt")

    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == 40
        restored, restored_meta, step = ckpt.restore("latest", _abstract_state())
        assert ckpt.read_meta(40) == meta
    assert restored_meta == meta and step == 40
    _assert_trees_equal(restored, state)
    assert int(restored["optimizer"]["step"]) == 1
    assert (
        restored["model"]["rngs"]["default"]["key"].dtype
        == state["model"]["rngs"]["default"]["key"].dtype
    )

    # the restored state drives a fresh model exactly like the saved one
    model = _Net(nnx.Rngs(99, dropout=98))
    nnx.update(model, restored["model"])
    _assert_trees_equal(nnx.to_pure_dict(nnx.state(model)), state["model"])


def test_keeps_latest_n_and_the_best_even_when_older(tmp_path):
    accuracies = [0.5, 0.9, 0.6, 0.7, 0.65, 0.66]
    with checkpoint.Checkpointer(tmp_path, keep=2) as ckpt:
        for epoch, acc in enumerate(accuracies, start=1):
            ckpt.save(
                epoch * 10,
                _small_state(epoch),
                metrics={"val_accuracy": acc},
                meta={"epoch": epoch},
            )
        assert ckpt.all_steps() == [20, 50, 60]
        assert ckpt.best_step() == 20
    with checkpoint.Checkpointer(tmp_path, keep=2) as ckpt:  # survives reopening
        assert ckpt.all_steps() == [20, 50, 60]
        assert (ckpt.best_step(), ckpt.latest_step()) == (20, 60)
        restored, meta, _ = ckpt.restore("best", _small_state())
        assert meta == {"epoch": 2}
        np.testing.assert_array_equal(restored["w"], np.full((2, 3), 2.0))
        # a later, better checkpoint replaces the old best
        ckpt.save(
            70, _small_state(7), metrics={"val_accuracy": 0.95}, meta={"epoch": 7}
        )
        assert ckpt.all_steps() == [60, 70]
        assert ckpt.best_step() == 70


def test_save_every_skips_epochs_but_not_a_new_best_or_forced(tmp_path):
    with checkpoint.Checkpointer(tmp_path, keep=10, save_every=2) as ckpt:
        written = [
            ckpt.save(
                1, _small_state(), metrics={"val_accuracy": 0.5}, meta={"epoch": 1}
            ),
            ckpt.save(
                2, _small_state(), metrics={"val_accuracy": 0.4}, meta={"epoch": 2}
            ),
            ckpt.save(
                3, _small_state(), metrics={"val_accuracy": 0.3}, meta={"epoch": 3}
            ),
            ckpt.save(
                4, _small_state(), metrics={"val_accuracy": 0.6}, meta={"epoch": 4}
            ),
            ckpt.save(
                5,
                _small_state(),
                metrics={"val_accuracy": 0.1},
                meta={"epoch": 5},
                force=True,
            ),
        ]
        assert written == [True, True, False, True, True]
        assert ckpt.all_steps() == [1, 2, 4, 5]
        with pytest.raises(CheckpointError, match="step 5 already exists"):
            ckpt.save(5, _small_state(), metrics={}, meta={"epoch": 6})


def test_mismatched_shape_names_path_and_shapes(tmp_path):
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, _trained_state(), metrics={"val_accuracy": 0.1}, meta={"epoch": 1})
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(5, _abstract_state(filters=8))
    message = str(info.value)
    assert message.startswith(
        "checkpoint step 5: parameter model/conv_0/bias has shape (4,) in the checkpoint but "
        "(8,) in the model"
    )
    assert (
        "model/conv_0/kernel has shape (3,3,1,4) in the checkpoint but (3,3,1,8)"
        in message
    )
    assert "more" in message and "different model" in message


def test_mismatched_structure_and_dtype_are_named(tmp_path):
    saved = {
        "conv_0": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)},
        "dense_1": jnp.zeros(2),
    }
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, saved, metrics={}, meta={})
        target = {
            "conv_0": {"kernel": jnp.zeros((3, 3), jnp.bfloat16)},
            "dense_2": jnp.zeros(2),
        }
        with pytest.raises(CheckpointError) as info:
            ckpt.restore("latest", target)
    message = str(info.value)
    assert (
        "parameter conv_0/kernel has dtype float32 in the checkpoint but bfloat16"
        in message
    )
    assert "parameter dense_2 (2,) is in the model but not in the checkpoint" in message
    assert (
        "parameter conv_0/bias (3,) is in the checkpoint but not in the model"
        in message
    )
    assert "parameter dense_1 (2,) is in the checkpoint but not in the model" in message


def test_missing_checkpoint_names_the_directory(tmp_path):
    assert not checkpoint.has_checkpoint(tmp_path / "nothing")
    with checkpoint.Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.latest_step() is None and ckpt.best_step() is None
        with pytest.raises(
            CheckpointError, match=f"no checkpoint in {tmp_path / 'empty'}"
        ):
            ckpt.restore("latest", _small_state())
        ckpt.save(3, _small_state(), metrics={}, meta={})
        with pytest.raises(
            CheckpointError, match=r"no checkpoint step 4 .* available steps: \[3\]"
        ):
            ckpt.restore(4, _small_state())


def _files(directory) -> list[str]:
    return [
        f for f in glob.glob(str(directory / "**"), recursive=True) if os.path.isfile(f)
    ]


def _assert_readable(message: str) -> None:
    """No internal reprs or tensorstore specs in a message meant for users."""
    for internal in ("pybind", "<bound method", "tensorstore_spec", "Traceback"):
        assert internal not in message, message


@pytest.mark.parametrize(
    "damage", ["delete_data", "truncate_data", "truncate_metadata"]
)
def test_damaged_checkpoint_is_skipped_by_latest_and_refused_by_number(
    tmp_path, capsys, damage
):
    state = {"w": jnp.arange(1000.0), "b": jnp.ones(3)}
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        ckpt.save(1, state, metrics={}, meta={"epoch": 1})
        ckpt.save(2, state, metrics={}, meta={"epoch": 2})
    data = [f for f in _files(tmp_path / "2" / "state") if f"{os.sep}d{os.sep}" in f]
    assert data
    if damage == "delete_data":
        for f in data:
            os.remove(f)
    elif damage == "truncate_data":
        for f in data:
            os.truncate(f, 10)
    else:
        os.truncate(tmp_path / "2" / "state" / "_METADATA", 10)
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(2, state)
        restored, meta, step = ckpt.restore("latest", state)
        assert ckpt.latest_step() == 1  # step 2 is known to be unusable now
    message = str(info.value)
    assert message.startswith(f"checkpoint step 2 in {tmp_path} is unusable: its ")
    assert "Restore 'latest' or 'best'" in message
    _assert_readable(message)
    assert (step, meta) == (1, {"epoch": 1})
    np.testing.assert_array_equal(restored["w"], state["w"])
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: checkpoint step 2 in {tmp_path} is unusable (")
    assert warning.endswith("; using step 1 instead") and "\n" not in warning
    _assert_readable(warning)


def test_changed_bytes_fail_the_digest_and_best_falls_back(tmp_path, capsys):
    state = {"w": jnp.linspace(0.0, 1.0, 4096), "b": jnp.ones(3)}
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        ckpt.save(1, state, metrics={"val_accuracy": 0.5}, meta={"epoch": 1})
        ckpt.save(2, state, metrics={"val_accuracy": 0.9}, meta={"epoch": 2})
        ckpt.save(3, state, metrics={"val_accuracy": 0.7}, meta={"epoch": 3})
    largest = max(_files(tmp_path / "2" / "state"), key=os.path.getsize)
    with open(largest, "r+b") as f:  # four bytes inside the array data
        f.seek(os.path.getsize(largest) // 2)
        f.write(b"\x00\x00\x80\x7f")
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        assert ckpt.best_step() == 2  # not known to be damaged before it is read
        _, meta, step = ckpt.restore("best", state)
        assert (step, meta) == (3, {"epoch": 3})  # the next best by val_accuracy
        assert ckpt.best_step() == 3
    warning = capsys.readouterr().err
    assert "checkpoint step 2" in warning and "parameter w" in warning
    assert "does not match the sha256 digest saved with it" in warning
    assert "using step 3 instead" in warning


def test_no_usable_checkpoint_names_every_step_and_why(tmp_path):
    state = {"w": jnp.ones(8)}
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, metrics={}, meta={"epoch": 1})
        ckpt.save(2, state, metrics={}, meta={"epoch": 2})
    (tmp_path / "1" / "meta" / "metadata").write_text("{not json")
    (tmp_path / "2" / "metrics" / "metrics").write_text('["garbage"]')
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1  # step 2's metrics were checked on opening
        with pytest.raises(CheckpointError) as info:
            ckpt.restore("latest", state)
    message = str(info.value)
    assert message.startswith(f"no usable checkpoint in {tmp_path} (step 1: its meta")
    assert "not valid JSON" in message
    assert "step 2: its metrics file does not hold a JSON object of numbers" in message
    assert "--restart" in message


def test_garbage_metrics_file_does_not_stop_the_directory_opening(tmp_path, capsys):
    state = {"w": jnp.ones(8)}
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state, metrics={"val_accuracy": step / 10}, meta={})
    (tmp_path / "3" / "metrics" / "metrics").write_bytes(b"\xff\xfe garbage")
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        assert (ckpt.latest_step(), ckpt.best_step()) == (2, 2)
        assert ckpt.all_steps() == [1, 2, 3]
        _, _, step = ckpt.restore("best", state)  # step 3 might have been the best
        assert step == 2
        # saving step 3 again replaces the unusable one instead of refusing
        assert ckpt.save(3, state, metrics={"val_accuracy": 0.3}, meta={"epoch": 3})
        assert ckpt.latest_step() == 3 and ckpt.best_step() == 3
    assert "checkpoint step 3" in capsys.readouterr().err
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        assert ckpt.restore("latest", state).step == 3


def test_save_refuses_nonfinite_state_and_keeps_the_last_good(tmp_path):
    good = {"model": {"w": jnp.ones(4)}, "step": jnp.int32(3)}
    bad = {
        "model": {"w": jnp.array([1.0, jnp.nan, 0.0, jnp.inf])},
        "step": jnp.int32(4),
    }
    assert checkpoint.nonfinite_paths(good) == []
    assert checkpoint.nonfinite_paths(bad) == ["model/w"]
    assert (
        checkpoint.nonfinite_paths({"k": jax.random.key(0), "i": jnp.arange(3)}) == []
    )
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TrainingError) as first:
            ckpt.save(10, bad, metrics={}, meta={"epoch": 1})
        assert "no checkpoint was saved" in str(first.value)
        ckpt.save(10, good, metrics={}, meta={"epoch": 1})
        with pytest.raises(TrainingError) as info:
            ckpt.save(20, bad, metrics={}, meta={"epoch": 2})
        ckpt.check_finite(good, epoch=3)  # no error
        assert ckpt.all_steps() == [10]
    message = str(info.value)
    assert message.startswith(
        "the weights became NaN or Inf in epoch 2 (parameter model/w); they are not "
        f"saved, and the last good checkpoint (step 10) is kept in {tmp_path}"
    )
    assert "optim.lr" in message and "optim.clip_norm" in message


def test_restore_rejects_nonfinite_state_even_when_its_digest_matches(
    tmp_path, monkeypatch, capsys
):
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.ones(3)}, metrics={}, meta={})
        # a checkpoint written without the save-time check (e.g. by an older version)
        monkeypatch.setattr(checkpoint, "nonfinite_paths", lambda state: [])
        ckpt.save(2, {"w": jnp.full(3, jnp.nan)}, metrics={}, meta={})
        monkeypatch.undo()
        restored, _, step = ckpt.restore("latest", {"w": jnp.zeros(3)})
        with pytest.raises(CheckpointError, match="NaN or Inf values in parameter w"):
            ckpt.restore(2, {"w": jnp.zeros(3)})
    assert step == 1
    np.testing.assert_array_equal(restored["w"], np.ones(3))
    assert "NaN or Inf values in parameter w" in capsys.readouterr().err


_CHILD = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    from jaxcnn import checkpoint

    ckpt = checkpoint.Checkpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.arange(8.0), "big": jnp.zeros(8)}, metrics={}, meta={"epoch": 1})
    big = jnp.arange(64_000_000, dtype=jnp.float32)  # 256 MB: the save takes seconds
    big.block_until_ready()
    print("saving", flush=True)
    ckpt.save(2, {"w": jnp.arange(8.0) + 1, "big": big}, metrics={}, meta={"epoch": 2})
    print("saved", flush=True)
    """
)


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not glob.glob(str(directory / "2.orbax-checkpoint-tmp*")):
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert checkpoint.has_checkpoint(directory)
    assert glob.glob(str(directory / "2.orbax-checkpoint-tmp*"))  # killed mid-write
    with checkpoint.Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [1]
        restored, meta, _ = ckpt.restore(
            "latest", {"w": jnp.zeros(8), "big": jnp.zeros(8)}
        )
    assert meta == {"epoch": 1}
    np.testing.assert_array_equal(restored["w"], np.arange(8.0))
    assert not glob.glob(str(directory / "*tmp*"))  # the unfinished save was cleaned up


def test_async_save_is_durable_after_wait(tmp_path):
    with checkpoint.Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(
            1, _small_state(1.0), metrics={"val_accuracy": 0.3}, meta={"epoch": 1}
        )
        ckpt.wait()
        assert checkpoint.has_checkpoint(tmp_path)
        restored, _, _ = ckpt.restore(1, _small_state())
    _assert_trees_equal(restored, _small_state(1.0))


def test_read_only_checkpointer_creates_removes_and_saves_nothing(tmp_path, snapshot):
    directory = tmp_path / "ckpt"
    with checkpoint.Checkpointer(directory) as ckpt:
        ckpt.save(
            1, _small_state(1.0), metrics={"val_accuracy": 0.3}, meta={"epoch": 1}
        )
    unfinished = directory / "2.orbax-checkpoint-tmp"  # a save another process is doing
    (unfinished / "state").mkdir(parents=True)
    before = snapshot(directory)
    with checkpoint.Checkpointer(directory, read_only=True) as ckpt:
        assert ckpt.all_steps() == [1]
        restored, meta, step = ckpt.restore("latest", _small_state())
        with pytest.raises(CheckpointError, match="opened read-only; step 3 is not"):
            ckpt.save(3, _small_state(3.0), metrics={}, meta={"epoch": 3})
    assert (step, meta) == (1, {"epoch": 1})
    _assert_trees_equal(restored, _small_state(1.0))
    assert snapshot(directory) == before
    with checkpoint.Checkpointer(tmp_path / "missing", read_only=True) as ckpt:
        assert ckpt.all_steps() == []
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------ real runs of fit
@pytest.fixture
def run_copy(digits_run, tmp_path):
    """A copy of `digits_run` to damage; (workdir, older step, newest step)."""
    workdir = tmp_path / "run"
    shutil.copytree(digits_run, workdir)
    with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
        older, newest = ckpt.all_steps()
        assert ckpt.best_step() == newest  # so that damaging it tests "best" too
    return workdir, older, newest


def _damage(step_dir: pathlib.Path, how: str) -> None:
    largest = max(_files(step_dir / "state"), key=os.path.getsize)
    if how == "overwrite":  # four bytes in the middle of the largest data file
        with open(largest, "r+b") as f:
            f.seek(os.path.getsize(largest) // 2)
            f.write(b"\xff\xff\xff\xff")
    elif how == "truncate":
        os.truncate(largest, os.path.getsize(largest) // 3)
    elif how == "metrics":
        (step_dir / "metrics" / "metrics").write_text("val_accuracy: high")
    elif how == "meta":
        (step_dir / "meta" / "metadata").write_text('{"epoch": 3, "config"')


def _digit_png(path: pathlib.Path) -> pathlib.Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    image = load_digits().images[0] * 255 / 16
    Image.fromarray(image.astype(np.uint8)).resize((32, 32)).save(path)
    return path


def test_overwritten_bytes_in_a_real_run_eval_and_predict_fall_back(
    run_copy, tmp_path, capsys
):
    from jaxcnn import cli

    workdir, older, newest = run_copy
    _damage(workdir / "checkpoints" / str(newest), "overwrite")

    assert cli.main(["eval", "--workdir", str(workdir), "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["step"] == older and math.isfinite(report["loss"])
    assert report["accuracy"] > 0.5
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: checkpoint step {newest} in {workdir / 'checkpoints'} is unusable ("
    )
    # Where the four bytes land decides which check sees them first: the stored
    # (compressed) data no longer decodes, or it decodes to values whose digest differs.
    assert (
        "does not match the sha256 digest" in lines[0] or "cannot be read" in lines[0]
    )
    assert lines[0].endswith(f"using step {older} instead")

    image = _digit_png(tmp_path / "digit.png")
    assert cli.main(["predict", "--workdir", str(workdir), str(image)]) == 0
    out, err = capsys.readouterr()
    assert "nan" not in out and f"using step {older} instead" in err
    probability = float(out.split("(")[1].split(")")[0])
    assert 0.0 < probability <= 1.0

    assert (
        cli.main(["eval", "--workdir", str(workdir), "--checkpoint", str(newest)]) == 2
    )
    err = capsys.readouterr().err
    assert f"error: checkpoint step {newest} in" in err and "is unusable" in err
    _assert_readable(err)


@pytest.mark.parametrize("how", ["truncate", "metrics", "meta"])
def test_damaged_newest_checkpoint_of_a_real_run_is_skipped(run_copy, capsys, how):
    from jaxcnn import transfer

    workdir, older, newest = run_copy
    _damage(workdir / "checkpoints" / str(newest), how)
    for which in ("latest", "best"):
        restored = transfer.restore(workdir, which)
        assert (restored.step, restored.epoch) == (older, 2)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"checkpoint step {newest} in" in err
        assert f"using step {older} instead" in err
        _assert_readable(err)
    reason = {
        "truncate": "its array data cannot be read",
        "metrics": "its metrics file cannot be read (not valid JSON",
        "meta": "its meta file cannot be read (not valid JSON",
    }[how]
    assert reason in err


def test_resume_falls_back_past_a_truncated_checkpoint_and_ends_identical(
    run_copy, digits_run, digits_config, tmp_path, capsys
):
    from jaxcnn import train

    workdir, older, newest = run_copy
    _damage(workdir / "checkpoints" / str(newest), "truncate")
    intact = tmp_path / "intact"
    shutil.copytree(digits_run, intact)
    config = digits_config.override("train.epochs", 4)
    resumed = train.fit(config, workdir, quiet=True)
    err = capsys.readouterr().err
    assert f"checkpoint step {newest}" in err and f"using step {older} instead" in err
    reference = train.fit(config, intact, quiet=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == [
        {
            **r,
            "epoch_seconds": s["epoch_seconds"],
            "images_per_second": s["images_per_second"],
        }
        for r, s in zip(reference.history, resumed.history, strict=True)
    ]
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(resumed.model, nnx.Param)),
        nnx.to_pure_dict(nnx.state(reference.model, nnx.Param)),
    )
    with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
        assert newest in ckpt.all_steps()  # rewritten by the resumed run, and good
        assert ckpt.restore(newest, _pure_state_of(workdir)).step == newest


def _pure_state_of(workdir):
    from jaxcnn import rundir, transfer

    saved = rundir.RunDir(workdir).read()
    _, state = nnx.split(transfer.build_run_state(saved.config, saved.spec))
    return nnx.to_pure_dict(state)


def test_no_usable_checkpoint_in_a_real_run_is_a_clear_error(run_copy, digits_config):
    from jaxcnn import cli, train

    workdir, older, newest = run_copy
    _damage(workdir / "checkpoints" / str(newest), "overwrite")
    _damage(workdir / "checkpoints" / str(older), "meta")
    with pytest.raises(CheckpointError) as info:
        train.fit(digits_config.override("train.epochs", 4), workdir, quiet=True)
    message = str(info.value)
    assert message.startswith(f"no usable checkpoint in {workdir / 'checkpoints'}")
    assert f"step {older}: its meta file" in message
    assert f"step {newest}: " in message  # unreadable data or a digest mismatch
    _assert_readable(message)
    assert cli.main(["eval", "--workdir", str(workdir)]) == 2


def test_readers_change_nothing_in_a_run_directory(
    run_copy, tmp_path, capsys, snapshot
):
    """eval, predict, viz and a transfer's restore, started while the run saves: the
    save in progress (an orbax temporary directory) and every other file stay as they
    are."""
    from jaxcnn import cli, transfer

    workdir, _, newest = run_copy
    unfinished = workdir / "checkpoints" / f"{newest + 1}.orbax-checkpoint-tmp"
    (unfinished / "state").mkdir(parents=True)
    (unfinished / "state" / "part").write_bytes(b"being written")
    before = snapshot(workdir)
    image = _digit_png(tmp_path / "digit.png")
    assert cli.main(["eval", "--workdir", str(workdir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == newest
    assert cli.main(["predict", "--workdir", str(workdir), str(image)]) == 0
    out = tmp_path / "filters.png"
    assert cli.main(["viz", "filters", "--workdir", str(workdir), "-o", str(out)]) == 0
    assert transfer.restore(workdir, "latest").step == newest
    assert "warning" not in capsys.readouterr().err
    assert snapshot(workdir) == before
