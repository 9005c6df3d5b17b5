"""Every kernel implementation equals the jax.lax reference, forward and gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jaxcnn import kernels

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
        return kernels._conv_winograd(x, w, pads, m)

    _assert_same(fast, functools.partial(_lax_conv, padding=pads), (x, w), case["seed"])


def test_winograd_tile_takes_the_fewest_multiplies():
    assert kernels.winograd_tile((10, 10)) == 4  # 9 tiles x 36 < 25 tiles x 16
    assert kernels.winograd_tile((32, 32)) == 4
    assert kernels.winograd_tile((2, 2)) == 2  # one 4x4 tile instead of one 6x6
    assert kernels.winograd_tile((2, 6)) == 2


def test_winograd_applies_to_3x3_stride_1_float32_only():
    assert kernels.winograd_applies(3, 1, 1)
    assert kernels.winograd_applies((3, 3), (1, 1), (1, 1), 1, jnp.float64)
    assert not kernels.winograd_applies((3, 5), 1, 1)
    assert not kernels.winograd_applies(3, 2, 1)
    assert not kernels.winograd_applies(3, 1, 2)
    assert not kernels.winograd_applies(3, 1, 1, groups=2)
    assert not kernels.winograd_applies(3, 1, 1, 1, jnp.bfloat16)


def test_winograd_leaves_bfloat16_to_im2col():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    got = kernels.conv2d(x, w, padding=pads, impl="winograd")
    want = kernels.conv2d(x, w, padding=pads, impl="im2col")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(got, np.float32), np.asarray(want, np.float32)
    )


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
    clamped = jnp.maximum(x, 0.0) + kernels.POSITIVE_EPS
    if kind == "geometric":
        return jnp.exp(mean(jnp.log(clamped)))
    return 1.0 / mean(1.0 / clamped)


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
    for backend in ("gpu", "cuda", "rocm", "tpu"):
        assert kernels.choose_impl(backend, "conv") == "xla"
        assert kernels.choose_impl(backend, "conv", in_channels=64, **conv3) == "xla"
        assert kernels.choose_impl(backend, "pool") == "xla"
