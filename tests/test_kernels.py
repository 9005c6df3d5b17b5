"""Every kernel implementation equals the jax.lax reference, forward and gradient; the
kernel plan per backend and input shape."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jaxcnn import kernels, layers, models, shapes
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ConvSpec,
    DenseSpec,
    GlobalPoolSpec,
    ModelSpec,
    PoolSpec,
    ResidualSpec,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
RTOL = 1e-5


def _close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _assert_same(fn_fast, fn_ref, args, seed):
    """Values and vjps (same random cotangent) of two functions agree.

    Both run inside one jit: one compilation per example instead of one per eager op.
    """
    shape = jax.eval_shape(fn_ref, *args).shape
    ct = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)

    @jax.jit
    def both(args, ct):
        out = []
        for fn in (fn_fast, fn_ref):
            y, vjp = jax.vjp(fn, *args)
            out.append((y, vjp(ct)))
        return out

    (ya, ga), (yb, gb) = both(args, ct)
    _close(ya, yb)
    for a, b in zip(ga, gb, strict=True):
        _close(a, b)


def _tie_values(rng, shape, mode):
    """Inputs with many exact ties: small integers, or zeros after a ReLU."""
    if mode == "ints":
        return rng.integers(-2, 3, size=shape).astype(np.float32)
    if mode == "relu":
        return np.maximum(rng.normal(size=shape), 0).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32)


@st.composite
def conv_cases(draw, kernel=None, stride=None, dilation=None, max_size=10, max_cin=3):
    """Random conv shapes; `kernel`, `stride`, `dilation` fix those when given."""
    kh, kw = kernel or (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    sh, sw = stride or (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dh, dw = dilation or (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    ho = kernels.out_size(h, kh, sh, dh, pads[0])
    wo = kernels.out_size(w, kw, sw, dw, pads[1])
    assume(ho >= 1 and wo >= 1)
    n, cin, cout = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, max_cin)),
        draw(st.integers(1, 4)),
    )
    return dict(
        x_shape=(n, h, w, cin),
        w_shape=(kh, kw, cin, cout),
        stride=(sh, sw),
        padding=pads,
        dilation=(dh, dw),
        seed=draw(st.integers(0, 2**16)),
    )


@SETTINGS
@given(conv_cases(), st.sampled_from(["im2col", "winograd"]))
def test_conv2d_hand_written_impls_match_lax(case, impl):
    """Any kernel, stride, padding, dilation ("winograd" runs the convs it does not
    apply to as im2col)."""
    rng = np.random.default_rng(case["seed"])
    x = jnp.asarray(rng.normal(size=case["x_shape"]), jnp.float32)
    w = jnp.asarray(rng.normal(size=case["w_shape"]), jnp.float32)
    opts = dict(
        stride=case["stride"], padding=case["padding"], dilation=case["dilation"]
    )

    def fast(x, w):
        return kernels.conv2d(x, w, impl=impl, **opts)

    _assert_same(fast, functools.partial(_lax_conv, **opts), (x, w), case["seed"])


def _lax_conv(x, w, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    return jax.lax.conv_general_dilated(
        x,
        w,
        stride,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@SETTINGS
@given(
    conv_cases(kernel=(3, 3), stride=(1, 1), dilation=(1, 1), max_size=14, max_cin=5),
    st.sampled_from([2, 4]),
)
def test_winograd_matches_lax_for_both_tile_sizes(case, m):
    """F(2, 3) and F(4, 3) on every 3x3 stride-1 shape: partial last tiles, any padding."""
    rng = np.random.default_rng(case["seed"])
    x = jnp.asarray(rng.normal(size=case["x_shape"]), jnp.float32)
    w = jnp.asarray(rng.normal(size=case["w_shape"]), jnp.float32)
    pads = case["padding"]

    def fast(x, w):
        return kernels.conv._conv_winograd(x, w, pads, m)

    _assert_same(fast, functools.partial(_lax_conv, padding=pads), (x, w), case["seed"])


def test_winograd_tile_takes_the_fewest_multiplies():
    assert kernels.winograd_tile((10, 10)) == 4  # 9 tiles x 36 < 25 tiles x 16
    assert kernels.winograd_tile((32, 32)) == 4
    assert kernels.winograd_tile((2, 2)) == 2  # one 4x4 tile instead of one 6x6
    assert kernels.winograd_tile((2, 6)) == 2
    assert kernels.winograd_tile((32, 32), jnp.bfloat16) == 2  # F(4, 3) errs too much


def test_winograd_applies_to_3x3_stride_1_float32_float64_bfloat16():
    assert kernels.winograd_applies(3, 1, 1)
    assert kernels.winograd_applies((3, 3), (1, 1), (1, 1), 1, jnp.float64)
    assert kernels.winograd_applies(3, 1, 1, 1, jnp.bfloat16)
    assert not kernels.winograd_applies((3, 5), 1, 1)
    assert not kernels.winograd_applies(3, 2, 1)
    assert not kernels.winograd_applies(3, 1, 2)
    assert not kernels.winograd_applies(3, 1, 1, groups=2)
    assert not kernels.winograd_applies(3, 1, 1, 1, jnp.float16)


def test_winograd_leaves_float16_to_im2col():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float16)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float16)
    pads = ((1, 1), (1, 1))
    got = kernels.conv2d(x, w, padding=pads, impl="winograd")
    want = kernels.conv2d(x, w, padding=pads, impl="im2col")
    assert got.dtype == jnp.float32  # accumulated in float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("impl", ["im2col", "winograd"])
def test_conv2d_jits_and_matches_xla_on_the_keras_mnist_layer(impl):
    """The exact layer of the Keras MNIST convnet, under jit and grad."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 13, 13, 32)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 32, 64)), jnp.float32) * 0.1

    def loss(impl):
        def f(x, w):
            y = kernels.conv2d(x, w, padding=((0, 0), (0, 0)), impl=impl)
            return jnp.sum(jnp.tanh(y))

        return jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)

    for a, b in zip(loss(impl), loss("xla"), strict=True):
        _close(a, b)


