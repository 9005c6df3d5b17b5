"""Models built with the fast kernels equal the XLA-kernel models: logits and gradients,
at the size they were built for and at any other size the spec can take."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jaxcnn import kernels, models, optim, shapes, train
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ConvSpec,
    DenseSpec,
    GlobalPoolSpec,
    ModelSpec,
    PoolSpec,
    RunConfig,
)


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
        # ImageNet-sized: tests/test_interop_oracle.py (vgg, alexnet at 224x224) and
        # tests/test_branches.py (the layer kinds of the others)
        if n not in models.IMAGENET_PRESETS
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
        models.set_kernels(fast, conv="im2col")
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
    plan = model.kernel_plan()
    assert plan.layer("conv_0").conv == "im2col" and plan.layer("pool_1").pool == "fast"
    assert plan.layer("conv_2").conv == "winograd"  # 3x3, stride 1, 32 input channels
    # cropping on, fusion off (it only pays next to XLA convs)
    assert not any(p.fuse_relu_pool for p in plan.walk())
    # conv_2 (13x13 -> 11x11) feeds a 2x2 pool that never reads row/col 10
    assert (
        plan.layer("conv_2").crop.dead == (1, 1) and plan.layer("conv_0").crop is None
    )
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 28, 28, 1)), jnp.float32)
    want = _logits_and_grads(models.build_model(spec, seed=0, kernels="xla"), x)
    params = nnx.state(model, nnx.Param)
    for conv, pool, fuse, crop in [
        ("xla", "fast", False, False),
        ("xla", "fast", True, False),
        ("xla", "xla", True, True),
        ("im2col", "xla", False, True),
        ("winograd", "fast", False, True),
    ]:
        models.set_kernels(model, conv=conv, pool=pool, fuse_relu_pool=fuse, crop=crop)
        plan = model.kernel_plan()
        assert plan.layer("conv_2").conv == conv and plan.layer("pool_3").pool == pool
        assert plan.layer("conv_0").fuse_relu_pool == fuse
        assert (plan.layer("conv_2").crop is not None) == crop
        _assert_close(_logits_and_grads(model, x), want)
    _assert_close(nnx.state(model, nnx.Param), params, rtol=0)  # untouched
    assert model.kernel_choice.kernels == "fast"


def test_set_kernels_errors():
    model = models.build_model(models.preset("keras_mnist"), kernels="fast")
    with pytest.raises(
        SpecError, match="no conv layer 'conv_1'; conv layers are conv_0"
    ):
        models.set_kernels(model, conv_layers={"conv_1": "xla"})
    with pytest.raises(SpecError, match="pool must be None or one of xla, fast"):
        models.set_kernels(model, pool="cudnn")
    with pytest.raises(SpecError, match="set_kernels takes a model from build_model"):
        models.set_kernels(object(), kernels="xla")
    models.set_kernels(model, "xla")
    assert model.kernel_choice == kernels.KernelChoice(kernels="xla")


def test_xla_kernels_keep_plain_flax_and_auto_follows_backend():
    xla = models.build_model(models.preset("keras_mnist"), kernels="xla").kernel_plan()
    assert xla.layer("conv_0").conv == "xla" and xla.layer("pool_1").pool == "xla"
    assert not any(p.crop or p.fuse_relu_pool for p in xla.walk())
    auto = models.build_model(models.preset("keras_mnist"), kernels="auto")
    cpu = jax.default_backend() == "cpu"
    assert auto.kernel_plan().layer("conv_0").conv == ("im2col" if cpu else "xla")
    assert auto.kernel_plan().layer("conv_2").conv == ("winograd" if cpu else "xla")
    gpu = auto.kernel_plan(backend="gpu")
    assert {p.conv for p in gpu.walk() if p.conv} == {"xla"}


def test_eval_mode_runs_the_forward_only_plan():
    """In eval mode "auto" plans a forward pass: on CPU a 3x3 conv with fewer than 64
    input channels runs XLA's conv, not Winograd or im2col, and a tiling max pool
    XLA's; "fast" keeps the hand-written kernels."""
    spec = ModelSpec(
        (16, 16, 3),
        10,
        (
            ConvSpec(filters=32, kernel=3, padding=1),
            ConvSpec(filters=64, kernel=3, padding=1),
            ConvSpec(filters=64, kernel=3),
            PoolSpec(window=2),
            GlobalPoolSpec(),
            DenseSpec(units=10, activation="identity"),
        ),
    )
    model = models.build_model(spec, seed=0, kernels="auto")
    convs = ("conv_0", "conv_1", "conv_2")
    forward = model.kernel_plan(backend="cpu", forward_only=True)
    assert [forward.layer(n).conv for n in convs] == ["xla", "xla", "winograd"]
    assert forward.layer("pool_3").pool == "xla"
    training = model.kernel_plan(backend="cpu")
    assert [training.layer(n).conv for n in convs] == ["im2col", "winograd", "winograd"]
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 16, 16, 3)), jnp.float32)
    reference = models.build_model(spec, seed=0, kernels="xla")
    reference.eval()
    model.eval()
    _assert_close(model(x), reference(x))
    _assert_close(model(x[:1]), reference(x[:1]))  # one image: XLA's kernels on CPU
    # the call in eval mode is the call with that plan forced
    forced = models.build_model(spec, seed=0, kernels="auto")
    models.set_kernels(
        forced,
        conv_layers={"conv_0": "xla", "conv_1": "xla", "conv_2": "winograd"},
    )
    forced.eval()
    fast = models.build_model(spec, seed=0, kernels="fast")
    fast.eval()

    def jaxpr(model):  # a new function each time: make_jaxpr caches by function
        return str(jax.make_jaxpr(lambda x: model(x))(x))

    if jax.default_backend() == "cpu":
        assert jaxpr(model) == jaxpr(forced)
        assert jaxpr(fast) != jaxpr(forced)
    model.train()
    forced.train()
    assert jaxpr(model) != jaxpr(forced)
    _assert_close(fast(x), reference(x))


