"""Transfer learning: freeze masks, frozen weights staying bit-identical, init from a run."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import checkpoint, models, optim, transfer
from jaxcnn.errors import CheckpointError, SpecError
from jaxcnn.spec import ConvSpec, DenseSpec, FlattenSpec, ModelSpec, PoolSpec, RunConfig


def small_spec(num_classes=4, channels=1, conv2_filters=8, **conv0) -> ModelSpec:
    return ModelSpec(
        input_shape=(8, 8, channels),
        num_classes=num_classes,
        name="small",
        layers=(
            ConvSpec(filters=4, kernel=3, activation="relu", **conv0),
            PoolSpec(window=2),
            ConvSpec(
                filters=conv2_filters, kernel=3, padding="same", activation="relu"
            ),
            FlattenSpec(),
            DenseSpec(units=16, activation="relu"),
            DenseSpec(units=num_classes),
        ),
    )


def flat_params(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Param)
    return {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(state)
    }


@nnx.jit
def _step(model, optimizer, x, y):
    def loss_fn(m):
        return optim.cross_entropy(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_steps(model, optimizer, steps=5, seed=0):
    """A few optimiser steps on random data; returns the final loss."""
    shape = model.spec.input_shape
    n = model.spec.num_classes
    rng = np.random.default_rng(seed)
    loss = None
    for _ in range(steps):
        x = jnp.asarray(rng.random((16, *shape), np.float32))
        y = jnp.asarray(rng.integers(0, n, 16).astype(np.int32))
        loss = _step(model, optimizer, x, y)
    return float(loss)


def fake_run(workdir, spec, config=None, *, train=True):
    """A run directory as train.fit writes it: config.json and an orbax checkpoint."""
    config = config or RunConfig()
    model, optimizer = transfer.build_run_state(config, spec)
    if train:
        train_steps(model, optimizer, steps=3)
    _, state = nnx.split((model, optimizer))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
        json.dumps(
            {
                "run": config.to_dict(),
                "model_spec": spec.to_dict(),
                "dataset": {"class_names": [str(i) for i in range(spec.num_classes)]},
            }
        )
    )
    with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
        ckpt.save(
            7,
            nnx.to_pure_dict(state),
            metrics={"val_accuracy": 0.5},
            meta={"epoch": 1, "best_val_accuracy": 0.5},
        )
    return model


# --------------------------------------------------------------------------- masks
def test_no_patterns_no_mask():
    spec = small_spec()
    assert transfer.trainable_mask(models.build_model(spec), spec, ()) is None


def test_mask_from_patterns_and_untrainable_layers():
    spec = small_spec(init="sobel_x", trainable=False)
    model = models.build_model(spec)
    mask = transfer.trainable_mask(model, spec, ["^dense_4/"])
    assert mask["conv_0"] == {"kernel": False, "bias": False}  # trainable=False layer
    assert mask["dense_4"] == {"kernel": False, "bias": False}  # pattern
    assert mask["conv_2"] == {"kernel": True, "bias": True}
    assert mask["dense_5"] == {"kernel": True, "bias": True}
    only_layer = transfer.trainable_mask(model, spec, ())
    assert only_layer["conv_0"]["kernel"] is False
    assert only_layer["conv_2"]["kernel"] is True
    assert transfer.frozen_paths(model, spec, ["conv"]) == [
        "conv_0/bias",
        "conv_0/kernel",
        "conv_2/bias",
        "conv_2/kernel",
    ]


def test_pattern_matching_nothing_lists_paths():
    spec = small_spec()
    with pytest.raises(SpecError, match=r"'block' matches no parameter.*conv_0/kernel"):
        transfer.trainable_mask(models.build_model(spec), spec, ["conv", "block"])


def test_bad_regex_and_freezing_everything_are_errors():
    spec = small_spec()
    model = models.build_model(spec)
    with pytest.raises(SpecError, match=r"not a valid regular expression"):
        transfer.trainable_mask(model, spec, ["conv_[0"])
    with pytest.raises(SpecError, match=r"freezes all 8 parameters"):
        transfer.trainable_mask(model, spec, [".*"])


def test_frozen_params_bit_identical_and_stateless_while_head_trains():
    spec = small_spec()
    model = models.build_model(spec)
    mask = transfer.trainable_mask(model, spec, ["conv"])
    tx, _ = optim.make_optimizer(
        RunConfig().optim, steps_per_epoch=1, epochs=1, trainable=mask
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = flat_params(model)
    train_steps(model, optimizer, steps=5)
    after = flat_params(model)
    for path in before:
        if path.startswith("conv"):
            assert after[path].tobytes() == before[path].tobytes(), path
        else:
            assert not np.array_equal(after[path], before[path]), path
    # Adam keeps mu and nu only for the trainable parameters.
    opt_leaves = jax.tree_util.tree_leaves_with_path(
        nnx.to_pure_dict(nnx.state(optimizer))
    )
    opt_paths = [optim._path_str(p) for p, _ in opt_leaves]
    assert any("dense_5/kernel" in p for p in opt_paths)
    assert not any("conv" in p for p in opt_paths)


# --------------------------------------------------------------------------- init from run
def test_init_from_run_copies_base_and_replaces_head(tmp_path):
    old_spec = small_spec(num_classes=4)
    old_model = fake_run(tmp_path / "run", old_spec)
    new_spec = small_spec(num_classes=3)
    model = models.build_model(new_spec, seed=1)
    fresh = flat_params(model)
    notes = transfer.init_from_run(model, new_spec, tmp_path / "run", new_head=False)
    got, old = flat_params(model), flat_params(old_model)
    for path in got:
        if path.startswith("dense_5/"):
            np.testing.assert_array_equal(got[path], fresh[path])
        else:
            np.testing.assert_array_equal(got[path], old[path])
    assert "step 7" in notes[0] and "6 weight arrays" in notes[0]
    assert "dense_5 freshly initialised (4 -> 3 classes)" in notes[1]


def test_init_from_run_same_classes_and_new_head(tmp_path):
    spec = small_spec()
    old = flat_params(fake_run(tmp_path / "run", spec))
    model = models.build_model(spec, seed=1)
    transfer.init_from_run(model, spec, tmp_path / "run", new_head=False)
    got = flat_params(model)
    assert all(np.array_equal(got[p], old[p]) for p in old)

    model = models.build_model(spec, seed=1)
    fresh = flat_params(model)
    notes = transfer.init_from_run(model, spec, tmp_path / "run", new_head=True)
    got = flat_params(model)
    np.testing.assert_array_equal(got["dense_5/kernel"], fresh["dense_5/kernel"])
    np.testing.assert_array_equal(got["dense_4/kernel"], old["dense_4/kernel"])
    assert "--new-head" in notes[1]


def test_init_from_a_run_that_froze_layers(tmp_path):
    # The restore target must carry the run's optimiser structure (no state for frozen).
    spec = small_spec()
    config = RunConfig().override("train.freeze", ["conv_0"])
    old = flat_params(fake_run(tmp_path / "run", spec, config))
    model = models.build_model(spec, seed=3)
    transfer.init_from_run(model, spec, tmp_path / "run", new_head=False)
    np.testing.assert_array_equal(
        flat_params(model)["conv_2/kernel"], old["conv_2/kernel"]
    )


def test_init_from_errors(tmp_path):
    spec = small_spec()
    model = models.build_model(spec)
    with pytest.raises(CheckpointError, match=r"not a jaxcnn run directory"):
        transfer.init_from_run(model, spec, tmp_path / "nothing", new_head=False)

    fake_run(tmp_path / "run", spec, train=False)
    rgb = small_spec(channels=3)
    with pytest.raises(
        CheckpointError, match=r"takes 1 input channel.*this model takes 3"
    ):
        transfer.init_from_run(
            models.build_model(rgb), rgb, tmp_path / "run", new_head=False
        )

    wider = small_spec(conv2_filters=16)
    with pytest.raises(
        CheckpointError,
        match=r"conv_2/kernel has shape \(3, 3, 4, 8\) in the run but \(3, 3, 4, 16\)",
    ):
        transfer.init_from_run(
            models.build_model(wider), wider, tmp_path / "run", new_head=True
        )

    empty = tmp_path / "empty"
    fake_run(empty, spec, train=False)
    import shutil

    shutil.rmtree(empty / "checkpoints")
    with pytest.raises(CheckpointError, match=r"has no checkpoint"):
        transfer.init_from_run(model, spec, empty, new_head=False)


def test_head_prefix_is_last_top_level_dense():
    assert transfer.head_prefix(small_spec()) == "dense_5/"
    assert transfer.head_prefix(models.preset("keras_mnist")) == "dense_7/"


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_fine_tune_through_cli_keeps_frozen_weights_bit_identical(digits_run, tmp_path):
    from jaxcnn import cli, train

    args = ["train", "--epochs", "2", "--workdir", str(tmp_path / "tuned"), "--quiet"]
    args += ["--init-from", str(digits_run), "--freeze", "conv", "--new-head"]
    assert cli.main(args) == 0
    tuned = train.restore(tmp_path / "tuned", "latest")
    base = train.restore(digits_run)
    assert tuned.config.train.freeze == ("conv",) and tuned.config.train.new_head
    got, old = flat_params(tuned.model), flat_params(base.model)
    for path in got:
        if path.startswith("conv"):
            assert got[path].tobytes() == old[path].tobytes(), path
        else:  # dense_5 trained on, dense_6 started fresh and trained
            assert not np.array_equal(got[path], old[path]), path


@pytest.mark.slow
def test_cli_transfer_errors_exit_2(digits_run, tmp_path, capsys):
    from jaxcnn import cli

    base = ["train", "--epochs", "1", "--quiet"]
    assert cli.main([*base, "--workdir", str(tmp_path / "a"), "--freeze", "block"]) == 2
    assert "'block' matches no parameter" in capsys.readouterr().err
    missing = ["--init-from", str(tmp_path / "none")]
    assert cli.main([*base, "--workdir", str(tmp_path / "b"), *missing]) == 2
    assert "not a jaxcnn run directory" in capsys.readouterr().err
    # A model whose first conv has other filters than the run's: named with both shapes.
    other = [*base, "--workdir", str(tmp_path / "c"), "--init-from", str(digits_run)]
    for item in ("name=simple_cnn", "filters=16", "depth=1", "input_shape=[8, 8, 1]"):
        other += ["--set", f"model.{item}"]
    assert cli.main(other) == 2
    assert "conv_0/kernel has shape (3, 3, 1, 32) in the run but (3, 3, 1, 16)" in (
        capsys.readouterr().err
    )


def test_transfer_experiment_points(monkeypatch):
    """Frozen points freeze only convolutions and start from the pre-training run."""
    from jaxcnn import train
    from jaxcnn.sweep.config import load_module

    path = pathlib.Path(__file__).parents[1] / "experiments" / "transfer.py"
    module = load_module(path)
    monkeypatch.setenv(module.PRETRAINED_ENV, "/runs/x/pretrain")
    for smoke in (True, False):
        points = module.sweep(smoke)
        assert len(points) == 3 * (2 if smoke else 3)
        for point in points:
            config = module.base(smoke).with_overrides(point)
            spec = train.resolve_spec(config, 10)
            model = models.build_model(spec)
            frozen = transfer.frozen_paths(model, spec, config.train.freeze)
            if point["train.freeze"]:
                assert config.train.init_from == "/runs/x/pretrain"
                assert frozen and all(p.startswith("conv") for p in frozen)
            else:
                assert frozen == []
        assert {module._variant_of(p) for p in points} == set(module.VARIANTS)
    pre = module.pretrain_config(False)
    assert (pre.data.dataset, pre.model.name) == ("mnist", "keras_mnist")


# --------------------------------------------------------------------------- normalisation
def test_inherit_normalization_takes_the_sources_statistics(tmp_path):
    """An imported network's record (mean, std, channel order) becomes the data config
    of a run started from it, unless that run normalises its own way."""
    source = tmp_path / "imported"
    fake_run(source, small_spec(channels=3), train=False)
    config_file = source / "config.json"
    saved = json.loads(config_file.read_text())
    config = RunConfig().with_overrides({"train.init_from": str(source)})
    assert transfer.inherit_normalization(config) == (config, None)  # no statistics
    saved["dataset"].update(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.5], channels="bgr")
    config_file.write_text(json.dumps(saved))
    inherited, note = transfer.inherit_normalization(config)
    assert inherited == config.with_overrides(
        {
            "data.mean": [0.4, 0.5, 0.6],
            "data.std": [0.2, 0.25, 0.5],
            "data.channels": "bgr",
        }
    )
    assert f"normalised as {source} takes them (BGR, mean [0.4, 0.5, 0.6]" in note
    for own in ({"data.standardize": True}, {"data.mean": [0], "data.std": [1]}):
        mine = config.with_overrides(own)
        assert transfer.inherit_normalization(mine) == (mine, None)
    assert transfer.inherit_normalization(RunConfig()) == (RunConfig(), None)
    gone = RunConfig().with_overrides({"train.init_from": str(tmp_path / "none")})
    with pytest.raises(CheckpointError, match="not a jaxcnn run directory"):
        transfer.inherit_normalization(gone)


@pytest.mark.slow
def test_init_from_a_normalising_run_feeds_its_normalisation(tmp_path, capsys):
    """A run that normalised its input (here: standardised on 300 digits; an imported
    network: its source's statistics) passes its mean/std to the runs started from it,
    which record them and evaluate and predict with them."""
    from jaxcnn import rundir, train

    source = tmp_path / "source"
    pre = RunConfig().with_overrides(
        {"train.epochs": 1, "data.standardize": True, "data.train_examples": 300}
    )
    train.fit(pre, source, quiet=True)
    recorded = rundir.RunDir(source).read().dataset
    tuned = RunConfig().with_overrides(
        {
            "train.epochs": 1,
            "train.init_from": str(source),
            "train.freeze": ["conv"],
            "train.new_head": True,
        }
    )
    result = train.fit(tuned, tmp_path / "tuned")
    assert "the inputs are normalised as" in capsys.readouterr().out
    saved = rundir.RunDir(tmp_path / "tuned").read()
    np.testing.assert_allclose(saved.config.data.mean, recorded["mean"], rtol=1e-6)
    np.testing.assert_allclose(saved.config.data.std, recorded["std"], rtol=1e-6)
    np.testing.assert_allclose(saved.dataset["mean"], recorded["mean"], rtol=1e-6)
    np.testing.assert_allclose(saved.dataset["std"], recorded["std"], rtol=1e-6)
    assert not saved.config.data.standardize and saved.dataset["channels"] == "rgb"
    evaluated = train.evaluate(tmp_path / "tuned")
    assert evaluated["accuracy"] == pytest.approx(result.summary["test_accuracy"])
    # predict normalises a raw image with the inherited statistics
    predictor = train.Predictor(tmp_path / "tuned")
    image = np.zeros((8, 8, 1), np.uint8)
    image[2:6, 3] = 255
    probs = predictor([image], top_k=10)[0]["top"]
    x = (image[None].astype(np.float32) / 255 - np.float32(recorded["mean"])) / (
        np.float32(recorded["std"])
    )
    want = np.asarray(jax.nn.softmax(train.restore(tmp_path / "tuned").model(x)))[0]
    for entry in probs:
        assert entry["probability"] == pytest.approx(want[entry["class"]], abs=1e-5)