def test_conv2d_groups_fall_back_to_xla():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 5, 5, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
    pads = ((1, 1), (1, 1))
    got = kernels.conv2d(x, w, padding=pads, groups=2, impl="im2col")
    want = kernels.conv2d(x, w, padding=pads, groups=2, impl="xla")
    _close(got, want)
    assert got.shape == (1, 5, 5, 6)


def test_bad_impl_names_raise():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="im2col"):
        kernels.conv2d(x, jnp.zeros((1, 1, 1, 1)), impl="cudnn")
    with pytest.raises(ValueError, match="fast"):
        kernels.pool2d(x, impl="cudnn")
    with pytest.raises(ValueError, match="geometric"):
        kernels.pool2d(x, kind="median")


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if draw(st.booleans()):  # tiling windows (stride == window) take their own path
        sh, sw = kh, kw
    # padding smaller than the window, so no window is made of padding only
    pads = (
        (draw(st.integers(0, kh - 1)), draw(st.integers(0, kh - 1))),
        (draw(st.integers(0, kw - 1)), draw(st.integers(0, kw - 1))),
    )
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(kernels.out_size(h, kh, sh, 1, pads[0]) >= 1)
    assume(kernels.out_size(w, kw, sw, 1, pads[1]) >= 1)
    return dict(
        shape=(draw(st.integers(1, 2)), h, w, draw(st.integers(1, 3))),
        window=(kh, kw),
        stride=(sh, sw),
        padding=pads,
        values=draw(st.sampled_from(["ints", "relu", "normal"])),
        seed=draw(st.integers(0, 2**16)),
    )


def _reference_pool(x, kind, window, stride, padding, p=2.0):
    """flax/lax reference of each kind (Keras conventions: avg excludes padding)."""
    if kind == "max":
        return nnx.max_pool(x, window, stride, padding)
    if kind == "sum":
        return nnx.pool(x, 0.0, jax.lax.add, window, stride, padding)

    def mean(v):
        return nnx.avg_pool(v, window, stride, padding, count_include_pad=False)

    if kind == "avg":
        return mean(x)
    if kind == "lp":
        return mean(jnp.abs(x) ** p) ** (1 / p)
    if kind == "geometric":  # positive inputs only
        return jnp.exp(mean(jnp.log(x)))
    return 1.0 / mean(1.0 / x)


