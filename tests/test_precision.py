"""Mixed precision: kernels per precision against a float32 reference with a stated
rounding bound; dtypes of parameters, activations, gradients and optimiser state;
per-layer overrides and their errors; checkpoints across precisions; bfloat16 MNIST."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import kernels, models, optim, train, transfer
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
    ResidualSpec,
    RunConfig,
)
from jaxcnn.train import step

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
# ||error|| <= TOL * || |x| (*) |w| || (the rounding bound of a sum of products, here
# of the norms): bfloat16 rounds each operand to 8 bits (u = 2**-8); the sums
# accumulate in float32. Measured worst cases are about 0.3e-2 (bfloat16) and 4e-7.
TOL = {"float32": 1e-6, "bfloat16": 1e-2}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _reference(x, w, opts):
    return jax.lax.conv_general_dilated(
        x,
        w,
        opts["stride"],
        opts["padding"],
        rhs_dilation=opts["dilation"],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )


def _within_bound(got, want, bound, tol):
    err = np.linalg.norm(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert err <= tol * np.linalg.norm(np.asarray(bound, np.float64)), err


@st.composite
def conv_cases(draw):
    three = draw(st.booleans())  # half the cases are 3x3 stride 1: Winograd's
    kernel = (3, 3) if three else (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (1, 1) if three else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (1, 1) if three else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    size = draw(st.integers(9, 13))
    return dict(
        x_shape=(draw(st.integers(1, 2)), size, size, draw(st.integers(1, 8))),
        kernel=kernel,
        cout=draw(st.integers(1, 5)),
        opts=dict(stride=stride, padding=pads, dilation=dilation),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.slow  # over 30 s in the default run on 2 cores
@SETTINGS
@given(
    conv_cases(),
    st.sampled_from(["xla", "im2col", "winograd"]),
    st.sampled_from(["float32", "bfloat16"]),
)
def test_conv2d_per_precision_within_the_rounding_bound(case, impl, precision):
    """Values and both gradients of every kernel on operands of each precision."""
    rng = np.random.default_rng(case["seed"])
    x = jnp.asarray(rng.normal(size=case["x_shape"]), jnp.float32)
    w_shape = (*case["kernel"], case["x_shape"][3], case["cout"])
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    opts, dtype = case["opts"], DTYPES[precision]

    def fast(x, w):
        return kernels.conv2d(x, w, impl=impl, **opts)

    y, vjp = jax.vjp(fast, x.astype(dtype), w.astype(dtype))
    assert y.dtype == jnp.float32  # accumulated in float32
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    dx, dw = vjp(g)
    assert dx.dtype == dw.dtype == dtype
    want, ref_vjp = jax.vjp(lambda a, b: _reference(a, b, opts), x, w)
    bound, bound_vjp = jax.vjp(lambda a, b: _reference(a, b, opts), abs(x), abs(w))
    for got, ref, scale in zip(
        (y, dx, dw), (want, *ref_vjp(g)), (bound, *bound_vjp(abs(g))), strict=True
    ):
        _within_bound(got, ref, scale, TOL[precision])


def test_winograd_in_bfloat16_runs_f23_tiles_not_im2col():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(2, 12, 12, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)) / 12, jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    got = kernels.conv2d(x, w, padding=pads, impl="winograd")
    f23 = kernels.conv._conv_winograd(x, w, pads, 2)
    im2col = kernels.conv2d(x, w, padding=pads, impl="im2col")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(f23))
    assert not np.array_equal(np.asarray(got), np.asarray(im2col))


@pytest.mark.parametrize("impl", ["xla", "fast"])
@pytest.mark.parametrize("kind", ["max", "avg", "sum", "lp", "geometric", "harmonic"])
def test_pooling_in_bfloat16(kind, impl):
    """Max pooling of bfloat16 is exact; the other kinds run in float32, then round."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(0.1, 2.0, size=(2, 7, 7, 3)), jnp.bfloat16)
    opts = dict(kind=kind, window=2, padding=((0, 1), (1, 0)), impl=impl)
    y, vjp = jax.vjp(lambda a: kernels.pool2d(a, **opts), x)
    want, want_vjp = jax.vjp(lambda a: kernels.pool2d(a, **opts), x.astype(jnp.float32))
    assert y.dtype == jnp.bfloat16
    g = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
    (dx,), (want_dx,) = vjp(g), want_vjp(g.astype(jnp.float32))
    assert dx.dtype == jnp.bfloat16
    if kind == "max":
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(want_dx))
    else:  # one bfloat16 rounding of the float32 result
        np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2**-8)
        np.testing.assert_allclose(
            np.asarray(dx, np.float32), want_dx, rtol=2**-8, atol=1e-6
        )


