"""jaxcnn models against their Keras twins: the same logits, gradients and statistics.

For a model spec, tests/keras_oracle.py builds the network a Keras user would write (Keras
3 on TensorFlow, an implementation independent of JAX and of jaxcnn's kernels), jaxcnn's
weights are copied in by parameter path, and both compute the logits of one batch and
the gradient of the mean softmax cross-entropy with respect to every parameter; in
training mode also the updated batch-norm running statistics. jaxcnn runs in float32
with its default kernels (`kernels="auto"`: on CPU the hand-written im2col / Winograd
convs and fast max pooling) and with XLA's (`kernels="xla"`).

The Keras twin computes in float64, so the tolerances measure jaxcnn's float32 rounding
alone (TensorFlow's own float32 batch statistics are the less accurate of the two):
logits rtol 1e-4, atol 1e-5; each parameter's gradient to within 1e-4 of the largest
|entry| of its Keras gradient plus 2e-4 of the largest entry of any gradient of the
model (gradients that are exactly 0 in exact arithmetic); running statistics rtol 1e-5, atol 1e-6.

Near-ties: Winograd's forward rounds about 10x more than a direct convolution's. Where a
pre-activation lies within rounding of 0, or two pooled values within rounding of each
other, that is enough to flip the ReLU mask or the max-pool choice at that position, and
the gradient then differs from float64's by that position's whole term: far more than
the rounding itself, and by an amount that depends on the CPU (its instructions and
reduction order decide which near-ties flip). In the cases where this happens (the
large presets on real digits, ResNet-20 training on a random batch) kernels="auto" is
checked twice: with its convolutions forced to im2col at the tolerances above, and as
it runs by default (Winograd) with gradients allowed WINOGRAD_GRAD_RTOL of their largest
entry; on real digits kernels="xla" gets the same allowance (XLA's convolution flips
near-ties on some CPUs too). Mutation tests show that this wider check still fails for a wrong batch-norm
epsilon and for a ReLU whose derivative at 0 is 1.

Cases: every preset (eval mode; training mode with dropout rate 0 where the preset has
batch norm or dropout), hypothesis-generated specs, normalisation of offset inputs, and
a real MNIST batch at initialisation, where exact zeros before a ReLU matter.
"""

import dataclasses
import functools
import os
import typing