@SETTINGS
@given(pool_cases())
def test_max_pool_fast_matches_lax_including_ties(case):
    x = jnp.asarray(
        _tie_values(np.random.default_rng(case["seed"]), case["shape"], case["values"])
    )
    opts = dict(window=case["window"], stride=case["stride"], padding=case["padding"])

    def fast(x):
        return kernels.pool2d(x, kind="max", impl="fast", **opts)

    def ref(x):
        return _reference_pool(x, "max", **opts)

    _assert_same(fast, ref, (x,), case["seed"])
    _assert_same(
        lambda x: kernels.pool2d(x, kind="max", impl="xla", **opts),
        ref,
        (x,),
        case["seed"],
    )


@SETTINGS
@given(pool_cases())
def test_relu_max_pool_matches_relu_then_lax_pool(case):
    x = jnp.asarray(
        _tie_values(np.random.default_rng(case["seed"]), case["shape"], case["values"])
    )
    opts = dict(window=case["window"], stride=case["stride"], padding=case["padding"])

    def fused(x):
        return kernels.relu_max_pool(x, impl="fast", **opts)

    def ref(x):
        return _reference_pool(jax.nn.relu(x), "max", **opts)

    _assert_same(fused, ref, (x,), case["seed"])


def test_max_pool_tie_gradient_goes_to_first_maximum():
    """Hand-computed: a 2x2 window of equal values sends the whole gradient to [0, 0]."""
    x = jnp.ones((1, 2, 2, 1))
    g = jax.grad(lambda x: kernels.pool2d(x, kind="max", window=2, impl="fast").sum())(
        x
    )
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    # after a ReLU every value is 0: no gradient at all (relu'(0) = 0 in JAX)
    g = jax.grad(lambda x: kernels.relu_max_pool(x - 1.0, window=2).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), np.zeros((1, 2, 2, 1)))


@SETTINGS
@given(pool_cases(), st.sampled_from(["avg", "sum", "lp", "geometric", "harmonic"]))
def test_other_pools_match_reduce_window(case, kind):
    rng = np.random.default_rng(case["seed"])
    # positive inputs: lp/geometric/harmonic are smooth there
    x = jnp.asarray(rng.uniform(0.1, 2.0, size=case["shape"]), jnp.float32)
    opts = dict(window=case["window"], stride=case["stride"], padding=case["padding"])
    for impl in ("fast", "xla"):
        _assert_same(
            lambda x, impl=impl: kernels.pool2d(x, kind=kind, impl=impl, p=3.0, **opts),
            lambda x: _reference_pool(x, kind, p=3.0, **opts),
            (x,),
            case["seed"],
        )


def test_avg_pool_hand_values():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    y = kernels.pool2d(x, kind="avg", window=2, impl="fast")
    np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    # padding is excluded from the count: the corner window holds x[0, 0] only
    y = kernels.pool2d(x, kind="avg", window=2, padding=((1, 0), (1, 0)), impl="fast")
    assert float(y[0, 0, 0, 0]) == 0.0 and float(y[0, 0, 1, 0]) == 1.5


# --------------------------------------------------------------------------- every kind
def _numpy_pool(x, kind, window, stride, pads, p=2.0):
    """Direct reference: pad with NaN, then reduce each window over its real cells only."""
    (top, bottom), (left, right) = pads
    xp = np.pad(
        x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=np.nan
    )
    kh, kw = window
    sh, sw = stride
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :].reshape(
                x.shape[0], -1, x.shape[3]
            )
            real = ~np.isnan(win)
            n = real.sum(axis=1)
            w0 = np.where(real, win, 0.0)
            clamped = np.where(real, np.maximum(w0, 0.0), 1.0)
            has_zero = (clamped == 0).any(axis=1)
            if kind == "max":
                out[:, i, j] = np.nanmax(win, axis=1)
            elif kind == "avg":
                out[:, i, j] = w0.sum(axis=1) / n
            elif kind == "sum":
                out[:, i, j] = w0.sum(axis=1)
            elif kind == "lp":
                out[:, i, j] = ((np.abs(w0) ** p * real).sum(axis=1) / n) ** (1 / p)
            elif kind == "geometric":
                with np.errstate(divide="ignore"):
                    mean_log = (np.log(clamped) * real).sum(axis=1) / n
                out[:, i, j] = np.where(has_zero, 0.0, np.exp(mean_log))
            elif kind == "harmonic":
                with np.errstate(divide="ignore"):
                    inv = ((1.0 / clamped) * real).sum(axis=1)
                out[:, i, j] = np.where(has_zero, 0.0, n / inv)
    return out