# --------------------------------------------------------------------------- models
def _spec() -> ModelSpec:
    """Every layer kind with a precision or a dtype rule: conv, pool, norm, residual
    with a projection, dropout, dense."""
    return ModelSpec(
        input_shape=(10, 10, 1),
        num_classes=3,
        layers=(
            ConvSpec(filters=4, kernel=3, activation="relu"),
            PoolSpec(pool="max", window=2),
            NormSpec(norm="batch"),
            ResidualSpec(
                layers=(ConvSpec(filters=6, kernel=3, padding="same"),),
                activation="relu",
            ),
            PoolSpec(pool="avg", window=2),
            FlattenSpec(),
            DropoutSpec(rate=0.25),
            DenseSpec(units=8, activation="relu"),
            DenseSpec(units=3),
        ),
    )


def _images(n=4):
    return jnp.asarray(np.random.default_rng(0).uniform(size=(n, 10, 10, 1)), "f4")


def _dots(fn, *args, ops=("dot_general",)) -> list[tuple[str, str]]:
    """Operand dtypes of every dot_general (or other `ops`) in the jaxpr of fn(*args),
    nested included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ops:
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    if hasattr(sub, "jaxpr"):
                        walk(getattr(sub, "jaxpr", sub))
                    elif hasattr(sub, "eqns"):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_bfloat16_activations_between_layers_and_float32_logits():
    model = models.build_model(_spec(), precision="bfloat16")
    model.eval()  # make_jaxpr below: no batch statistics to move
    plans = model.kernel_plan().layers
    x = _images()
    conv = model.conv_0(x, plans[0])
    assert conv.dtype == jnp.bfloat16
    assert model.pool_1(conv, plans[1]).dtype == jnp.bfloat16
    hidden = model.dense_7(jnp.ones((4, 24), jnp.bfloat16), plans[7])
    assert hidden.dtype == jnp.bfloat16
    assert plans[8].dtype == "bfloat16" and plans[8].out_dtype == "float32"
    assert model(x).dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in model.features(x, ["pool_1"]).values())
    dots = _dots(lambda x: model(x), x)
    assert dots and set(dots) == {("bfloat16", "bfloat16")}


def _grad_products(model, x):
    """Operand dtypes of every convolution and matmul of the model's gradient."""

    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x):
        return jnp.sum(nnx.merge(graph, params, rest)(x) * jnp.arange(3.0)[None])

    return _dots(
        lambda x: jax.grad(loss)(params, x),
        x,
        ops=("dot_general", "conv_general_dilated"),
    )


def test_bfloat16_backward_products_take_bfloat16_operands_on_gpu(monkeypatch):
    """On GPU/TPU a bfloat16 layer's product is bfloat16 (accumulated in float32 by
    the hardware), so its transposes in the backward pass take bfloat16 operands;
    the values agree with float32 within bfloat16 rounding."""
    x = _images()
    reference = models.build_model(_spec(), seed=1)
    reference.eval()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    model = models.build_model(_spec(), seed=1, precision="bfloat16")
    model.eval()
    plans = [p for p in model.kernel_plan().walk() if p.dtype is not None]
    assert plans and {(p.conv, p.product_dtype) for p in plans} <= {
        ("xla", "bfloat16"),
        (None, "bfloat16"),
    }
    products = _grad_products(model, x)
    assert len(products) >= 10 and set(products) == {("bfloat16", "bfloat16")}
    got, want = model(x), reference(x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=3e-2 * float(jnp.abs(want).max()))
    grads = nnx.grad(lambda m: jnp.sum(m(x) * jnp.arange(3.0)[None]))
    for g, r in zip(
        jax.tree.leaves(grads(model)), jax.tree.leaves(grads(reference)), strict=True
    ):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, r, atol=3e-2 * float(jnp.abs(r).max()) + 1e-6)


def test_bfloat16_products_are_float32_on_cpu():
    """On CPU the products hand out float32 (XLA:CPU's fast bfloat16 products), so
    the forward products take bfloat16 operands and backward ones a float32 one."""
    model = models.build_model(_spec(), precision="bfloat16")
    model.eval()
    plans = [p for p in model.kernel_plan(backend="cpu").walk() if p.dtype]
    assert plans and {p.product_dtype for p in plans} == {"float32"}
    products = _grad_products(model, _images())
    assert ("bfloat16", "bfloat16") in products
    assert any("float32" in operands for operands in products)


def test_per_layer_precision_keeps_conv_0_and_the_head_in_float32():
    layers = {"conv_0": "float32", "dense_8": "float32"}
    model = models.build_model(_spec(), precision="bfloat16", precision_layers=layers)
    model.eval()
    plan = model.kernel_plan()
    assert plan.layer("conv_0").dtype == "float32"
    assert plan.layer("residual_3/conv_0").dtype == "bfloat16"
    assert plan.layer("dense_8").dtype == "float32"
    products = ("dot_general", "conv_general_dilated")
    dots = _dots(lambda x: model(x), _images(), ops=products)
    assert dots[0] == ("float32", "float32")  # conv_0's product
    assert dots[-1] == ("float32", "float32")  # the head
    assert ("bfloat16", "bfloat16") in dots


