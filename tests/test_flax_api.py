"""jaxcnn inside other people's JAX code: the Flax NNX MNIST tutorial with only the model
swapped, rngs, nnx.vmap ensembles, backbones, `features`, and the norm layers' settings."""

import gzip

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcnn
from jaxcnn import models, viz
from jaxcnn.errors import SpecError
from jaxcnn.spec import ModelSpec, NormSpec, layer_from_dict


def _params(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Param)
    return {
        "/".join(map(str, path)): np.asarray(leaf)
        for path, leaf in nnx.to_flat_state(state)
    }


def _mnist(shared_data, split: str, count: int) -> dict[str, np.ndarray]:
    """The first `count` examples of a raw MNIST split, as the tutorial's batches hold."""
    prefix = "train" if split == "train" else "t10k"
    folder = shared_data / "mnist"
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    images = images.reshape(-1, 28, 28, 1)[:count].astype(np.float32) / 255
    return {"image": images, "label": labels[:count].astype(np.int32)}


def _batches(data: dict[str, np.ndarray], batch_size: int):
    for i in range(0, len(data["label"]) - batch_size + 1, batch_size):
        yield {k: v[i : i + batch_size] for k, v in data.items()}


# --------------------------------------------------------------------------- the tutorial
@pytest.mark.slow  # real MNIST, trained
def test_flax_mnist_tutorial_steps_train_a_jaxcnn_model(shared_data):
    # The steps of flax.readthedocs.io's "MNIST tutorial" (docs_nnx/mnist_tutorial),
    # copied as they are; only the model class is swapped for a jaxcnn preset.
    train_steps, eval_every, batch_size = 60, 20, 32
    train_ds = _mnist(shared_data, "train", train_steps * batch_size)
    test_ds = _mnist(shared_data, "test", 512)

    model = jaxcnn.build_model(jaxcnn.preset("keras_mnist"), rngs=nnx.Rngs(0))
    y = model(jnp.ones((1, 28, 28, 1)), nnx.Rngs(0))
    assert y.shape == (1, 10)

    learning_rate = 0.005
    momentum = 0.9
    optimizer = nnx.Optimizer(
        model, optax.adamw(learning_rate, momentum), wrt=nnx.Param
    )
    metrics = nnx.MultiMetric(
        accuracy=nnx.metrics.Accuracy(),
        loss=nnx.metrics.Average("loss"),
    )

    def loss_fn(model, rngs: nnx.Rngs, batch):
        logits = model(batch["image"], rngs)
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits=logits, labels=batch["label"]
        ).mean()
        return loss, logits

    @nnx.jit
    def train_step(model, optimizer, metrics: nnx.MultiMetric, rngs: nnx.Rngs, batch):
        """Train for a single step."""
        grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
        (loss, logits), grads = grad_fn(model, rngs, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model, metrics: nnx.MultiMetric, rngs: nnx.Rngs, batch):
        loss, logits = loss_fn(model, rngs, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])

    history = {"train_loss": [], "train_accuracy": [], "test_accuracy": []}
    rngs = nnx.Rngs(0)

    def evaluate():
        model.eval()
        for test_batch in _batches(test_ds, batch_size):
            eval_step(model, metrics, rngs, test_batch)
        history["test_accuracy"].append(float(metrics.compute()["accuracy"]))
        metrics.reset()

    evaluate()  # the untrained model
    for step, batch in enumerate(_batches(train_ds, batch_size)):
        model.train()
        train_step(model, optimizer, metrics, rngs, batch)
        if step > 0 and (step % eval_every == 0 or step == train_steps - 1):
            for metric, value in metrics.compute().items():
                history[f"train_{metric}"].append(float(value))
            metrics.reset()
            evaluate()

    assert history["train_loss"][-1] < 0.6 * history["train_loss"][0]
    assert history["train_accuracy"][-1] > history["train_accuracy"][0]
    assert history["test_accuracy"][0] < 0.3  # chance, before training
    assert history["test_accuracy"][-1] > 0.8