POOL_KINDS = ["max", "avg", "sum", "lp", "geometric", "harmonic"]
POOL_CASES = [
    # (input H, W, padding, window, stride)
    ((4, 4), "valid", (2, 2), (2, 2)),
    ((5, 5), "same", (2, 2), (2, 2)),  # odd total: extra cell bottom/right
    ((5, 4), "same", (3, 3), (1, 1)),
    ((5, 5), (1, 1), (3, 3), (2, 2)),
    ((6, 5), (1, 0), (2, 3), (2, 1)),
]


@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("hw, padding, window, stride", POOL_CASES)
def test_every_pool_kind_and_impl_matches_numpy(kind, hw, padding, window, stride):
    """The one pooling implementation, both impls and the Pool layer that calls it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *hw, 3)).astype(np.float32)
    if kind in ("geometric", "harmonic"):
        x = np.abs(x) + 0.1  # their domain is x >= 0; some exact zeros and negatives
        x[0, 0, 0] = 0.0
        x[1, -1, -1] = -1.0
    p = 3.0 if kind == "lp" else 2.0
    pads = shapes.resolve_padding(padding, hw, window, stride)
    want = _numpy_pool(x.astype(np.float64), kind, window, stride, pads, p)
    spec = PoolSpec(pool=kind, window=window, stride=stride, padding=padding, p=p)
    got = {
        impl: kernels.pool2d(
            jnp.asarray(x),
            kind=kind,
            window=window,
            stride=stride,
            padding=pads,
            impl=impl,
            p=p,
        )
        for impl in kernels.POOL_IMPLS
    }
    got["layer"] = layers.Pool(spec)(jnp.asarray(x))
    for name, y in got.items():
        assert y.shape == want.shape, name
        np.testing.assert_allclose(np.asarray(y), want, rtol=2e-5, atol=1e-6)


def _pool_one(x, kind, p=2.0, impl="xla"):
    return float(kernels.pool2d(x, kind=kind, window=2, impl=impl, p=p)[0, 0, 0, 0])


@pytest.mark.parametrize("impl", ["xla", "fast"])
def test_pooling_hand_values(impl):
    x = jnp.array([1.0, 2.0, 4.0, 8.0]).reshape(1, 2, 2, 1)
    assert _pool_one(x, "max", impl=impl) == 8.0
    assert _pool_one(x, "avg", impl=impl) == 3.75
    assert _pool_one(x, "sum", impl=impl) == 15.0
    assert _pool_one(x, "geometric", impl=impl) == pytest.approx(
        64 ** (1 / 4), rel=1e-5
    )  # (1*2*4*8)^(1/4)
    assert _pool_one(x, "harmonic", impl=impl) == pytest.approx(
        4 / (1 + 1 / 2 + 1 / 4 + 1 / 8), rel=1e-5
    )
    assert _pool_one(x, "lp", 1.0, impl) == pytest.approx(3.75)
    assert _pool_one(x, "lp", 2.0, impl) == pytest.approx(
        math.sqrt((1 + 4 + 16 + 64) / 4), rel=1e-6
    )


@pytest.mark.parametrize("impl", ["xla", "fast"])
@pytest.mark.parametrize("kind", ["geometric", "harmonic"])
def test_geometric_and_harmonic_pool_a_zero_or_negative_to_exactly_zero(kind, impl):
    """A window holding a 0 (or a negative input, clamped to 0) pools to 0, the limit of
    both means, and passes no gradient; the other windows keep their mean and gradient."""
    x = jnp.array([[2.0, 0.0, 1.0, 4.0], [8.0, 3.0, 2.0, 2.0]]).reshape(1, 2, 4, 1)
    for zero in (0.0, -3.0):
        v = x.at[0, 0, 1, 0].set(zero)

        def pooled(v):
            return kernels.pool2d(v, kind=kind, window=2, impl=impl)

        y = np.asarray(pooled(v))[0, 0, :, 0]
        assert y[0] == 0.0
        want = 2.0 if kind == "geometric" else 4 / (1 + 1 / 4 + 1 / 2 + 1 / 2)
        assert y[1] == pytest.approx(want, rel=1e-6)
        grad = np.asarray(jax.grad(lambda v: pooled(v).sum())(v))[0, :, :, 0]
        np.testing.assert_array_equal(grad[:, :2], np.zeros((2, 2)))
        # d/dx_i of (prod x)^(1/n) is y / (n x_i); of n / sum(1/x) it is y^2 / (n x_i^2)
        right = np.asarray(v)[0, :, 2:, 0]
        if kind == "geometric":
            expected = want / (4 * right)
        else:
            expected = want**2 / (4 * right**2)
        np.testing.assert_allclose(grad[:, 2:], expected, rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "fast"])
@pytest.mark.parametrize("kind", ["lp", "geometric", "harmonic", "avg", "sum", "max"])
def test_pooling_gradients_are_finite_at_zero(kind, impl):
    x = jnp.zeros((1, 4, 4, 2))
    grad = jax.grad(lambda v: kernels.pool2d(v, kind=kind, window=2, impl=impl).sum())(
        x
    )
    assert bool(jnp.all(jnp.isfinite(grad)))


# --------------------------------------------------------------------------- crop
def test_dead_border_hand_values():
    assert kernels.dead_border(11, 2, 2, (0, 0)) == 1  # 11 -> 5 windows read 10 rows
    assert kernels.dead_border(26, 2, 2, (0, 0)) == 0
    assert kernels.dead_border(10, 3, 3, (0, 0)) == 1
    assert kernels.dead_border(10, 3, 3, (0, 2)) == 0  # padding makes a 4th window
    # Keras MNIST convnet, second conv: 13x13 input, 3x3 valid -> 11x11 -> pool 5x5.
    plan = kernels.border_crop(
        (13, 13),
        kernel=(3, 3),
        stride=(1, 1),
        dilation=(1, 1),
        padding=((0, 0), (0, 0)),
        pool_window=(2, 2),
        pool_stride=(2, 2),
        pool_padding=((0, 0), (0, 0)),
    )
    assert plan.in_keep == (12, 12) and plan.dead == (1, 1) and not plan.is_noop


@st.composite
def crop_cases(draw):
    case = draw(conv_cases())
    pw, ps = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pp = ((draw(st.integers(0, pw - 1)), draw(st.integers(0, pw - 1))),) * 2
    n, h, w, _ = case["x_shape"]
    kh, kw, _, _ = case["w_shape"]
    ho = kernels.out_size(
        h, kh, case["stride"][0], case["dilation"][0], case["padding"][0]
    )
    wo = kernels.out_size(
        w, kw, case["stride"][1], case["dilation"][1], case["padding"][1]
    )
    assume(kernels.out_size(ho, pw, ps, 1, pp[0]) >= 1)
    assume(kernels.out_size(wo, pw, ps, 1, pp[1]) >= 1)
    case.update(pool_window=(pw, pw), pool_stride=(ps, ps), pool_padding=pp)
    return case


@settings(max_examples=30, deadline=None, derandomize=True)
@given(crop_cases())
def test_border_crop_gives_identical_outputs_and_gradients(case):
    rng = np.random.default_rng(case["seed"])
    x = jnp.asarray(rng.normal(size=case["x_shape"]), jnp.float32)
    w = jnp.asarray(rng.normal(size=case["w_shape"]), jnp.float32)
    conv = dict(stride=case["stride"], dilation=case["dilation"])
    pool = dict(window=case["pool_window"], stride=case["pool_stride"])
    plan = kernels.border_crop(
        case["x_shape"][1:3],
        kernel=case["w_shape"][:2],
        padding=case["padding"],
        pool_window=case["pool_window"],
        pool_stride=case["pool_stride"],
        pool_padding=case["pool_padding"],
        **conv,
    )

    def full(x, w):
        y = kernels.conv2d(x, w, padding=case["padding"], impl="xla", **conv)
        return kernels.relu_max_pool(
            y, padding=case["pool_padding"], impl="xla", **pool
        )

    def cropped(x, w):
        xc = x[:, : plan.in_keep[0], : plan.in_keep[1]]
        y = kernels.conv2d(xc, w, padding=plan.conv_padding, impl="im2col", **conv)
        return kernels.relu_max_pool(y, padding=plan.pool_padding, impl="fast", **pool)

    _assert_same(cropped, full, (x, w), case["seed"])


def test_choose_impl_per_backend():
    assert kernels.choose_impl("cpu", "conv") == "im2col"
    assert kernels.choose_impl("cpu", "conv", groups=2) == "xla"
    conv3 = dict(kernel=(3, 3), stride=1, dilation=1)
    assert kernels.choose_impl("cpu", "conv", in_channels=16, **conv3) == "winograd"
    # few input channels: the tile transforms cost more than the multiplies saved
    assert kernels.choose_impl("cpu", "conv", in_channels=3, **conv3) == "im2col"
    strided = dict(conv3, stride=2)
    assert kernels.choose_impl("cpu", "conv", in_channels=64, **strided) == "im2col"
    assert kernels.choose_impl("cpu", "pool", kind="max") == "fast"
    # the fast path is a max-pool gradient: the other kinds run flax's pools
    assert kernels.choose_impl("cpu", "pool", kind="avg") == "xla"
    # a forward pass only: Winograd from 64 input channels, XLA's conv below; im2col
    # from 16 input channels, XLA's conv below; XLA's pool where windows tile
    forward = dict(forward_only=True)
    assert kernels.choose_impl("cpu", "conv", **forward) == "xla"
    for channels, impl in ((3, "xla"), (32, "xla"), (64, "winograd")):
        got = kernels.choose_impl(
            "cpu", "conv", in_channels=channels, **conv3, **forward
        )
        assert got == impl
    for channels, impl in ((3, "xla"), (16, "im2col"), (64, "im2col")):
        got = kernels.choose_impl(
            "cpu", "conv", in_channels=channels, **strided, **forward
        )
        assert got == impl
    pool = dict(kind="max", window=(2, 2), **forward)
    assert kernels.choose_impl("cpu", "pool", **pool) == "xla"
    assert kernels.choose_impl("cpu", "pool", **pool, pool_stride=2) == "xla"
    assert kernels.choose_impl("cpu", "pool", **pool, pool_stride=1) == "fast"
    assert kernels.choose_impl("cpu", "pool", **pool, padded=True) == "fast"
    assert kernels.choose_impl("cpu", "pool", kind="max", window=2) == "fast"
    assert kernels.choose_impl("gpu", "pool", **pool, pool_stride=1) == "xla"
    for backend in ("gpu", "cuda", "rocm", "tpu"):
        assert kernels.choose_impl(backend, "conv") == "xla"
        assert kernels.choose_impl(backend, "conv", in_channels=64, **conv3) == "xla"
        assert kernels.choose_impl(backend, "pool") == "xla"


# --------------------------------------------------------------------------- plan
def _plan(spec, kernels_setting="auto", backend="cpu", input_shape=None, **overrides):
    choice = kernels.KernelChoice(kernels=kernels_setting, **overrides)
    shape = spec.input_shape if input_shape is None else input_shape
    return kernels.model_plan(spec, tuple(shape), choice, backend)


def test_a_single_image_forward_pass_plans_xla_kernels_on_cpu():
    """At batch 1 a forward-only pass with "auto" kernels runs XLA's convs and pools on
    CPU; a second image, a backward pass, "fast" and overrides keep their plans."""
    spec = models.preset("keras_mnist")

    def impls(batch, backend="cpu", **choice):
        plan = kernels.input_plan(
            spec, (batch, 28, 28, 1), kernels.KernelChoice(**choice), backend
        )
        return [p.conv or p.pool for p in plan.walk() if p.conv or p.pool]

    xla = ["xla"] * 5
    assert impls(1, forward_only=True) == xla
    eval_plan = ["xla", "xla", "xla", "xla", "winograd"]
    assert impls(2, forward_only=True) == eval_plan
    training = ["im2col", "fast", "winograd", "fast", "winograd"]
    assert impls(1) == impls(2) == training
    assert impls(1, kernels="fast", forward_only=True) == training
    assert impls(1, forward_only=True, conv="im2col") == [
        "im2col", "xla", "im2col", "xla", "im2col"
    ]
    assert impls(1, "gpu", forward_only=True) == xla


def test_plan_per_backend_for_keras_mnist():
    spec = models.preset("keras_mnist")
    cpu = _plan(spec)
    convs = [cpu.layer(f"conv_{i}").conv for i in (0, 2, 4)]
    assert convs == ["im2col", "winograd", "winograd"]  # 1 and 32, 64 input channels
    assert cpu.layer("pool_1").pool == cpu.layer("pool_3").pool == "fast"
    # conv_2 (13x13 -> 11x11) feeds a 2x2 pool that never reads row/col 10
    crop = cpu.layer("conv_2").crop
    assert crop.dead == (1, 1) and crop.in_keep == (12, 12)
    assert cpu.layer("conv_0").crop is None  # 26x26 pools without a remainder
    assert not any(p.fuse_relu_pool for p in cpu.walk())  # fusion is opt-in
    assert cpu.rolls_steps
    assert _plan(spec, "fast", backend="gpu").layers == cpu.layers
    for backend in ("gpu", "tpu"):
        plan = _plan(spec, backend=backend)
        assert {p.conv for p in plan.walk() if p.conv} == {"xla"}
        assert {p.pool for p in plan.walk() if p.pool} == {"xla"}
        assert all(p.crop is None for p in plan.walk())
        assert plan.rolls_steps  # XLA convs are slow in a loop body on CPU only
    xla = _plan(spec, "xla")
    assert {p.conv for p in xla.walk() if p.conv} == {"xla"}
    assert all(p.crop is None for p in xla.walk())
    assert not xla.rolls_steps


def test_plan_follows_the_actual_input_shape():
    spec = ModelSpec(
        (28, 28, 1),
        3,
        (
            ConvSpec(filters=4, kernel=3, activation="relu"),
            PoolSpec(window=2),
            ConvSpec(filters=4, kernel=3, stride=2, padding="same"),
            GlobalPoolSpec(),
            DenseSpec(units=3),
        ),
    )
    built, odd = _plan(spec), _plan(spec, input_shape=(29, 31, 1))
    assert built.layer("conv_0").crop is None  # 26x26: no remainder
    assert odd.layer("conv_0").crop.dead == (1, 1)  # 27x29: one row/col unread
    # "same" padding of a stride-2 conv depends on the size it sees: 13 vs 14 rows
    assert built.layer("conv_2").padding == ((1, 1), (1, 1))
    assert odd.layer("conv_2").padding == ((1, 1), (0, 1))
    assert odd.layer("conv_2").input_shape == (13, 14, 4)
    assert kernels.model_plan(spec, (28, 28, 1)) is kernels.model_plan(
        spec, (28, 28, 1)
    )


def test_plan_of_grouped_convs_and_residual_blocks():
    spec = models.resnet_cifar((8, 8, 3), blocks_per_stage=1)
    cpu = _plan(spec)
    assert cpu.layer("residual_3").proj is None  # 8x8x16 -> 8x8x16: identity skip
    assert cpu.layer("residual_4/proj").conv == "im2col"  # 1x1, stride 2
    assert cpu.layer("residual_4/conv_0").conv == "im2col"  # 3x3, stride 2
    assert cpu.layer("residual_4/conv_3").conv == "winograd"
    assert cpu.rolls_steps
    grouped = ModelSpec(
        (6, 6, 4),
        2,
        (ConvSpec(filters=4, kernel=3, groups=2), GlobalPoolSpec(), DenseSpec(units=2)),
    )
    assert _plan(grouped).layer("conv_0").conv == "xla"  # even with fast kernels
    assert _plan(grouped, "fast", conv="im2col").layer("conv_0").conv == "xla"
    assert not _plan(grouped).rolls_steps
    assert _plan(grouped, backend="gpu").rolls_steps


def test_plan_overrides():
    spec = models.preset("keras_mnist")
    plan = _plan(spec, "xla", conv="winograd", pool="fast", crop=True)
    assert plan.layer("conv_0").conv == "winograd"  # 3x3 stride 1
    assert plan.layer("pool_1").pool == "fast"
    assert plan.layer("conv_2").crop is not None
    strided = models.resnet_cifar((8, 8, 3), blocks_per_stage=1)
    # Winograd does not apply to a strided conv: it runs as im2col
    assert _plan(strided, conv="winograd").layer("residual_4/conv_0").conv == "im2col"
    layer_first = _plan(spec, conv="im2col", conv_layers=(("conv_2", "xla"),))
    assert layer_first.layer("conv_2").conv == "xla"
    assert layer_first.layer("conv_4").conv == "im2col"
    assert not layer_first.rolls_steps  # one XLA convolution on CPU is enough
    assert all(p.crop is None for p in _plan(spec, crop=False).walk())
    fused = _plan(spec, fuse_relu_pool=True)
    assert fused.layer("conv_0").fuse_relu_pool and fused.layer("pool_1").fuse_relu_pool
    assert not fused.layer("conv_4").fuse_relu_pool  # no pool follows it
    lenet = _plan(models.preset("lenet5"), fuse_relu_pool=True)  # tanh, avg pools
    assert not any(p.fuse_relu_pool for p in lenet.walk())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kernels", "cuda", "kernels must be one of auto, xla, fast; got 'cuda'"),
        ("conv", "cudnn", "conv must be None or one of xla, im2col, winograd"),
        ("pool", "slow", "pool must be None or one of xla, fast; got 'slow'"),
        ("crop", "yes", "crop must be None, True or False; got 'yes'"),
        ("conv_layers", (("conv_0", "gemm"),), "conv_layers entries must be"),
    ],
)
def test_kernel_choice_rejects_bad_values(field, value, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        kernels.KernelChoice(**{field: value})


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            (28, 28, 1),
            "model input must be [batch, H, W, 1] float images; got shape "
            "(28, 28, 1) (unbatched: add a batch axis, x[None])",
        ),
        (
            (2, 28, 28, 3),
            "model input must be [batch, H, W, 1] float images; got shape "
            "(2, 28, 28, 3): 3 channels, but the model was built for 1 (input 28x28x1)",
        ),
        (
            (2, 32, 32, 1),
            "layer 6 (dense): flatten gives 1024 features at input 32x32x1 but the "
            "layer was built for 576 features (input 28x28x1)",
        ),
        (
            (2, 8, 8, 1),
            "model input 8x8x1 does not fit this model (built for input 28x28x1): "
            "layer 3 (max pool 2x2 valid): input 1x1x64 is smaller than the 2x2 window",
        ),
    ],
)
def test_input_plan_errors_name_the_layer_and_sizes(shape, message):
    spec = models.preset("keras_mnist")
    with pytest.raises(SpecError, match=re.escape(message)):
        kernels.input_plan(spec, shape)


def test_input_plan_error_for_a_skip_path_that_changes():
    block = ResidualSpec(
        layers=(ConvSpec(filters=2, kernel=3, stride=2, padding="same"),)
    )
    spec = ModelSpec((4, 4, 2), 2, (block, GlobalPoolSpec(), DenseSpec(units=2)))
    assert _plan(spec).layer("residual_0").proj is not None  # 4x4 -> 2x2
    with pytest.raises(SpecError, match=re.escape("layer 0 (residual): the block")):
        kernels.input_plan(spec, (1, 1, 1, 2))  # 1x1 -> 1x1: an identity skip