os.environ["KERAS_BACKEND"] = "tensorflow"  # before keras is first imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import keras_oracle  # noqa: E402  (tests/keras_oracle.py)
import mnist_files  # noqa: E402  (tests/mnist_files.py)
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jaxcnn import layers, models, shapes  # noqa: E402
from jaxcnn.errors import SpecError  # noqa: E402
from jaxcnn.spec import (  # noqa: E402
    ACTIVATIONS,
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

if keras.backend.backend() != "tensorflow":  # keras was imported earlier with another
    pytest.skip(
        f"the Keras oracle needs the TensorFlow backend, keras runs on "
        f"{keras.backend.backend()}",
        allow_module_level=True,
    )

LOGITS_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_RTOL = 1e-4  # of the largest |entry| of the parameter's Keras gradient
# plus this much of the largest |entry| of any of the model's gradients: for gradients
# whose exact value is 0 and whose float32 value is the rounding of terms that cancel
# (a bias right before a batch norm in training mode: measured up to 1.1e-4 of the
# model's largest gradient among the 200 slow generated specs)
GRAD_MODEL_RTOL = 2e-4
# ResNet-20 at initialisation in training mode on MNIST is ill-conditioned in float32:
# against float64, kernels "xla" and "auto" alike are off by 6e-3 of a gradient's
# largest entry (Keras in float32: 5.7%; jaxcnn and Keras in float64 agree to 1e-13).
RESNET20_TRAIN_GRAD_RTOL = 1e-2
# What a near-tie flipped by Winograd's rounding may move a gradient by, of its largest
# entry: one position's term. Measured (largest, kernels="auto"): ResNet-20 training on a
# random batch 3e-3 on Zen 5 and 8e-7 on Zen 3 (no flip there); vgg_cifar on MNIST 4.7e-4
# (Zen 5) and 1.7e-3 (Zen 3); ResNet-20 on MNIST 7.5e-4 (Zen 5) and 2.6e-3 (Zen 3).
WINOGRAD_GRAD_RTOL = 1e-2
STATS_TOL = dict(rtol=1e-5, atol=1e-6)
KERNELS = ("auto", "xla")
# kernels="auto" with every convolution forced to im2col: the fast kernels (pooling,
# fusion, cropping) without Winograd's larger rounding
IM2COL = "auto-im2col"
# where a real batch meets near-ties: each choice and its gradient tolerance. XLA's own
# convolution flips them too on some CPUs (its reduction order is the CPU's): ResNet-20
# in eval mode on MNIST moved conv_0's kernel gradient by 2.5e-3 of its largest entry on
# an Intel Xeon with AVX-512 (none on AMD Zen 3 and Zen 5), while im2col's products
# stayed within the case's own tolerance there.
NEAR_TIE_KERNELS = {
    "auto": WINOGRAD_GRAD_RTOL,
    IM2COL: None,  # the case's own tolerance
    "xla": WINOGRAD_GRAD_RTOL,
}
BATCH = 8

SHARED_DATA = mnist_files.SHARED_DATA  # the raw MNIST files


# --------------------------------------------------------------------------- running
def _step(model, images, labels):
    """Logits and per-path gradients of the mean softmax cross-entropy."""

    def loss_fn(model):
        logits = model(images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return loss.mean(), logits

    (_, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return logits, _flat(grads)


_jaxcnn_step = nnx.jit(_step)


def _flat(state) -> dict[str, jax.Array]:
    return {"/".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(state)}


def _values(model, kind) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in _flat(nnx.state(model, kind)).items()}


def _random_model(spec: ModelSpec, seed: int = 0):
    """jaxcnn's model of `spec` with weights drawn by NumPy (no JAX init to compile).

    Kernels are LeCun-normal as Flax draws them; biases, norm scales and batch-norm
    statistics are random too (Flax starts them at 0 or 1, which would hide a bias or
    scale applied in the wrong place).
    """
    model = nnx.eval_shape(lambda: models.build_model(spec))
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        shape = variable.get_value().shape
        if isinstance(variable, nnx.RngKey):
            value = jax.random.key(seed)
        elif isinstance(variable, nnx.RngCount):
            value = jnp.zeros(shape, jnp.uint32)
        elif path[-1] == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, fan_in**-0.5, shape).astype(np.float32)
        elif path[-1] in ("bias", "mean"):
            value = rng.normal(0.0, 0.1, shape).astype(np.float32)
        elif path[-1] in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            raise AssertionError(f"no random value for {path} ({type(variable)})")
        variable.set_value(jnp.asarray(value))
    return model


def _twin(model):
    """The Keras twin of `model`, holding its parameters and batch statistics."""
    params = _values(model, nnx.Param)
    assert set(params) == set(models.param_paths(model))
    twin = keras_oracle.build(model.spec)
    twin.load({**params, **_values(model, nnx.BatchStat)})
    return twin


@dataclasses.dataclass
class Result:
    logits: np.ndarray
    grads: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]


def _compare(model, images, labels, *, training, kernels=KERNELS):
    """Runs the Keras twin of `model` once and jaxcnn with each of `kernels`.

    Returns:
      (keras Result, {kernels: jaxcnn Result}).
    """
    model.train() if training else model.eval()
    expected = Result(*_twin(model).run(images, labels, training))
    got = {}
    for choice in kernels:
        clone = nnx.clone(model)  # training updates batch statistics in place
        if choice == IM2COL:
            models.set_kernels(clone, "auto", conv="im2col")
        else:
            models.set_kernels(clone, choice)
        logits, grads = _jaxcnn_step(clone, jnp.asarray(images), jnp.asarray(labels))
        got[choice] = Result(
            np.asarray(logits),
            {k: np.asarray(v) for k, v in grads.items()},
            _values(clone, nnx.BatchStat),
        )
    return expected, got


