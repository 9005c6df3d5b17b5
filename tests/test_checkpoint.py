"""Checkpoint round trips, retention, error messages and crash safety."""

import glob
import os
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
from jaxcnn.errors import CheckpointError


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
        restored, restored_meta = ckpt.restore("latest", _abstract_state())
        assert ckpt.read_meta(40) == meta
    assert restored_meta == meta
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
        restored, meta = ckpt.restore("best", _small_state())
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


@pytest.mark.parametrize(
    "damage", ["delete_data", "truncate_data", "truncate_metadata"]
)
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, damage):
    state = {"w": jnp.arange(1000.0), "b": jnp.ones(3)}
    with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
        ckpt.save(1, state, metrics={}, meta={})
        ckpt.save(2, state, metrics={}, meta={})
    files = [
        f
        for f in glob.glob(str(tmp_path / "2" / "state" / "**"), recursive=True)
        if os.path.isfile(f)
    ]
    data = [f for f in files if f"{os.sep}d{os.sep}" in f]
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
        with pytest.raises(
            CheckpointError, match=r"checkpoint step 2 in .* is corrupt or unreadable"
        ):
            ckpt.restore("latest", state)
        restored, _ = ckpt.restore(1, state)  # the earlier checkpoint is untouched
    np.testing.assert_array_equal(restored["w"], state["w"])


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
        restored, meta = ckpt.restore(
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
        restored, _ = ckpt.restore(1, _small_state())
    _assert_trees_equal(restored, _small_state(1.0))
