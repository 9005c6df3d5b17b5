"""Every JAX transformation of the hand-written kernels (jvp, linearize, jacfwd, grad of
jvp) equals the XLA kernels'; on real MNIST / Fashion-MNIST batches the default kernels
make the reference's decisions and give its gradients."""

import functools
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import _lax_conv, _tie_values, conv_cases, pool_cases

from jaxcnn import kernels, layers, models
from jaxcnn.spec import ConvSpec, DenseSpec, FlattenSpec, ModelSpec, PoolSpec

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
# float32 rounding of the tangents and of the Hessian-vector product (a product of
# two rounded factors), relative to the reference's largest entry
RTOL = 5e-5


def _close(actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _assert_same_derivatives(fast, ref, args, seed, hvp=True):
    """Values, jvp, linearize, jacfwd and the HVP (jvp of grad) of two functions agree,
    and the fast one's jacfwd equals its own jacrev (forward and reverse agree).

    `hvp=False` leaves the HVP out of the comparison (not out of the run): at exact
    max-pool ties XLA's forward-over-reverse rule of reduce_window max does not follow
    the first maximum that its own jvp and vjp pick; the fast pool's does.
    """
    rng = np.random.default_rng(seed)
    tangents = tuple(jnp.asarray(rng.normal(size=a.shape), a.dtype) for a in args)
    shape = jax.eval_shape(ref, *args).shape
    ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
    argnums = tuple(range(len(args)))

    def derivatives(fn, args, tangents):
        y, ty = jax.jvp(fn, args, tangents)
        _, lin = jax.linearize(fn, *args)

        def loss(*a):  # curved, so the HVP has a second-order term
            return jnp.sum(jnp.sin(fn(*a)) * ct)

        second = jax.jvp(jax.grad(loss, argnums), args, tangents)[1]
        jac = jax.jacfwd(fn, argnums)(*args)
        return y, ty, lin(*tangents), second if hvp else (), jac

    @jax.jit
    def both(args, tangents):
        rev = jax.jacrev(fast, tuple(range(len(args))))(*args)
        return derivatives(fast, args, tangents), derivatives(ref, args, tangents), rev

    got, want, rev = both(args, tangents)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(a, b)
    for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(got[-1]), strict=True):
        _close(a, b)


# --------------------------------------------------------------------------- conv
def _conv_args(case):
    rng = np.random.default_rng(case["seed"])
    x = jnp.asarray(rng.normal(size=case["x_shape"]), jnp.float32)
    w = jnp.asarray(rng.normal(size=case["w_shape"]), jnp.float32)
    return x, w


@SETTINGS
@given(conv_cases(max_size=7))
def test_im2col_derivatives_match_lax(case):
    opts = dict(
        stride=case["stride"], padding=case["padding"], dilation=case["dilation"]
    )

    def fast(x, w):
        return kernels.conv2d(x, w, impl="im2col", **opts)

    ref = functools.partial(_lax_conv, **opts)
    _assert_same_derivatives(fast, ref, _conv_args(case), case["seed"])


@pytest.mark.slow  # over 30 s in the default run on 2 cores
@settings(max_examples=6, deadline=None, derandomize=True)  # slow to compile
@given(
    conv_cases(kernel=(3, 3), stride=(1, 1), dilation=(1, 1), max_size=8, max_cin=3),
    st.sampled_from([2, 4]),
    st.booleans(),
)
def test_winograd_derivatives_match_lax_for_both_tiles(case, m, sparse):
    """F(2, 3) and F(4, 3); `sparse` zeroes most inputs, so many receptive fields are
    all zeros (whose outputs must be exactly 0)."""
    x, w = _conv_args(case)
    if sparse:
        keep = np.random.default_rng(case["seed"] + 1).uniform(size=x.shape) < 0.15
        x = jnp.where(jnp.asarray(keep), x, 0.0)
    pads = case["padding"]

    def fast(x, w):
        return kernels.conv._conv_winograd(x, w, pads, m)

    ref = functools.partial(_lax_conv, padding=pads)
    _assert_same_derivatives(fast, ref, (x, w), case["seed"])
    y, want = fast(x, w), ref(x, w)
    zero = np.asarray(want) == 0  # all-zero receptive fields: lax sums exact zeros
    assert (np.asarray(y)[zero] == 0).all()


def test_winograd_outputs_of_an_all_zero_receptive_field_are_exactly_zero():
    """A tile mixing zeros and nonzeros: the transforms cancel only up to rounding, so
    without the support mask these outputs come out as +-1e-7 noise."""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 12, 12, 16), np.float32)
    x[:, :, 7:] = rng.uniform(size=(2, 12, 5, 16))  # right part nonzero
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
    for m in (2, 4):
        y = np.asarray(kernels.conv._conv_winograd(jnp.asarray(x), w, ((0, 0),) * 2, m))
        # output column j reads input columns j..j+2: columns 0..4 read zeros only
        np.testing.assert_array_equal(y[:, :, :5], 0.0)
        assert (y[:, :, 5:] != 0).all()