def _assert_matches(
    expected: Result, got: Result, where: str, grad_rtol: float = GRAD_RTOL
) -> None:
    np.testing.assert_allclose(
        got.logits, expected.logits, **LOGITS_TOL, err_msg=f"{where}: logits"
    )
    assert set(got.grads) == set(expected.grads), where
    model_scale = max(float(np.abs(g).max()) for g in expected.grads.values())
    for path, want in expected.grads.items():
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(
            got.grads[path],
            want,
            rtol=0,
            atol=grad_rtol * scale + GRAD_MODEL_RTOL * model_scale,
            err_msg=f"{where}: gradient of {path} (largest |entry| {scale:.3g})",
        )
    assert set(got.stats) == set(expected.stats), where
    for path, want in expected.stats.items():
        np.testing.assert_allclose(
            got.stats[path], want, **STATS_TOL, err_msg=f"{where}: {path}"
        )


def _check(
    model, images, labels, *, training, grad_rtol=GRAD_RTOL, kernels=None
) -> None:
    """Compares jaxcnn with the Keras twin for each kernel choice.

    Args:
      kernels: {choice: gradient tolerance, or None for `grad_rtol`}; default: each of
        KERNELS at `grad_rtol`.
    """
    kernels = kernels or dict.fromkeys(KERNELS)
    expected, got = _compare(model, images, labels, training=training, kernels=kernels)
    for choice, result in got.items():
        where = f"{model.spec.name} kernels={choice}"
        _assert_matches(expected, result, where, grad_rtol=kernels[choice] or grad_rtol)


def _random_batch(spec: ModelSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(BATCH, *spec.input_shape)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, BATCH).astype(np.int32)
    return images, labels


def _without_dropout(layers):
    """The same layers with every dropout rate 0 (training mode is then deterministic)."""
    out = []
    for layer in layers:
        if isinstance(layer, DropoutSpec):
            layer = dataclasses.replace(layer, rate=0.0)
        elif isinstance(layer, ResidualSpec):
            layer = dataclasses.replace(layer, layers=_without_dropout(layer.layers))
        out.append(layer)
    return tuple(out)


def _has(layers, cls) -> bool:
    return any(
        isinstance(x, cls) or (isinstance(x, ResidualSpec) and _has(x.layers, cls))
        for x in layers
    )


# --------------------------------------------------------------------------- presets
def _preset_cases(slow: bool):
    """(preset, kwargs, training, near_ties) for every preset: eval mode, and training
    mode when the preset has batch norm or dropout. The default suite shrinks the two
    large ones and runs the small ResNet in training mode only (batch statistics;
    eval-mode batch norm is in the generated specs). In ResNet-20's training mode on a
    random batch of 8, batch statistics over 8 examples amplify Winograd's rounding
    enough to flip near-ties on some CPUs (see WINOGRAD_GRAD_RTOL).
    """
    small = {
        "vgg_cifar": dict(input_shape=(8, 8, 3)),
        "resnet_cifar": dict(input_shape=(8, 8, 3), blocks_per_stage=1),
    }
    cases = []
    for name, preset in models.PRESETS.items():
        if name in models.IMAGENET_PRESETS:
            # at full size in tests/test_interop_oracle.py and test_architectures.py
            # against the source frameworks; their layer kinds here in
            # test_branch_blocks_match_keras
            continue
        if slow and name not in small:
            continue
        kwargs = {} if slow else small.get(name, {})
        spec = preset(**kwargs)
        modes = [False]
        if _has(spec.layers, NormSpec) or _has(spec.layers, DropoutSpec):
            modes.append(True)
        if not slow and name == "resnet_cifar":
            modes = [True]
        for training in modes:
            mode = "train" if training else "eval"
            near_ties = slow and name == "resnet_cifar" and training
            cases.append(
                pytest.param(name, kwargs, training, near_ties, id=f"{name}-{mode}")
            )
    return cases


def _preset_batch(name, kwargs, training):
    spec = models.PRESETS[name](**kwargs)
    if training:
        spec = dataclasses.replace(spec, layers=_without_dropout(spec.layers))
    return spec, *_random_batch(spec)