def test_train_rolls_its_steps_unless_an_xla_convolution_runs_on_cpu():
    """XLA:CPU's lax.conv is slow in a loop body (jax-ml/jax#12868): those unroll."""
    fast = models.build_model(models.preset("keras_mnist"), kernels="fast")
    assert fast.kernel_plan().rolls_steps
    xla = models.build_model(models.preset("keras_mnist"), kernels="xla")
    assert not xla.kernel_plan(backend="cpu").rolls_steps
    assert xla.kernel_plan(backend="gpu").rolls_steps
    config = RunConfig()
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=1, epochs=1)
    assert train.Steps(fast, nnx.Optimizer(fast, tx, wrt=nnx.Param), config).rolled
    models.set_kernels(fast, conv_layers={"conv_2": "xla"})  # one is enough
    assert not fast.kernel_plan(backend="cpu").rolls_steps
    steps = train.Steps(fast, nnx.Optimizer(fast, tx, wrt=nnx.Param), config)
    assert steps.rolled == (jax.default_backend() != "cpu")


# --------------------------------------------------------------------------- input sizes
@st.composite
def resizable_specs(draw):
    """conv -> pool pairs (odd sizes, strides, padding, dilation, groups), then global
    pooling: specs that take many input sizes. Returns (spec, another valid input shape)."""
    channels = draw(st.sampled_from([1, 3]))
    layer_specs = []
    in_channels = channels
    for _ in range(draw(st.integers(1, 2))):
        filters = draw(st.integers(2, 6))
        groups = [g for g in (1, 2, 3) if in_channels % g == 0 and filters % g == 0]
        stride = draw(st.sampled_from([1, 1, 2]))
        layer_specs.append(
            ConvSpec(
                filters=filters,
                kernel=draw(st.sampled_from([1, 2, 3])),
                stride=stride,
                padding=draw(st.sampled_from(["valid", "same", (1, 1)])),
                dilation=draw(st.sampled_from([1, 1, 2])) if stride == 1 else 1,
                groups=draw(st.sampled_from(groups)),
                activation=draw(st.sampled_from(["relu", "relu", "tanh"])),
            )
        )
        in_channels = filters
        window = draw(st.integers(2, 3))
        layer_specs.append(
            PoolSpec(
                pool=draw(st.sampled_from(["max", "max", "avg"])),
                window=window,
                stride=draw(st.sampled_from([None, 1, 2])),
                padding=draw(st.sampled_from(["valid", "same"])),
            )
        )
    layer_specs += [GlobalPoolSpec(pool="avg"), DenseSpec(units=3)]
    built = (draw(st.integers(7, 12)), draw(st.integers(7, 12)), channels)
    called = (draw(st.integers(7, 13)), draw(st.integers(7, 13)), channels)
    spec = ModelSpec(built, 3, tuple(layer_specs))
    for shape in (built, called):
        try:
            shapes.infer(dataclasses.replace(spec, input_shape=shape))
        except SpecError:
            assume(False)
    return spec, called


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@pytest.mark.slow  # ~30 s: many small networks, each compiled at two sizes
@given(resizable_specs())
def test_a_model_called_at_another_size_gives_xla_logits_and_gradients(case):
    """Crop, padding and kernels follow the actual input, with every kernel setting:
    the same logits and gradients as an XLA-kernel model built for that size."""
    spec, called = case
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, *called)), jnp.float32)
    resized = dataclasses.replace(spec, input_shape=called)
    want = _logits_and_grads(models.build_model(resized, seed=0, kernels="xla"), x)
    for setting in ("auto", "fast", "xla"):
        model = models.build_model(spec, seed=0, kernels=setting)
        _assert_close(_logits_and_grads(model, x), want)