# --------------------------------------------------------------------------- rngs
def test_call_rngs_draws_dropout_masks_and_eval_is_deterministic():
    model = models.build_model(models.preset("digits_cnn"), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    a, b = model(x, nnx.Rngs(1)), model(x, nnx.Rngs(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x, nnx.Rngs(1)), a)  # same rngs, same masks
    np.testing.assert_array_equal(model(x, rngs=nnx.Rngs(dropout=1)), a)
    own = model(x)  # without rngs: the model's own dropout stream, advancing
    assert not np.allclose(own, model(x))
    model.eval()
    e = model(x)
    np.testing.assert_array_equal(model(x, nnx.Rngs(1)), e)
    np.testing.assert_array_equal(model(x, nnx.Rngs(2)), e)
    assert not np.allclose(e, a)


def test_build_model_takes_rngs_streams():
    spec = models.preset("digits_cnn")
    a = _params(models.build_model(spec, rngs=nnx.Rngs(0)))
    b = _params(models.build_model(spec, rngs=nnx.Rngs(params=0, dropout=5)))
    c = _params(models.build_model(spec, rngs=nnx.Rngs(1)))
    assert a.keys() == b.keys() == _params(models.build_model(spec, seed=0)).keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # params from the params stream
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    # the model owns its params and dropout streams however it was built
    model = models.build_model(spec, rngs=nnx.Rngs(params=3))
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}
    assert {"rngs/params/key", "rngs/dropout/key"} <= paths
    with pytest.raises(SpecError, match=r"rngs has no 'params' or 'default' stream"):
        models.build_model(spec, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(SpecError, match="rngs must be an nnx.Rngs, got int"):
        models.build_model(spec, rngs=0)
    with pytest.raises(SpecError, match=r"seed must be an int.*pass rngs="):
        models.build_model(spec, seed=jnp.int32(0))


def test_nnx_vmap_ensemble_of_three_members():
    spec = models.simple_cnn(
        filters=4, depth=1, dense_units=8, dropout=0.5, input_shape=(8, 8, 1)
    )

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return models.build_model(spec, rngs=rngs)

    ensemble = create(nnx.Rngs(0))
    kernels = np.asarray(ensemble.conv_0.kernel[...])
    assert kernels.shape == (3, 3, 3, 1, 4)
    assert not np.allclose(kernels[0], kernels[1])
    assert not np.allclose(kernels[1], kernels[2])

    @nnx.vmap(in_axes=(0, None), out_axes=0)
    def forward(model, x):
        return model(x)

    x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))
    ensemble.eval()
    logits = nnx.jit(forward)(ensemble, x)
    assert logits.shape == (3, 5, 10)
    assert not np.allclose(logits[0], logits[1])
    # member 1 is the model its split key builds, run alone
    single = models.build_model(spec, rngs=nnx.Rngs(0))
    nnx.update(single, jax.tree.map(lambda v: v[1], nnx.state(ensemble)))
    single.eval()
    np.testing.assert_allclose(single(x), logits[1], rtol=1e-5, atol=1e-5)
    # train mode: each member draws its own dropout masks from its own stream
    ensemble.train()
    trained = forward(ensemble, x)
    assert trained.shape == (3, 5, 10) and bool(jnp.all(jnp.isfinite(trained)))


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("upto", ["conv_0", "pool_1", "flatten_5"])
def test_backbone_keeps_paths_values_and_intermediate_outputs(upto):
    spec = models.preset("keras_mnist")
    full = models.build_model(spec, seed=7)
    backbone = models.build_model(spec, seed=7, upto=upto)
    full_params, back_params = _params(full), _params(backbone)
    assert list(back_params) == list(full_params)[: len(back_params)]
    assert all(np.array_equal(v, full_params[k]) for k, v in back_params.items())
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
    out = backbone(x)
    # the whole network's layers, run one at a time, with no crop or fusion
    h = x
    for name, layer in full.named_layers():
        h = layer(h)
        if name == upto:
            break
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out, models.features(full, x, upto)[upto], rtol=1e-5, atol=1e-5
    )