def _check_preset(name, kwargs, training, near_ties):
    spec, images, labels = _preset_batch(name, kwargs, training)
    kernels = NEAR_TIE_KERNELS if near_ties else None
    _check(_random_model(spec), images, labels, training=training, kernels=kernels)


@pytest.mark.parametrize("name, kwargs, training, near_ties", _preset_cases(slow=False))
def test_preset_matches_keras(name, kwargs, training, near_ties):
    _check_preset(name, kwargs, training, near_ties)


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, training, near_ties", _preset_cases(slow=True))
def test_large_preset_matches_keras(name, kwargs, training, near_ties):
    _check_preset(name, kwargs, training, near_ties)


BRANCHY = {
    "input_shape": [9, 9, 3],
    "num_classes": 4,
    "layers": [
        # asymmetric padding, relu6
        {"type": "conv", "filters": 8, "kernel": 3, "padding": [[0, 1], [1, 0]],
         "activation": "relu6"},
        {"type": "branches", "branches": [  # an inception-like concatenation
            [{"type": "conv", "filters": 4, "kernel": 1, "activation": "relu"}],
            [{"type": "conv", "filters": 4, "kernel": 1},
             {"type": "conv", "filters": 6, "kernel": 3, "padding": "same"}],
            [{"type": "pool", "pool": "max", "window": 3, "stride": 1,
              "padding": "same"},
             {"type": "conv", "filters": 2, "kernel": 1}],
            [],  # identity: DenseNet's concatenation of the input
        ]},
        {"type": "norm", "norm": "batch"},
        # depthwise, then a strided block whose projection has a batch norm
        {"type": "conv", "filters": 20, "kernel": 3, "padding": 1, "groups": 20,
         "use_bias": False},
        {"type": "residual", "activation": "relu", "projection_norm": True, "layers": [
            {"type": "conv", "filters": 12, "kernel": 3, "stride": 2, "padding": 1,
             "use_bias": False},
            {"type": "norm", "norm": "batch"},
        ]},
        {"type": "branches", "join": "add", "activation": "relu", "branches": [
            [{"type": "conv", "filters": 12, "kernel": 1}],
            [],
        ]},
        {"type": "global_pool", "pool": "avg"},
        {"type": "dense", "units": 4},
    ],
}  # fmt: skip


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_branch_blocks_match_keras(training):
    """Branch blocks (concat with an identity and a pool branch, add), a residual
    projection with batch norm, a depthwise conv, relu6 and asymmetric padding."""
    spec = ModelSpec.from_dict(BRANCHY)
    _check(_random_model(spec), *_random_batch(spec), training=training)


def _with_norm_epsilon(model, epsilon: float):
    """A copy of `model` whose batch norms add `epsilon` (the Keras twin keeps the
    spec's): the kind of slip the oracle must catch."""
    model = nnx.clone(model)
    count = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.epsilon = epsilon
            count += 1
    assert count, "the model has no batch norm to mutate"
    return model


@pytest.mark.slow
def test_winograd_tolerance_still_catches_a_wrong_norm_epsilon():
    """ResNet-20 in training mode with every batch norm's epsilon 1e-3 instead of
    1e-5 fails the check that kernels="auto" passes at WINOGRAD_GRAD_RTOL."""
    spec, images, labels = _preset_batch("resnet_cifar", {}, training=True)
    model = _with_norm_epsilon(_random_model(spec), 1e-3)
    with pytest.raises(AssertionError, match="resnet_cifar kernels=auto"):
        _check(
            model, images, labels, training=True, kernels={"auto": WINOGRAD_GRAD_RTOL}
        )


# --------------------------------------------------------------------------- norms


@pytest.mark.parametrize(
    "norm, training",
    [
        ("batch", True),
        ("layer", False),
        ("group", False),
    ],
)
def test_norm_of_offset_inputs_matches_keras(norm, training):
    """Normalising values with a large mean and a small spread (a near-constant
    channel, raw pixels) in float32 keeps only the digits the spread needs."""
    layers = (NormSpec(norm=norm, groups=2), FlattenSpec(), DenseSpec(2))
    spec = ModelSpec((3, 3, 8), 2, layers, name=f"{norm}_norm")
    images, labels = _random_batch(spec)
    _check(_random_model(spec), 4.0 + 0.3 * images, labels, training=training)


