"""Presets, the simple_cnn family, load_spec, build_model: forward, determinism, modes."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import models, shapes
from jaxcnn.errors import SpecError
from jaxcnn.spec import ModelConfig, ModelSpec


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


@functools.cache
def _built(name: str, **kwargs):
    """Each preset is built once per test session (eager init compiles per shape)."""
    return models.build_model(models.preset(name, **kwargs))


@nnx.jit
def _forward(model, x):
    return model(x)


@pytest.mark.parametrize(
    "name",
    # the ImageNet networks at 224x224 take minutes eagerly on 2 cores: their forward
    # passes are checked against the source frameworks in tests/test_interop_oracle.py
    # and tests/test_architectures.py
    [n for n in models.PRESETS if n not in models.IMAGENET_PRESETS],
)
def test_every_preset_builds_and_runs_forward(name):
    spec = models.preset(name)
    summary = shapes.infer(spec)
    model = _built(name)
    model.eval()
    x = jax.random.uniform(jax.random.key(0), (2, *spec.input_shape))
    logits = _forward(model, x)
    assert logits.shape == (2, spec.num_classes) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert (
        sum(math.prod(s) for s in models.param_paths(model).values())
        == summary.total_params
    )


@pytest.mark.parametrize(
    "name, params",
    [
        ("keras_mnist", 93_322),
        ("lenet5", 61_706),
        ("vgg_cifar", 1_186_378),
        ("digits_cnn", 43_050),
        # torchvision's counts (weights.meta["num_params"]; Keras's VGG16 too)
        ("vgg16", 138_357_544),
        ("vgg16_bn", 138_365_992),
        ("alexnet", 61_100_840),
    ],
)
def test_preset_parameter_counts(name, params):
    assert shapes.infer(models.preset(name)).total_params == params


@pytest.mark.parametrize(
    "name, flattened",
    [("vgg16", (7, 7, 512)), ("vgg16_bn", (7, 7, 512)), ("alexnet", (6, 6, 256))],
)
def test_imagenet_presets_flatten_the_map_torchvision_pools_to(name, flattened):
    """At 224x224 the last map already has the size torchvision's AdaptiveAvgPool2d
    pools to (7x7, 6x6), so leaving that pool out is exact."""
    spec = models.preset(name)
    summary = shapes.infer(spec)
    flatten = next(i for i, layer in enumerate(spec.layers) if layer.type == "flatten")
    assert summary.row(str(flatten)).input_shape == flattened
    assert summary.output_shape == (1000,)


def test_presets_accept_shape_and_class_overrides():
    spec = models.preset("keras_mnist", input_shape=(32, 32, 3), num_classes=5)
    summary = shapes.infer(spec)
    assert summary.output_shape == (5,)
    assert summary.layers[0].output_shape == (30, 30, 32)
    # lenet5 takes MNIST's 28x28 with 'same' padding in C1: same shapes after C1 as at 32x32
    small = shapes.infer(models.preset("lenet5", input_shape=(28, 28, 1)))
    classic = shapes.infer(models.preset("lenet5"))
    assert small.layers[0].output_shape == classic.layers[0].output_shape == (28, 28, 6)
    assert small.total_params == classic.total_params


FILTERS = (4, 8)
STRIDES = (1, 2)
POOLS = ("max", "avg", "sum", "lp", "geometric", "harmonic", "none")


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("filters", FILTERS)
def test_simple_cnn_sweep_axes_build_and_run(filters, stride, pool):
    spec = models.simple_cnn(
        filters=filters,
        stride=stride,
        pool=pool,
        padding="same",
        dense_units=16,
        input_shape=(16, 16, 1),
    )
    model = models.build_model(spec)
    model.eval()
    logits = model(jnp.ones((2, 16, 16, 1)))
    assert logits.shape == (2, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))
    summary = shapes.infer(spec)
    assert summary.layers[0].output_shape[2] == filters
    convs = [i for i in summary.layers if i.spec.type == "conv"]
    assert [c.output_shape[2] for c in convs] == [
        filters,
        2 * filters,
    ]  # doubles per stage


def test_simple_cnn_knobs():
    spec = models.simple_cnn(
        depth=3, width_multiplier=0.5, padding="same", dense_units=0, dropout=0.2
    )
    types = [layer.type for layer in spec.layers]
    assert types == ["conv", "pool"] * 3 + ["flatten", "dropout", "dense"]
    assert [layer.filters for layer in spec.layers if layer.type == "conv"] == [
        16,
        32,
        64,
    ]
    with pytest.raises(SpecError, match="depth must be >= 1, got 0"):
        models.simple_cnn(depth=0)
    # too deep for 28x28 with valid padding: fails statically, naming the layer
    with pytest.raises(
        SpecError, match=r"layer 6 \(conv 3x3 valid\): input 1x1x128 is smaller"
    ):
        shapes.infer(models.simple_cnn(depth=4))


def test_deterministic_init():
    spec = models.preset("digits_cnn")
    a, b = (
        _params(models.build_model(spec, seed=3)),
        _params(models.build_model(spec, seed=3)),
    )
    c = _params(models.build_model(spec, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dropout_differs_between_train_and_eval_and_rng_state_is_in_the_model():
    spec = models.preset("digits_cnn")
    model = models.build_model(spec)
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    model.eval()
    e1, e2 = model(x), model(x)
    np.testing.assert_array_equal(e1, e2)
    model.train()
    t1, t2 = model(x), model(x)
    assert not np.allclose(t1, t2)  # fresh mask each call
    assert not np.allclose(t1, e1)
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}
    assert "rngs/dropout/key" in paths and "rngs/params/key" in paths
    # the same seed gives the same dropout masks
    other = models.build_model(spec)
    np.testing.assert_array_equal(other(x), t1)


def test_batch_norm_differs_between_train_and_eval():
    spec = models.load_spec(
        ModelSpec.from_dict(
            {
                "input_shape": [6, 6, 2],
                "num_classes": 3,
                "layers": [
                    {"type": "conv", "filters": 4, "kernel": 3},
                    {"type": "norm", "norm": "batch", "momentum": 0.5},
                    {"type": "global_pool"},
                    {"type": "dense", "units": 3},
                ],
            }
        )
    )
    model = models.build_model(spec)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(2), (8, 6, 6, 2))
    model.eval()
    before = model(x)
    mean_before = np.asarray(model.norm_1.mean.value)
    model.train()
    train_out = model(x)
    assert not np.allclose(train_out, before)
    assert not np.allclose(model.norm_1.mean.value, mean_before)  # running stats moved
    model.eval()
    assert not np.allclose(model(x), before)


def test_build_model_validates_before_jax():
    bad = ModelSpec.from_dict(
        {
            "input_shape": [4, 4, 1],
            "num_classes": 2,
            "layers": [{"type": "conv", "filters": 2, "kernel": 5}],
        }
    )
    with pytest.raises(
        SpecError, match=r"layer 0 \(conv 5x5 valid\): input 4x4x1 is smaller"
    ):
        models.build_model(bad)
    with pytest.raises(SpecError, match="kernels must be one of auto, xla, fast"):
        models.build_model(models.preset("digits_cnn"), kernels="cuda")


@pytest.mark.parametrize("kernels", ["auto", "xla", "fast"])
def test_kernels_argument_is_the_models_kernel_choice(kernels):
    model = models.build_model(models.preset("digits_cnn"), kernels=kernels)
    assert model.kernel_choice.kernels == kernels
    # the plan's conv and pool implementations are what `kernels` resolves to here
    plan = model.kernel_plan()
    hand_written = kernels == "fast" or (kernels == "auto" and plan.backend == "cpu")
    assert (plan.layer("conv_0").conv != "xla") == hand_written
    assert plan.layer("pool_2").pool == ("fast" if hand_written else "xla")


def test_param_paths_follow_the_contract():
    paths = models.param_paths(_built("keras_mnist"))
    assert paths["conv_0/kernel"] == (3, 3, 1, 32)
    assert paths["conv_0/bias"] == (32,)
    assert paths["dense_7/bias"] == (10,)
    assert paths["dense_6/kernel"] == (576, 64)
    res = models.param_paths(_built("resnet_cifar"))
    assert res["residual_6/conv_0/kernel"] == (3, 3, 16, 32)
    assert res["residual_6/proj/kernel"] == (1, 1, 16, 32)
    assert "residual_3/proj/kernel" not in res  # identity skip


# --------------------------------------------------------------------------- load_spec
def test_load_spec_names_files_configs_and_specs(tmp_path):
    spec = models.preset("keras_mnist")
    assert models.load_spec("keras_mnist") == spec
    assert models.load_spec(spec) is spec
    path = tmp_path / "net.json"
    path.write_text(spec.to_json())
    from_file = models.load_spec(str(path))
    assert from_file.layers == spec.layers and from_file.name == "keras_mnist"
    family = models.load_spec(
        ModelConfig(name="simple_cnn", args={"filters": 8, "stride": 2, "pool": "avg"})
    )
    assert family == models.simple_cnn(filters=8, stride=2, pool="avg")
    inline = models.load_spec(
        ModelConfig(name="mine", args={"input_shape": [32, 32, 1]}, spec=spec)
    )
    assert inline.input_shape == (32, 32, 1)
    # an override of num_classes resizes a file spec's logits layer
    retarget = models.load_spec(str(path), input_shape=(28, 28, 3), num_classes=3)
    assert shapes.infer(retarget).output_shape == (3,)
    assert (
        models.load_spec("lenet5", input_shape=(28, 28, 1)).layers[0].padding == "same"
    )


@pytest.mark.parametrize(
    "model, message",
    [
        ("resnet99", "unknown model 'resnet99'; presets are keras_mnist, lenet5"),
        (
            ModelConfig(name="simple_cnn", args={"filterz": 3}),
            "unknown argument 'filterz'; valid arguments are filters",
        ),
        (
            ModelConfig(name="simple_cnn", args={"stride": "two"}),
            "argument 'stride' must be an int, got \"two\"",
        ),
        (
            ModelConfig(name="simple_cnn", args={"pool": "median"}),
            "argument 'pool' must be",
        ),
        (
            ModelConfig(name="keras_mnist", args={"filters": 3}),
            "unknown argument 'filters'",
        ),
        ("missing.toml", "missing.toml: no such file"),
        (42, "expected a model name"),
    ],
)
def test_load_spec_errors(model, message):
    with pytest.raises(SpecError) as excinfo:
        models.load_spec(model)
    assert message in str(excinfo.value)


def test_load_spec_file_only_takes_shape_args(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(models.preset("digits_cnn").to_dict()))
    with pytest.raises(SpecError, match="accepts only input_shape and num_classes"):
        models.load_spec(ModelConfig(name=str(path), args={"filters": 3}))


@pytest.mark.slow
def test_digits_cnn_learns_sklearn_digits():
    """The embedded default reaches >= 95% test accuracy in a few seconds of training."""
    import optax
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]

    model = models.build_model(models.preset("digits_cnn"), seed=0)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss_fn(model):
            logits = model(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    for epoch in range(8):
        perm = np.random.default_rng(epoch).permutation(len(x_train))
        for i in range(0, len(perm) - 49, 50):
            idx = perm[i : i + 50]
            step(model, optimizer, x_train[idx], y_train[idx])
    model.eval()
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), axis=-1) == y_test))
    assert accuracy >= 0.95