def test_backbone_weights_transfer_by_path_from_a_trained_model():
    spec = models.preset("resnet_cifar", input_shape=(16, 16, 3))
    full = models.build_model(spec, seed=1)
    backbone = models.build_model(spec, seed=2, upto="residual_4")
    wanted = set(_params(backbone))
    state = nnx.state(full, nnx.Param)
    flat = [
        (p, v) for p, v in nnx.to_flat_state(state) if "/".join(map(str, p)) in wanted
    ]
    nnx.update(backbone, nnx.from_flat_state(flat))
    x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
    full.eval()
    backbone.eval()
    np.testing.assert_allclose(
        backbone(x), models.features(full, x, ["residual_4"])["residual_4"], atol=1e-5
    )


def test_a_spec_without_a_classifier_head_builds_as_a_backbone():
    headless = ModelSpec.from_dict(
        {
            "input_shape": [12, 12, 1],
            "num_classes": 10,
            "layers": [
                {"type": "conv", "filters": 4, "kernel": 3, "activation": "relu"},
                {"type": "pool", "window": 2},
                {"type": "flatten"},
            ],
        }
    )
    with pytest.raises(
        SpecError, match="last layer outputs 100 features but num_classes=10"
    ):
        models.build_model(headless)
    model = models.build_model(headless, upto="flatten_2")
    assert model.layer_names == ("conv_0", "pool_1", "flatten_2")
    assert model(jnp.ones((2, 12, 12, 1))).shape == (2, 100)
    assert list(models.param_paths(model)) == ["conv_0/bias", "conv_0/kernel"]
    maps = models.build_model(headless, upto="pool_1")
    assert maps(jnp.ones((2, 12, 12, 1))).shape == (2, 5, 5, 4)


def test_upto_must_name_a_top_level_layer():
    spec = models.preset("keras_mnist")
    with pytest.raises(
        SpecError,
        match=r"upto='conv_9' is no top-level layer of model 'keras_mnist'; its "
        r"layers are conv_0, pool_1, conv_2",
    ):
        models.build_model(spec, upto="conv_9")


# --------------------------------------------------------------------------- features
def _bn_dropout_spec() -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "input_shape": [10, 10, 2],
            "num_classes": 3,
            "layers": [
                {"type": "conv", "filters": 4, "kernel": 3, "activation": "relu"},
                {"type": "pool", "window": 2},
                {"type": "norm", "norm": "batch"},
                {"type": "dropout", "rate": 0.5},
                {"type": "flatten"},
                {"type": "dense", "units": 3},
            ],
        }
    )


def _modes(model) -> list:
    return [model.norm_2.use_running_average, model.dropout_3.deterministic]


@pytest.mark.parametrize("train", [True, False])
def test_features_under_nnx_jit_equal_eager_and_keep_the_mode(train):
    model = models.build_model(_bn_dropout_spec(), seed=0)
    model.train() if train else model.eval()
    before = _modes(model)
    x = jax.random.uniform(jax.random.key(4), (6, 10, 10, 2))
    names = ("conv_0", "pool_1", "norm_2", "dropout_3")
    jitted = nnx.jit(models.features, static_argnames="layers")
    got = jitted(model, x, layers=names, rngs=nnx.Rngs(3))
    want = models.features(model, x, names, rngs=nnx.Rngs(3))
    assert set(got) == set(names)  # a dict through jit comes back with sorted keys
    assert got["conv_0"].shape == (6, 8, 8, 4) and got["dropout_3"].shape == (
        6,
        4,
        4,
        4,
    )
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    assert _modes(model) == before
    dropped = (got["norm_2"] != 0) & (got["dropout_3"] == 0)
    assert bool(jnp.any(dropped)) == train  # dropout acts only in train mode