# --------------------------------------------------------------------------- random specs
# Keras has max and average pooling only, with "valid" or "same" padding, and no conv
# with both stride > 1 and dilation > 1: the generated specs stay inside that.
KERNEL_SIZES = [(3, 3), (3, 3), (1, 1), (2, 2), (2, 3), (3, 1)]
STRIDES = [(1, 1), (1, 1), (2, 2), (1, 2)]
DILATIONS = [(1, 1), (1, 1), (2, 2), (2, 1)]
PADDINGS = ["valid", "same", "same", (1, 1), (0, 1), (2, 1)]
FILTERS = [2, 3, 4, 6, 16]


@st.composite
def _conv(draw, channels: int, padding=None) -> ConvSpec:
    filters = draw(st.sampled_from(FILTERS))
    groups = [g for g in (1, 2, 3) if channels % g == 0 and filters % g == 0]
    stride = draw(st.sampled_from(STRIDES))
    return ConvSpec(
        filters=filters,
        kernel=draw(st.sampled_from(KERNEL_SIZES)),
        stride=stride,
        padding=draw(st.sampled_from(PADDINGS)) if padding is None else padding,
        dilation=draw(st.sampled_from(DILATIONS)) if stride == (1, 1) else (1, 1),
        groups=draw(st.sampled_from(groups)),
        activation=draw(st.sampled_from(ACTIVATIONS)),
        use_bias=draw(st.booleans()),
    )


@st.composite
def _norm(draw, channels: int, flat: bool = False) -> NormSpec:
    kinds = ["batch", "batch"] if flat else ["batch", "batch", "group"]
    if channels >= 4:
        # Layer norm of a few channels divides by the spread of a few numbers, which
        # may be tiny: float32 rounding, amplified, rather than a test of the layer
        # (test_norm_of_offset_inputs_matches_keras has the case where it matters).
        kinds.append("layer")
    kind = draw(st.sampled_from(kinds))
    # at least 2 channels a group: one is instance norm, which on a ReLU channel of a
    # few pixels has a near-zero spread (float32 rounding amplified, not a test)
    divisors = [g for g in (1, 2, 3, 4) if channels % g == 0 and channels // g >= 2]
    groups = draw(st.sampled_from(divisors or [1]))
    momentum = draw(st.sampled_from([0.99, 0.9, 0.5]))
    return NormSpec(norm=kind, groups=groups, momentum=momentum)


@st.composite
def _pool(draw) -> PoolSpec:
    window = draw(st.sampled_from([(2, 2), (3, 3), (2, 3)]))
    return PoolSpec(
        pool=draw(st.sampled_from(["max", "avg"])),
        window=window,
        stride=draw(st.sampled_from([None, (1, 1), (2, 2), (1, 2)])),
        padding=draw(st.sampled_from(["valid", "same"])),
    )


@st.composite
def _residual(draw, channels: int) -> tuple[ResidualSpec, int]:
    first = draw(_conv(channels, padding="same"))
    if draw(st.booleans()):  # the block keeps the shape: an identity skip
        first = dataclasses.replace(first, filters=channels, stride=(1, 1))
    body = [first]
    if draw(st.booleans()):
        body.append(draw(_norm(first.filters)))
    if draw(st.booleans()):
        body.append(ConvSpec(filters=first.filters, kernel=3, padding="same"))
    activation = draw(st.sampled_from(["relu", "identity", "gelu"]))
    return ResidualSpec(layers=tuple(body), activation=activation), first.filters


@st.composite
def _specs(draw) -> ModelSpec:
    """Small valid specs: a few conv / pool / norm / residual / activation / dropout
    layers, flatten or global pooling, an optional hidden dense layer, the logits."""
    channels = draw(st.sampled_from([1, 2, 3]))
    input_shape = (draw(st.integers(5, 10)), draw(st.integers(5, 10)), channels)
    layers = []
    kinds = [
        "conv",
        "conv_pool",
        "winograd",
        "pool",
        "norm",
        "residual",
        "activation",
        "dropout",
    ]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind in ("conv", "conv_pool"):
            layers.append(draw(_conv(channels)))
            channels = layers[-1].filters
            if kind == "conv_pool":  # kernels.plan may crop the conv's dead border
                layers.append(draw(_pool()))
        elif kind == "winograd":  # 16 channels into a 3x3 stride-1 conv
            first, second = draw(_conv(channels)), draw(_conv(16))
            layers.append(dataclasses.replace(first, filters=16, groups=1))
            layers.append(
                dataclasses.replace(
                    second, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), groups=1
                )
            )
            channels = second.filters
        elif kind == "pool":
            layers.append(draw(_pool()))
        elif kind == "norm":
            layers.append(draw(_norm(channels)))
        elif kind == "residual":
            block, channels = draw(_residual(channels))
            layers.append(block)
        elif kind == "activation":
            layers.append(ActivationSpec(draw(st.sampled_from(ACTIVATIONS))))
        else:
            layers.append(DropoutSpec(rate=draw(st.sampled_from([0.0, 0.3]))))
    head = draw(st.sampled_from(["flatten", "max", "avg"]))
    layers.append(FlattenSpec() if head == "flatten" else GlobalPoolSpec(pool=head))
    if draw(st.booleans()):
        units = draw(st.sampled_from([4, 8]))
        layers.append(DenseSpec(units, activation=draw(st.sampled_from(ACTIVATIONS))))
        if draw(st.booleans()):
            layers.append(draw(_norm(units, flat=True)))
        if draw(st.booleans()):
            layers.append(DropoutSpec(rate=0.5))
    num_classes = draw(st.integers(2, 5))
    layers.append(DenseSpec(num_classes, use_bias=draw(st.booleans())))
    spec = ModelSpec(input_shape, num_classes, tuple(layers), name="generated")
    try:
        shapes.infer(spec)
    except SpecError:
        assume(False)
    return spec