# --------------------------------------------------------------------------- pool
def _pool_x(case):
    rng = np.random.default_rng(case["seed"])
    return jnp.asarray(_tie_values(rng, case["shape"], case["values"]))


@SETTINGS
@given(pool_cases())
def test_max_pool_fast_derivatives_match_lax_including_ties(case):
    opts = dict(window=case["window"], stride=case["stride"], padding=case["padding"])

    def fast(x):
        return kernels.pool2d(x, kind="max", impl="fast", **opts)

    def ref(x):
        return nnx.max_pool(x, opts["window"], opts["stride"], opts["padding"])

    ties = case["values"] != "normal"
    _assert_same_derivatives(fast, ref, (_pool_x(case),), case["seed"], hvp=not ties)


@SETTINGS
@given(pool_cases())
def test_relu_max_pool_derivatives_match_relu_then_lax_pool(case):
    opts = dict(window=case["window"], stride=case["stride"], padding=case["padding"])

    def fused(x):
        return kernels.relu_max_pool(x, impl="fast", **opts)

    def ref(x):
        w, s, p = opts["window"], opts["stride"], opts["padding"]
        return nnx.max_pool(jax.nn.relu(x), w, s, p)

    ties = case["values"] == "ints"  # ReLU's zeros tie too, but pass no gradient
    _assert_same_derivatives(fused, ref, (_pool_x(case),), case["seed"], hvp=not ties)


@SETTINGS
@given(pool_cases(), st.sampled_from(["avg", "sum", "lp", "geometric", "harmonic"]))
def test_other_pool_derivatives_match_between_impls(case, kind):
    """Both impls of every other kind, on positive inputs and on ReLU outputs (zeros)."""
    opts = dict(window=case["window"], stride=case["stride"], padding=case["padding"])
    x = jnp.abs(_pool_x(case)) if case["values"] == "normal" else _pool_x(case)

    def pooled(impl):
        return lambda x: kernels.pool2d(x, kind=kind, impl=impl, p=3.0, **opts)

    _assert_same_derivatives(pooled("fast"), pooled("xla"), (x,), case["seed"])


@pytest.mark.parametrize("kind", ["lp", "geometric", "harmonic"])
def test_pool_derivatives_are_finite_at_zero_and_negative_inputs(kind):
    x = jnp.asarray([[0.0, 1.0], [-2.0, 0.5]]).reshape(1, 2, 2, 1)
    x = jnp.tile(x, (1, 2, 2, 3))

    def f(x):
        return jnp.sum(kernels.pool2d(x, kind=kind, window=2, stride=1))

    t = jnp.ones_like(x)
    for value in (
        jax.grad(f)(x),
        jax.jvp(f, (x,), (t,))[1],
        jax.jvp(jax.grad(f), (x,), (t,))[1],
    ):
        assert bool(jnp.all(jnp.isfinite(value)))


# --------------------------------------------------------------------------- models
def test_model_jvp_linearize_and_hvp_match_xla_kernels():
    """digits_cnn (im2col, Winograd, fast max-pool by default on CPU) against XLA's."""
    spec = models.preset("digits_cnn")
    x = jnp.asarray(
        np.random.default_rng(0).uniform(size=(2, *spec.input_shape)), jnp.float32
    )
    results = []
    for setting in ("fast", "xla"):
        model = models.build_model(spec, seed=0, kernels=setting)
        model.eval()
        graph, params, rest = nnx.split(model, nnx.Param, ...)
        tangent = jax.tree.map(jnp.ones_like, params)

        def logits(p, graph=graph, rest=rest):
            return nnx.merge(graph, p, rest)(x)

        def loss(p, logits=logits):
            return jnp.sum(jax.nn.log_softmax(logits(p))[:, 0])

        @jax.jit
        def derivatives(params, tangent, logits=logits, loss=loss):
            _, ty = jax.jvp(logits, (params,), (tangent,))
            _, lin = jax.linearize(logits, params)
            hvp = jax.jvp(jax.grad(loss), (params,), (tangent,))[1]
            return ty, lin(tangent), hvp

        results.append(derivatives(params, tangent))
    for a, b in zip(*(jax.tree.leaves(r) for r in results), strict=True):
        _close(a, b, rtol=1e-4)


