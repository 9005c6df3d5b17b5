"""Models built with the fast kernels equal the XLA-kernel models: logits and gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import layers, models, optim, train
from jaxcnn.spec import RunConfig


@nnx.jit
def _logits_and_grads(model, x):
    def loss(model, x):
        return jnp.mean(model(x) ** 2)

    grads = nnx.grad(loss)(model, x)
    return model(x), nnx.state(grads, nnx.Param)


def _assert_close(a, b, rtol=2e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = float(jnp.abs(v).max()) + 1e-12
        np.testing.assert_allclose(
            np.asarray(u), np.asarray(v), rtol=0, atol=rtol * scale
        )


# the two larger presets take long to compile on a small CPU
SLOW = ("resnet_cifar", "vgg_cifar")


def _smooth(layer_specs):
    """The same layers with ReLU -> GELU and max -> average pooling."""
    out = []
    for layer in layer_specs:
        changes = {}
        if getattr(layer, "activation", None) == "relu":
            changes["activation"] = "gelu"
        if getattr(layer, "pool", None) == "max":
            changes["pool"] = "avg"
        if getattr(layer, "layers", None):
            changes["layers"] = _smooth(layer.layers)
        out.append(dataclasses.replace(layer, **changes))
    return tuple(out)


@pytest.mark.parametrize("smooth", [False, True], ids=["preset", "smooth"])
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
        for n in sorted(models.PRESETS)
    ],
)
def test_fast_kernels_match_xla_for_every_preset(name, smooth):
    """The presets themselves with im2col convs; with Winograd, their smooth twins.

    Winograd's forward rounds about 10x more than XLA's: enough to flip a ReLU mask or
    a max-pool argmax where two values nearly tie, which moves the exact gradient far
    more than the rounding itself (vgg_cifar: conv 3's kernel gradient). The kernels are
    not the cause: with GELU and average pooling the Winograd model's gradients agree
    with float64 as closely as im2col's do (benchmarks/results/one_off.md).
    """
    spec = models.preset(name)
    if smooth:
        spec = dataclasses.replace(spec, layers=_smooth(spec.layers))
    x = jnp.asarray(
        np.random.default_rng(0).uniform(size=(2, *spec.input_shape)), jnp.float32
    )
    fast = models.build_model(spec, seed=0, kernels="fast")
    if not smooth:
        layers.set_kernels(fast, conv="im2col")
    xla = models.build_model(spec, seed=0, kernels="xla")
    # same parameter tree, names and values
    assert models.param_paths(fast) == models.param_paths(xla)
    _assert_close(nnx.state(fast, nnx.Param), nnx.state(xla, nnx.Param), rtol=0)
    # F(4, 3) rounds to ~5e-6 of the largest value (10x im2col), batch norm amplifies
    rtol = 1e-4 if smooth else 2e-5
    _assert_close(_logits_and_grads(fast, x), _logits_and_grads(xla, x), rtol)


def test_fast_kernels_are_used_and_levers_can_be_forced():
    spec = models.preset("keras_mnist")
    model = models.build_model(spec, seed=0, kernels="fast")
    assert model.conv_0.impl == "im2col" and model.pool_1.kernels == "fast"
    assert model.conv_2.impl == "winograd"  # 3x3, stride 1, 32 input channels
    assert model.crop and not model.fuse_relu_pool  # fusion only pays next to XLA convs
    # conv_2 (13x13 -> 11x11) feeds a 2x2 pool that never reads row/col 10
    plans = dict(model.pairs)
    assert plans[2].dead == (1, 1) and plans[0].is_noop
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 28, 28, 1)), jnp.float32)
    want = _logits_and_grads(models.build_model(spec, seed=0, kernels="xla"), x)
    for conv, pool, fuse, crop in [
        ("xla", "fast", False, False),
        ("xla", "fast", True, False),
        ("xla", "xla", True, True),
        ("im2col", "xla", False, True),
        ("winograd", "fast", False, True),
    ]:
        layers.set_kernels(model, conv=conv, pool=pool, fuse_relu_pool=fuse, crop=crop)
        assert model.conv_2.impl == conv and model.pool_3.kernels == pool
        _assert_close(_logits_and_grads(model, x), want)


def test_xla_kernels_keep_plain_flax_and_auto_follows_backend():
    xla = models.build_model(models.preset("keras_mnist"), kernels="xla")
    assert xla.conv_0.impl == "xla" and xla.pool_1.kernels == "xla"
    assert not xla.crop and not xla.fuse_relu_pool
    auto = models.build_model(models.preset("keras_mnist"), kernels="auto")
    cpu = jax.default_backend() == "cpu"
    assert auto.conv_0.impl == ("im2col" if cpu else "xla")
    assert auto.conv_2.impl == ("winograd" if cpu else "xla")


def test_train_rolls_its_steps_unless_an_xla_convolution_runs_on_cpu():
    """XLA:CPU's lax.conv is slow in a loop body (jax-ml/jax#12868): those unroll."""
    fast = models.build_model(models.preset("keras_mnist"), kernels="fast")
    assert not layers.runs_xla_convolution(fast)
    assert layers.runs_xla_convolution(
        models.build_model(models.preset("keras_mnist"), kernels="xla")
    )
    config = RunConfig()
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=1, epochs=1)
    assert train.Steps(fast, nnx.Optimizer(fast, tx, wrt=nnx.Param), config).rolled
    fast.conv_2.impl = "xla"  # one XLA convolution is enough
    assert layers.runs_xla_convolution(fast)
    steps = train.Steps(fast, nnx.Optimizer(fast, tx, wrt=nnx.Param), config)
    assert steps.rolled == (jax.default_backend() != "cpu")