def test_features_use_the_models_kernels():
    spec = models.preset("keras_mnist")
    model = models.build_model(spec, kernels="xla")
    x = jax.random.uniform(jax.random.key(5), (2, 28, 28, 1))
    reference = models.features(model, x, ["conv_0", "pool_1"])
    # ReLU + max-pool fusion hands conv_0's ReLU to pool_1; its feature is still relu'd
    models.set_kernels(model, "fast", fuse_relu_pool=True)
    assert model.kernel_plan().layer("conv_0").fuse_relu_pool
    fused = models.features(model, x, ["conv_0", "pool_1"])
    assert float(fused["conv_0"].min()) >= 0.0
    for name in ("conv_0", "pool_1"):
        np.testing.assert_allclose(fused[name], reference[name], rtol=1e-4, atol=1e-4)


def test_features_reject_unknown_layers_and_other_models():
    model = models.build_model(models.preset("digits_cnn"))
    x = jnp.ones((1, 8, 8, 1))
    with pytest.raises(
        SpecError, match=r"no layer 'conv_7'; the model's layers are conv_0, conv_1"
    ):
        models.features(model, x, ["conv_0", "conv_7"])
    with pytest.raises(SpecError, match="no layers asked for"):
        models.features(model, x, [])
    with pytest.raises(SpecError, match="features takes a model from build_model"):
        models.features(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), x, ["conv_0"])
    with pytest.raises(SpecError, match=r"model input must be \[batch, H, W, 1\]"):
        models.features(model, jnp.ones((8, 8, 1)), ["conv_0"])


@pytest.mark.parametrize("train", [True, False])
def test_feature_maps_run_in_eval_mode_and_leave_the_mode_alone(train):
    spec = _bn_dropout_spec()
    model = models.build_model(spec)
    model.train() if train else model.eval()
    before = _modes(model)
    mean = np.asarray(model.norm_2.mean[...])
    image = np.random.default_rng(0).random((10, 10, 2), np.float32)
    maps = dict(viz.feature_maps(model, spec, image))
    assert list(maps) == ["input", "conv_0", "pool_1", "norm_2"]
    assert _modes(model) == before
    np.testing.assert_array_equal(model.norm_2.mean[...], mean)  # no stats moved
    model.eval()
    want = models.features(model, jnp.asarray(image[None]), ["norm_2"])["norm_2"]
    np.testing.assert_allclose(maps["norm_2"], want[0], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- norm layers
@pytest.mark.parametrize("kind", ["batch", "layer", "group"])
def test_norm_epsilon_and_momentum_reach_the_flax_modules(kind):
    layers = [
        {"type": "conv", "filters": 8, "kernel": 3},
        {"type": "norm", "norm": kind, "groups": 2, "epsilon": 1e-3, "momentum": 0.9},
        {"type": "global_pool"},
        {"type": "dense", "units": 2},
    ]
    spec = ModelSpec.from_dict(
        {"input_shape": [6, 6, 1], "num_classes": 2, "layers": layers}
    )
    norm = models.build_model(spec).norm_1
    module = {"batch": nnx.BatchNorm, "layer": nnx.LayerNorm, "group": nnx.GroupNorm}
    assert type(norm) is module[kind]
    assert norm.epsilon == 1e-3
    if kind == "batch":
        assert norm.momentum == 0.9
    # a large epsilon changes the output of a low-variance input
    x = 0.01 * jax.random.normal(jax.random.key(6), (4, 6, 6, 1))
    layers[1]["epsilon"] = 1.0
    big = ModelSpec.from_dict(
        {"input_shape": [6, 6, 1], "num_classes": 2, "layers": layers}
    )
    assert not np.allclose(models.build_model(big)(x), models.build_model(spec)(x))


def test_norm_defaults_are_flaxs_and_epsilon_is_checked():
    spec = NormSpec()
    assert (spec.epsilon, spec.momentum) == (1e-5, 0.99)
    keras = layer_from_dict({"type": "norm", "epsilon": 1e-3})
    assert (keras.epsilon, keras.momentum) == (1e-3, 0.99)
    assert layer_from_dict(keras.to_dict()) == keras
    for bad in (0.0, -1e-5, 2.0):
        with pytest.raises(SpecError, match=r"field 'epsilon' must be in \(0, 1\]"):
            NormSpec(epsilon=bad)