def _check_generated(spec: ModelSpec, training: bool, seed: int) -> None:
    if training:
        spec = dataclasses.replace(spec, layers=_without_dropout(spec.layers))
    images, labels = _random_batch(spec, seed)
    _check(_random_model(spec, seed), images, labels, training=training)


_HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow  # ~25 s: 20 networks built and compiled in both frameworks
@settings(max_examples=20, derandomize=True, **_HYPOTHESIS)
@given(spec=_specs(), training=st.booleans(), seed=st.integers(0, 2**16))
def test_generated_spec_matches_keras(spec, training, seed):
    _check_generated(spec, training, seed)


@pytest.mark.slow
@settings(max_examples=200, derandomize=True, **_HYPOTHESIS)
@given(spec=_specs(), training=st.booleans(), seed=st.integers(0, 2**16))
def test_many_generated_specs_match_keras(spec, training, seed):
    _check_generated(spec, training, seed)


# --------------------------------------------------------------------------- real data
_read_mnist = mnist_files.read_mnist


@pytest.fixture(scope="module")
def mnist_batch():
    batch = _read_mnist(32)
    if batch is None:
        pytest.skip(f"raw MNIST files not found in {SHARED_DATA / 'mnist'}")
    return batch


class MnistCase(typing.NamedTuple):
    preset: str
    kwargs: dict
    training: bool = False
    slow: bool = False
    # kernels="auto" runs the 3x3 stride-1 convs as Winograd, which flips a few
    # near-ties on a real MNIST batch (exact zeros stay exact): see WINOGRAD_GRAD_RTOL
    near_ties: bool = False
    grad_rtol: float = GRAD_RTOL


MNIST_CASES = [
    MnistCase("keras_mnist", {}),
    MnistCase("lenet5", {}),  # images padded to 32x32
    MnistCase("digits_cnn", {"input_shape": (28, 28, 1)}),
    MnistCase("vgg_cifar", {"input_shape": (28, 28, 1)}, slow=True, near_ties=True),
    MnistCase("resnet_cifar", {"input_shape": (28, 28, 1)}, slow=True, near_ties=True),
    MnistCase(
        "resnet_cifar",
        {"input_shape": (28, 28, 1)},
        training=True,
        slow=True,
        grad_rtol=RESNET20_TRAIN_GRAD_RTOL,
    ),
]