def test_a_model_rejects_inputs_its_spec_cannot_take():
    model = models.build_model(models.preset("keras_mnist"))
    with pytest.raises(SpecError, match=r"unbatched: add a batch axis, x\[None\]"):
        model(jnp.zeros((28, 28, 1)))
    with pytest.raises(SpecError, match="3 channels, but the model was built for 1"):
        model(jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(SpecError, match=r"no channel axis: add one, x\[\.\.\., None\]"):
        model(jnp.zeros((2, 28, 28)))
    with pytest.raises(
        SpecError, match=r"float images in \[0, 1\]; got uint8 .* x / 255"
    ):
        model(jnp.zeros((2, 28, 28, 1), jnp.uint8))
    with jax.enable_x64(True):
        with pytest.raises(SpecError, match=r"float64.*x.astype\(jnp.float32\)"):
            model(jnp.zeros((2, 28, 28, 1), jnp.float64))
        assert model(jnp.zeros((2, 28, 28, 1), jnp.float32)).dtype == jnp.float32
    with pytest.raises(SpecError, match=r"layer 6 \(dense\): flatten gives 1024"):
        _logits_and_grads(model, jnp.zeros((2, 32, 32, 1)))  # under jit too


@pytest.mark.parametrize("kernels", ["auto", "xla"])
def test_a_batch_of_no_images(kernels):
    """Eval mode: [0, classes] logits (features too); training mode with batch norm:
    refused, as its running statistics would become NaN."""
    spec = models.preset("resnet_cifar", input_shape=(8, 8, 3), blocks_per_stage=1)
    model = models.build_model(spec, seed=0, kernels=kernels)
    model.eval()
    empty = jnp.zeros((0, 8, 8, 3))
    assert model(empty).shape == (0, 10)
    assert model.features(empty, ["global_pool_6"])["global_pool_6"].shape == (0, 64)
    model.train()
    with pytest.raises(SpecError, match="a batch of 0 images in training mode"):
        model(empty)
    plain = models.build_model(models.preset("keras_mnist"), seed=0, kernels=kernels)
    assert plain(jnp.zeros((0, 28, 28, 1))).shape == (0, 10)  # no batch norm: fine


def test_explicitly_sharded_inputs_run_with_every_kernel_setting():
    """An input sharded over a mesh axis of type Explicit (jax.make_mesh) gives the
    unsharded logits with kernels "auto" and "xla" and keeps its batch sharding (the
    fast kernels' reshapes cannot state their output sharding, so such inputs run
    XLA's kernels). Gradients are not covered: JAX's own convolution transpose asks
    for an output sharding under Explicit axes, with either setting."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    spec = models.preset("keras_mnist")
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)), jnp.float32)
    want = models.build_model(spec, seed=0, kernels="xla")(x)
    mesh = jax.make_mesh((1,), ("batch",), axis_types=(AxisType.Explicit,))
    for setting in ("auto", "xla"):
        model = models.build_model(spec, seed=0, kernels=setting)
        with jax.set_mesh(mesh):
            sharded = jax.device_put(x, NamedSharding(mesh, P("batch")))
            got = jax.jit(lambda x, model=model: model(x))(sharded)
            assert got.sharding.spec[0] == "batch"
        _assert_close(got, want)