def test_bfloat16_train_step_keeps_params_grads_and_optimizer_state_float32():
    model = models.build_model(_spec(), precision="bfloat16")
    tx, _ = optim.make_optimizer(RunConfig().optim, steps_per_epoch=1, epochs=1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, labels = _images(), jnp.asarray([0, 1, 2, 0], jnp.int32)

    def loss(model):
        return step.loss_and_sums(model, x, labels, jnp.ones(4), 0.0)

    (value, (sums, logits)), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    assert value.dtype == sums.dtype == logits.dtype == jnp.float32
    assert np.isfinite(float(value))
    floats = [
        leaf
        for tree in (nnx.state(model, nnx.Param), grads, nnx.state(optimizer))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    assert floats and {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    after = nnx.state(model, nnx.Param)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(after)) and not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )


def test_set_kernels_switches_precision_and_keeps_the_parameters():
    model = models.build_model(_spec(), seed=3)
    params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    model.eval()
    x = _images()
    want = np.asarray(model(x))
    models.set_kernels(model, precision="bfloat16")
    assert model.kernel_choice.precision == "bfloat16"
    got = np.asarray(model(x))
    assert not np.array_equal(got, want)
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    models.set_kernels(model, precision="float32")
    np.testing.assert_array_equal(np.asarray(model(x)), want)
    jax.tree.map(np.testing.assert_array_equal, params, nnx.state(model, nnx.Param))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: models.build_model(_spec(), precision="float16"),
            "precision must be one of float32, bfloat16; got 'float16'",
        ),
        (
            lambda: models.build_model(_spec(), precision_layers={"pool_1": "float32"}),
            "build_model: no conv or dense layer 'pool_1'; conv or dense layers are "
            "conv_0, residual_3/conv_0, residual_3/proj, dense_7, dense_8",
        ),
        (
            lambda: models.set_kernels(
                models.build_model(_spec()), precision_layers={"conv_0": "half"}
            ),
            "precision_layers entries must be (layer path, one of float32, "
            "bfloat16); got ('conv_0', 'half')",
        ),
        (
            lambda: RunConfig().with_overrides({"train.precision": "fp16"}),
            '[train]: field \'precision\' must be "float32" | "bfloat16", got "fp16"',
        ),
        (
            lambda: models.build_run_model(
                _spec(),
                RunConfig().with_overrides({"train.fp32_layers": ["conv_9"]}).train,
            ),
            "no conv or dense layer 'conv_9'",
        ),
    ],
)
def test_precision_errors_name_the_value_and_the_valid_ones(call, message):
    with pytest.raises(SpecError) as err:
        call()
    assert message in str(err.value)


def test_run_config_precision_reaches_the_model():
    config = RunConfig().with_overrides(
        {"train.precision": "bfloat16", "train.fp32_layers": ["conv_0"]}
    )
    model = models.build_run_model(_spec(), config.train)
    assert model.kernel_choice.precision == "bfloat16"
    assert model.kernel_choice.precision_layers == (("conv_0", "float32"),)
    assert json.loads(json.dumps(config.to_dict()))["train"]["precision"] == "bfloat16"


# --------------------------------------------------------------------------- runs
@pytest.mark.parametrize(
    "trained, evaluated", [("bfloat16", "float32"), ("float32", "bfloat16")]
)
def test_checkpoints_restore_and_evaluate_across_precisions(
    tmp_path, trained, evaluated
):
    """A run trained in one precision restores and evaluates in the other (float32
    checkpoints either way), with nearly the same accuracy."""
    config = RunConfig().with_overrides({"train.epochs": 2, "train.precision": trained})
    result = train.fit(config, tmp_path / "run", quiet=True)
    same = train.evaluate(tmp_path / "run")
    other = train.evaluate(tmp_path / "run", precision=evaluated)
    assert same["accuracy"] == pytest.approx(result.test_accuracy, abs=1e-6)
    assert other["accuracy"] == pytest.approx(same["accuracy"], abs=0.02)
    restored = transfer.restore(tmp_path / "run", precision=evaluated)
    assert restored.model.kernel_choice.precision == evaluated
    leaves = jax.tree.leaves(nnx.state(restored.model, nnx.Param))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    back = transfer.restore(tmp_path / "run", precision=trained)  # and back again
    assert back.model.kernel_choice.precision == trained
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.state(back.model, nnx.Param),
        nnx.state(restored.model, nnx.Param),
    )


@pytest.mark.slow
def test_bfloat16_keras_mnist_two_epochs_reaches_98_5_percent(
    tmp_path, tfds_dir, shared_data
):
    """keras_mnist on MNIST in bfloat16: within about half a point of float32."""
    config = RunConfig().with_overrides(
        {
            "model.name": "keras_mnist",
            "data.dataset": "mnist",
            "data.data_dir": str(tfds_dir),
            "data.manual_dir": str(shared_data / "mnist"),
            "train.epochs": 2,
            "train.batch_size": 64,
            "optim.lr": 0.002,
            "optim.schedule": "cosine",
            "train.precision": "bfloat16",
        }
    )
    result = train.fit(config, tmp_path / "run", quiet=True)
    assert np.isfinite(result.test_loss)
    assert result.test_accuracy >= 0.985