def _mnist_params(slow: bool):
    for case in MNIST_CASES:
        if case.slow != slow:
            continue
        choices = NEAR_TIE_KERNELS if case.near_ties else dict.fromkeys(KERNELS)
        for choice, grad_rtol in choices.items():
            mode = "train" if case.training else "eval"
            name = f"{case.preset}-{mode}-{choice}"
            yield pytest.param(case, choice, grad_rtol, id=name)


@functools.cache
def _initial_model(preset: str, kwargs: tuple):
    """The preset's model as build_model initialises it, built once per module run
    (_compare changes only its train/eval mode and runs clones)."""
    return models.build_model(models.PRESETS[preset](**dict(kwargs)))


def _mnist_images(batch, spec: ModelSpec):
    """The batch's digits padded to the preset's input size."""
    images, labels = batch
    pad = (spec.input_shape[0] - images.shape[1]) // 2
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))), labels


def _check_mnist(batch, case: MnistCase, choice: str, grad_rtol: float | None):
    """A preset at its real initialisation (zero biases: exact zeros before each ReLU
    on the blank background) on real digits, padded to the preset's input size."""
    model = _initial_model(case.preset, tuple(case.kwargs.items()))
    images, labels = _mnist_images(batch, model.spec)
    expected, got = _compare(
        model, images, labels, training=case.training, kernels=(choice,)
    )
    where = f"{case.preset} kernels={choice}"
    _assert_matches(expected, got[choice], where, grad_rtol=grad_rtol or case.grad_rtol)


@pytest.mark.parametrize("case, choice, grad_rtol", _mnist_params(slow=False))
def test_mnist_batch_matches_keras(mnist_batch, case, choice, grad_rtol):
    _check_mnist(mnist_batch, case, choice, grad_rtol)


@pytest.mark.slow
@pytest.mark.parametrize("case, choice, grad_rtol", _mnist_params(slow=True))
def test_mnist_batch_on_large_presets_matches_keras(
    mnist_batch, case, choice, grad_rtol
):
    _check_mnist(mnist_batch, case, choice, grad_rtol)


@jax.custom_jvp
def _relu_with_slope_1_at_0(x):
    return jax.nn.relu(x)


@_relu_with_slope_1_at_0.defjvp
def _relu_with_slope_1_at_0_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jax.nn.relu(x), jnp.where(x >= 0, dx, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vgg_cifar", "resnet_cifar"])
def test_winograd_tolerance_still_catches_a_wrong_relu_gradient(
    mnist_batch, preset, monkeypatch
):
    """A ReLU whose derivative at 0 is 1 (the same logits; gradients flow through the
    blank background's exact zeros) fails the check that kernels="auto" passes on real
    digits at WINOGRAD_GRAD_RTOL. ReLU + max-pool fusion is off, so that every ReLU is
    the mutated one."""
    monkeypatch.setitem(layers.ACTIVATIONS, "relu", _relu_with_slope_1_at_0)
    model = nnx.clone(_initial_model(preset, (("input_shape", (28, 28, 1)),)))
    model.eval()
    images, labels = _mnist_images(mnist_batch, model.spec)
    expected = Result(*_twin(model).run(images, labels, False))
    models.set_kernels(model, "auto", fuse_relu_pool=False)
    # traced afresh (a cached trace of another test would hold the right ReLU)
    logits, grads = nnx.jit(_step)(model, jnp.asarray(images), jnp.asarray(labels))
    got = Result(np.asarray(logits), {k: np.asarray(v) for k, v in grads.items()}, {})
    np.testing.assert_allclose(got.logits, expected.logits, **LOGITS_TOL)
    with pytest.raises(AssertionError, match="gradient of"):
        _assert_matches(expected, got, preset, grad_rtol=WINOGRAD_GRAD_RTOL)