# --------------------------------------------------------------------------- real data
def _real_batch(shared_data, name, n=128):
    """The first n training images (scaled to [0, 1]) and labels, from the raw idx files."""
    with gzip.open(shared_data / name / "train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(16 + n * 784)[16:], np.uint8).reshape(n, 28, 28, 1)
    with gzip.open(shared_data / name / "train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(8 + n)[8:], np.uint8)
    return jnp.asarray(x / 255.0, jnp.float32), jnp.asarray(y, jnp.int32)


# VGG-style blocks at MNIST size: Winograd from the second conv on (16 input channels)
VGG_LIKE = ModelSpec(
    (28, 28, 1),
    10,
    (
        ConvSpec(filters=16, kernel=3, padding="same", activation="relu"),
        ConvSpec(filters=16, kernel=3, padding="same", activation="relu"),
        PoolSpec(pool="max", window=2),
        ConvSpec(filters=32, kernel=3, padding="same", activation="relu"),
        ConvSpec(filters=32, kernel=3, padding="same", activation="relu"),
        PoolSpec(pool="max", window=2),
        FlattenSpec(),
        DenseSpec(units=10),
    ),
    name="vgg_like",
)


@nnx.jit
def _run(model, x, y):
    """Conv pre-activations, pool inputs (as the model's plan runs them) and gradients."""
    plan = model.kernel_plan(x.shape[1:])
    pre, pooled, h = {}, {}, x
    for (name, layer), p in zip(model.named_layers(), plan.layers, strict=True):
        if isinstance(layer, layers.Conv):
            if p.crop is not None:
                h = h[:, : p.crop.in_keep[0], : p.crop.in_keep[1]]
            pre[name] = layers.conv2d(layer, h, p)
            h = layers.activate(pre[name], layer.activation)
        elif isinstance(layer, layers.Pool):
            pooled[name] = h
            h = layer(h, p)
        else:
            h = layer(h)

    def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    return pre, pooled, nnx.state(nnx.grad(loss)(model), nnx.Param)


def _argmax_2x2(v):
    n, h, w, c = v.shape
    h, w = h // 2 * 2, w // 2 * 2
    v = v[:, :h, :w].reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return v.reshape(*v.shape[:4], 4).argmax(-1)


# pre-activations within BAND * (largest of the layer) of 0 are within float32 rounding
# of the convolution (Winograd F(4, 3): ~5e-6), where either sign is a right answer
BAND = 2e-5
REAL_CASES = [
    pytest.param(
        data,
        spec,
        seed,
        marks=() if seed == 0 and spec == "keras_mnist" else pytest.mark.slow,
    )
    for data in ("mnist", "fashion_mnist")
    for spec in ("keras_mnist", "vgg_like")
    for seed in range(3)
]


@pytest.mark.parametrize("data, spec_name, seed", REAL_CASES)
def test_real_batch_gradients_match_xla_kernels(shared_data, data, spec_name, seed):
    """At initialisation, on 128 real images: conv outputs that are exactly 0 in XLA's
    (all-zero receptive fields: MNIST backgrounds) are exactly 0; every ReLU outside
    the rounding band decides alike; gradients agree to 1e-5 of each parameter's
    largest, or, where a near-tie (a ReLU inside the band, or a max-pool window whose
    top values are within rounding) went the other way, to 2e-2: a flipped near-tie
    moves that one position's share of the gradient, as between any two float32
    convolutions (XLA's own breaks ties of identical receptive fields otherwise than
    im2col)."""
    x, y = _real_batch(shared_data, data)
    spec = VGG_LIKE if spec_name == "vgg_like" else models.preset(spec_name)
    fast_pre, fast_pool, fast_grads = _run(models.build_model(spec, seed=seed), x, y)
    xla_model = models.build_model(spec, seed=seed, kernels="xla")
    xla_pre, xla_pool, xla_grads = _run(xla_model, x, y)
    near_ties = 0
    for name, want in xla_pre.items():
        got = np.asarray(fast_pre[name])
        want = np.asarray(want)[:, : got.shape[1], : got.shape[2]]  # crop
        scale = np.abs(want).max()
        assert (got[want == 0] == 0).all(), name
        assert np.abs(got - want).max() <= 1e-5 * scale, name
        flips = (got > 0) != (want > 0)
        assert (np.abs(want[flips]) <= BAND * scale).all(), name
        near_ties += int(flips.sum())
    for name, want in xla_pool.items():
        got = np.asarray(fast_pool[name])
        want = np.asarray(want)[:, : got.shape[1], : got.shape[2]]
        near_ties += int((_argmax_2x2(got) != _argmax_2x2(want)).sum())
    tol = 2e-2 if near_ties else 1e-5
    for a, b in zip(
        jax.tree.leaves(fast_grads), jax.tree.leaves(xla_grads), strict=True
    ):
        assert float(jnp.abs(a - b).max()) <= tol * float(jnp.abs(b).max())


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist"])
def test_fast_max_pool_on_real_activations_equals_xla_exactly(shared_data, data):
    """The pool inputs of a real batch (many exact ties: zeros after ReLU, identical
    receptive fields): the fast pool's value, jvp and vjp are XLA's, bit for bit."""
    x, y = _real_batch(shared_data, data, n=32)
    model = models.build_model(models.preset("keras_mnist"), seed=0, kernels="xla")
    _, pooled, _ = _run(model, x, y)
    rng = np.random.default_rng(0)
    for v in pooled.values():
        t = jnp.asarray(rng.normal(size=v.shape), jnp.float32)
        results = []
        for fn in (
            lambda v: kernels.pool2d(v, kind="max", impl="fast"),
            lambda v: nnx.max_pool(v, (2, 2), (2, 2), ((0, 0), (0, 0))),
        ):
            out, ty = jax.jvp(fn, (v,), (t,))
            g = jax.vjp(fn, v)[1](ty)[0]
            results.append((out, ty, g))
        for a, b in zip(*results, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
