"""NNX layers: padding conventions, conv init, residual blocks, and static == real shapes."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jaxcnn import layers, models, shapes
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ActivationSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    GlobalPoolSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
    ResidualSpec,
)

# Pooling math (every kind, both implementations, the Pool layer) is in test_kernels.py.


# --------------------------------------------------------------------------- conv / dense
def test_conv_same_padding_puts_the_extra_pixel_bottom_right():
    # 4x4 input, 3x3 kernel, stride 2, 'same': total pad 1 -> (0 top, 1 bottom)
    spec = ConvSpec(filters=1, kernel=3, stride=2, padding="same", use_bias=False)
    conv = layers.Conv(spec, (4, 4, 1), rngs=nnx.Rngs(0))
    conv.kernel.value = jnp.ones((3, 3, 1, 1))
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    y = np.asarray(conv(x))[0, :, :, 0]
    xp = np.pad(np.arange(16.0).reshape(4, 4), ((0, 1), (0, 1)))
    want = np.array([[xp[i : i + 3, j : j + 3].sum() for j in (0, 2)] for i in (0, 2)])
    np.testing.assert_allclose(y, want)


@pytest.mark.parametrize(
    "kernel, stride, cin, filters",
    [(3, 1, 3, 64), (5, 2, 8, 6), (1, 1, 16, 32), ((7, 1), 1, 2, 3)],
)
def test_conv_kernel_init_is_nnx_convs_default_bit_for_bit(
    kernel, stride, cin, filters
):
    spec = ConvSpec(filters=filters, kernel=kernel, stride=stride)
    ours = layers.Conv(spec, (9, 9, cin), rngs=nnx.Rngs(3)).kernel[...]
    size = (kernel, kernel) if isinstance(kernel, int) else kernel
    theirs = nnx.Conv(cin, filters, size, stride, rngs=nnx.Rngs(3)).kernel[...]
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_conv_and_dense_apply_their_activation():
    conv = layers.Conv(
        ConvSpec(filters=3, kernel=1, activation="relu"), (2, 2, 1), rngs=nnx.Rngs(0)
    )
    assert float(conv(-jnp.ones((1, 2, 2, 1))).min()) >= 0.0
    dense = layers.Dense(DenseSpec(units=4, activation="sigmoid"), 5, rngs=nnx.Rngs(0))
    y = dense(jnp.ones((2, 5)) * 100)
    assert y.shape == (2, 4) and bool(jnp.all((y >= 0) & (y <= 1)))


@pytest.mark.parametrize("name", list(layers.ACTIVATIONS))
def test_activation_layer(name):
    x = jnp.linspace(-2.0, 2.0, 8).reshape(1, 8)
    y = layers.Activation(ActivationSpec(name))(x)
    assert y.shape == x.shape
    assert float(y[0, -1]) == pytest.approx(
        float(layers.ACTIVATIONS[name](jnp.float32(2.0)))
    )


# --------------------------------------------------------------------------- static == real
def _conv():
    return st.builds(
        lambda f, k, s, pad, d, g, act: ConvSpec(
            filters=f * g,
            kernel=k,
            stride=s,
            padding=pad,
            dilation=d,
            groups=g,
            activation=act,
        ),
        st.integers(1, 4),
        st.tuples(st.integers(1, 3), st.integers(1, 3)),
        st.tuples(st.integers(1, 2), st.integers(1, 2)),
        st.sampled_from(["valid", "same", (1, 0), (0, 2)]),
        st.tuples(st.integers(1, 2), st.integers(1, 2)),
        st.sampled_from([1, 1, 2]),
        st.sampled_from(["relu", "identity", "tanh"]),
    )


def _pool():
    return st.builds(
        lambda kind, w, s, pad: PoolSpec(pool=kind, window=w, stride=s, padding=pad),
        st.sampled_from(["max", "avg", "sum", "lp", "geometric", "harmonic"]),
        st.tuples(st.integers(1, 3), st.integers(1, 3)),
        st.one_of(st.none(), st.tuples(st.integers(1, 2), st.integers(1, 2))),
        st.sampled_from(["valid", "same", (1, 1)]),
    )


def _simple():
    return st.one_of(
        _conv(),
        _pool(),
        st.builds(
            NormSpec,
            norm=st.sampled_from(["batch", "layer", "group"]),
            groups=st.sampled_from([1, 2]),
        ),
        st.builds(ActivationSpec, activation=st.sampled_from(["gelu", "silu"])),
        st.builds(DropoutSpec, rate=st.sampled_from([0.0, 0.3])),
    )


def _layer():
    residual = st.builds(
        lambda inner, act: ResidualSpec(layers=tuple(inner), activation=act),
        st.lists(_simple(), min_size=1, max_size=2),
        st.sampled_from(["identity", "relu"]),
    )
    return st.one_of(_simple(), _simple(), residual)


@st.composite
def valid_specs(draw):
    input_shape = (
        draw(st.integers(3, 12)),
        draw(st.integers(3, 12)),
        draw(st.sampled_from([1, 2, 4])),
    )
    body = draw(st.lists(_layer(), min_size=1, max_size=4))
    head = [
        draw(
            st.sampled_from(
                [FlattenSpec(), GlobalPoolSpec(pool="max"), GlobalPoolSpec(pool="avg")]
            )
        )
    ]
    if draw(st.booleans()):
        head.append(DenseSpec(units=draw(st.integers(1, 6)), activation="relu"))
    num_classes = draw(st.integers(2, 5))
    spec = ModelSpec(
        input_shape, num_classes, (*body, *head, DenseSpec(units=num_classes))
    )
    try:
        shapes.infer(spec)
    except SpecError:
        assume(False)
    return spec


def _eval_shape(module, shape):
    graphdef, state = nnx.split(module)

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    return jax.eval_shape(
        apply, state, jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    ).shape


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(valid_specs(), st.booleans())
def test_static_shapes_and_params_equal_the_real_module(spec, training):
    summary = shapes.infer(spec)
    model = nnx.eval_shape(lambda: models.build_model(spec))
    model.train() if training else model.eval()
    # layer by layer, including the layers inside residual blocks
    for name, module in model.named_layers():
        info = next(i for i in summary.layers if i.name == name)
        assert _eval_shape(module, info.input_shape) == (2, *info.output_shape), name
        if isinstance(module, layers.Residual):
            for inner_name, inner in module.named_layers():
                inner_info = next(
                    i for i in summary.layers if i.name == f"{name}/{inner_name}"
                )
                assert _eval_shape(inner, inner_info.input_shape) == (
                    2,
                    *inner_info.output_shape,
                )
    assert _eval_shape(model, spec.input_shape) == (2, spec.num_classes)
    # parameter tree: every row's count equals the real parameters under its path
    paths = models.param_paths(model)
    for info in summary.layers:
        prefix = info.name + "/"
        if info.spec.type == "residual":
            real = sum(
                math.prod(s) for p, s in paths.items() if p.startswith(prefix + "proj/")
            )
        else:
            real = sum(math.prod(s) for p, s in paths.items() if p.startswith(prefix))
        assert real == info.params, info.name
    assert sum(math.prod(s) for s in paths.values()) == summary.total_params
    stats = nnx.state(model, nnx.BatchStat)
    n_stats = sum(math.prod(v.shape) for v in jax.tree.leaves(stats))
    assert n_stats == summary.total_non_trainable_params


@functools.cache
def _residual_model():
    """Block 0 keeps 7x7x4 (identity skip); block 1 goes to 4x4x6 (1x1 stride-2 projection)."""
    keep = ResidualSpec(
        layers=(ConvSpec(filters=4, kernel=3, padding="same"),), activation="identity"
    )
    down = ResidualSpec(
        layers=(
            ConvSpec(filters=6, kernel=3, stride=2, padding="same"),
            NormSpec(norm="layer"),
        ),
        activation="relu",
    )
    spec = ModelSpec((7, 7, 4), 3, (keep, down, GlobalPoolSpec(), DenseSpec(units=3)))
    return models.build_model(spec)


def test_residual_forward_adds_the_skip():
    # A block whose body is a zero conv computes activation(0 + skip(x)) = x for identity skip.
    block = _residual_model().residual_0
    assert block.proj is None
    block.conv_0.kernel.value = jnp.zeros_like(block.conv_0.kernel.value)
    block.conv_0.bias.value = jnp.zeros_like(block.conv_0.bias.value)
    x = jax.random.normal(jax.random.key(1), (1, 7, 7, 4))
    np.testing.assert_allclose(np.asarray(block(x)), np.asarray(x), rtol=1e-6)


def test_residual_projection_is_a_strided_1x1_conv():
    block = _residual_model().residual_1
    proj = block.proj
    assert proj.kernel.value.shape == (1, 1, 4, 6)
    assert proj.strides == (2, 2)
    # zero body: the block is relu(proj(x)), a strided 1x1 conv of x
    block.conv_0.kernel.value = jnp.zeros_like(block.conv_0.kernel.value)
    block.norm_1.scale.value = jnp.zeros((6,))
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 4))
    want = np.einsum(
        "bhwc,cf->bhwf", np.asarray(x)[:, ::2, ::2], np.asarray(proj.kernel.value[0, 0])
    )
    want = np.maximum(want + np.asarray(proj.bias.value), 0)
    np.testing.assert_allclose(np.asarray(block(x)), want, rtol=1e-5, atol=1e-6)
