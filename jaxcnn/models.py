"""Presets, the sweepable `simple_cnn` family, spec loading, `build_model`, `features`.

Importing this module does not import JAX: presets and `load_spec` serve
`jaxcnn summary`, and `build_model` loads Flax on first use.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from jaxcnn import architectures, shapes
from jaxcnn import spec as spec_lib
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ActivationSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    GlobalPoolSpec,
    Kernels,
    LayerSpec,
    ModelConfig,
    ModelSpec,
    NormSpec,
    Padding,
    PoolSpec,
    Precision,
    ResidualSpec,
    TrainConfig,
    coerce,
)

if TYPE_CHECKING:
    import jax
    from flax import nnx

Shape3 = tuple[int, int, int]


# --------------------------------------------------------------------------- presets
def keras_mnist(input_shape: Shape3 = (28, 28, 1), num_classes: int = 10) -> ModelSpec:
    """The classic Keras MNIST convnet: 93,322 parameters at 28x28x1.

    Output shapes 26x26x32, 13x13x32, 11x11x64, 5x5x64, 3x3x64, 576, 64, 10. Chollet's
    Deep Learning with Python (1st ed., 5.1); its training there is recipe "book"
    (jaxcnn.recipes).
    """
    return ModelSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        name="keras_mnist",
        layers=(
            ConvSpec(filters=32, kernel=3, activation="relu"),
            PoolSpec(pool="max", window=2),
            ConvSpec(filters=64, kernel=3, activation="relu"),
            PoolSpec(pool="max", window=2),
            ConvSpec(filters=64, kernel=3, activation="relu"),
            FlattenSpec(),
            DenseSpec(units=64, activation="relu"),
            DenseSpec(units=num_classes),
        ),
    )


def lenet5(input_shape: Shape3 = (32, 32, 1), num_classes: int = 10) -> ModelSpec:
    """LeCun et al. (1998) LeNet-5 with tanh and average pooling: 61,706 params at 32x32x1.

    C1 conv 6@5x5 -> S2 avg pool 2 -> C3 conv 16@5x5 -> S4 avg pool 2 -> C5 conv 120@5x5
    -> F6 dense 84 -> dense num_classes. Inputs smaller than 32x32 (e.g. 28x28 MNIST) get
    'same' padding in C1, which reproduces the classic 28x28 C1 maps from a 28x28 image
    (as LeNet's 2-pixel border did), so the rest of the network is unchanged. No recipe:
    the paper's training (stochastic diagonal Levenberg-Marquardt, RBF outputs) is not
    one jaxcnn can run.
    """
    small = input_shape[0] < 32 or input_shape[1] < 32
    return ModelSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        name="lenet5",
        layers=(
            ConvSpec(
                filters=6,
                kernel=5,
                padding="same" if small else "valid",
                activation="tanh",
            ),
            PoolSpec(pool="avg", window=2),
            ConvSpec(filters=16, kernel=5, activation="tanh"),
            PoolSpec(pool="avg", window=2),
            ConvSpec(filters=120, kernel=5, activation="tanh"),
            FlattenSpec(),
            DenseSpec(units=84, activation="tanh"),
            DenseSpec(units=num_classes),
        ),
    )


def vgg_cifar(input_shape: Shape3 = (32, 32, 3), num_classes: int = 10) -> ModelSpec:
    """VGG-style CIFAR net: conv3x3 same 64,64, pool, 128,128, pool, 256,256, pool, dense.

    1,186,378 params and 305.6 MFLOPs forward per 32x32x3 image (about 917 MFLOPs per
    training step, forward + backward = 3x forward).
    """
    layers: list[LayerSpec] = []
    for filters in (64, 128, 256):
        layers += [
            ConvSpec(filters=filters, kernel=3, padding="same", activation="relu"),
            ConvSpec(filters=filters, kernel=3, padding="same", activation="relu"),
            PoolSpec(pool="max", window=2),
        ]
    layers += [FlattenSpec(), DenseSpec(units=num_classes)]
    return ModelSpec(input_shape, num_classes, tuple(layers), name="vgg_cifar")


MAX_BLOCKS_PER_STAGE = 1000  # ResNet-6002; He et al. went up to 200 (ResNet-1202)


def resnet_cifar(
    input_shape: Shape3 = (32, 32, 3), num_classes: int = 10, blocks_per_stage: int = 3
) -> ModelSpec:
    """He et al. (2016) CIFAR ResNet: depth 6*blocks_per_stage + 2 (3 -> ResNet-20).

    Stem conv 16 + batch norm + relu, three stages of basic blocks with 16, 32, 64 filters
    (the first block of stages 2 and 3 has stride 2; its skip path is a 1x1 conv),
    global average pooling and a dense classifier. The paper's CIFAR-10 training is
    recipe "paper" (jaxcnn.recipes).
    """
    if not 1 <= blocks_per_stage <= MAX_BLOCKS_PER_STAGE:
        raise SpecError(
            f"resnet_cifar: blocks_per_stage must be in 1..{MAX_BLOCKS_PER_STAGE}, "
            f"got {blocks_per_stage}"
        )

    def conv(filters, stride=1):
        return ConvSpec(
            filters=filters, kernel=3, stride=stride, padding="same", use_bias=False
        )

    layers: list[LayerSpec] = [conv(16), NormSpec(norm="batch"), ActivationSpec("relu")]
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            body = (
                conv(filters, stride),
                NormSpec(norm="batch"),
                ActivationSpec("relu"),
                conv(filters),
                NormSpec(norm="batch"),
            )
            layers.append(ResidualSpec(layers=body, activation="relu"))
    layers += [GlobalPoolSpec(pool="avg"), DenseSpec(units=num_classes)]
    return ModelSpec(input_shape, num_classes, tuple(layers), name="resnet_cifar")


def digits_cnn(input_shape: Shape3 = (8, 8, 1), num_classes: int = 10) -> ModelSpec:
    """Small convnet for scikit-learn's 8x8 digits (the embedded default): 43,050 params."""
    return ModelSpec(
        input_shape=input_shape,
        num_classes=num_classes,
        name="digits_cnn",
        layers=(
            ConvSpec(filters=32, kernel=3, padding="same", activation="relu"),
            ConvSpec(filters=32, kernel=3, padding="same", activation="relu"),
            PoolSpec(pool="max", window=2),
            FlattenSpec(),
            DropoutSpec(rate=0.25),
            DenseSpec(units=64, activation="relu"),
            DenseSpec(units=num_classes),
        ),
    )


# --------------------------------------------------------------------------- ImageNet
# The published ImageNet networks at torchvision's configurations. Their published
# weights import exactly (jaxcnn.interop): parameter counts equal the source's, and at
# the published 224x224 input torchvision's adaptive average pooling (to 7x7 for VGG,
# 6x6 for AlexNet) receives a map of that size already, so it is the identity and the
# spec leaves it out. The networks take the source's normalised input (ImageNet mean and
# std, channels RGB); `IMAGENET_PREPROCESSING` says how an image becomes one.
IMAGENET_SHAPE: Shape3 = (224, 224, 3)


def _vgg16(batch_norm: bool, num_classes: int) -> list[LayerSpec]:
    layers: list[LayerSpec] = []
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            if batch_norm:  # conv -> batch norm -> relu, as torchvision's vgg16_bn
                layers += [
                    ConvSpec(filters=filters, kernel=3, padding=1),
                    NormSpec(norm="batch", momentum=0.9, epsilon=1e-5),
                    ActivationSpec("relu"),
                ]
            else:
                layers.append(
                    ConvSpec(filters=filters, kernel=3, padding=1, activation="relu")
                )
        layers.append(PoolSpec(pool="max", window=2))
    layers += [
        FlattenSpec(),
        DenseSpec(units=4096, activation="relu"),
        DropoutSpec(rate=0.5),
        DenseSpec(units=4096, activation="relu"),
        DropoutSpec(rate=0.5),
        DenseSpec(units=num_classes),
    ]
    return layers


def vgg16(input_shape: Shape3 = IMAGENET_SHAPE, num_classes: int = 1000) -> ModelSpec:
    """Simonyan & Zisserman (2015) VGG-16 (configuration D): 138,357,544 params at 224x224x3.

    13 conv 3x3 (padding 1, ReLU) in five blocks of 64, 128, 256, 512, 512 filters, each
    block ending in a 2x2 max pool (224 -> 7), then dense 4096, dropout, dense 4096,
    dropout, dense num_classes: torchvision's `vgg16` and Keras's `VGG16` (which has no
    dropout layers; inference is the same).
    """
    return ModelSpec(
        input_shape,
        num_classes,
        tuple(_vgg16(False, num_classes)),
        name="vgg16",
    )


def vgg16_bn(
    input_shape: Shape3 = IMAGENET_SHAPE, num_classes: int = 1000
) -> ModelSpec:
    """VGG-16 with batch norm after every conv (torchvision's `vgg16_bn`): 138,365,992
    params at 224x224x3 (the convs keep their biases, as torchvision's do)."""
    return ModelSpec(
        input_shape,
        num_classes,
        tuple(_vgg16(True, num_classes)),
        name="vgg16_bn",
    )


def alexnet(input_shape: Shape3 = IMAGENET_SHAPE, num_classes: int = 1000) -> ModelSpec:
    """Krizhevsky et al. (2012) AlexNet, one-tower, as torchvision's `alexnet` (after
    "One weird trick", Krizhevsky 2014): 61,100,840 params at 224x224x3.

    conv 64@11x11 stride 4 padding 2 -> max pool 3 stride 2 -> conv 192@5x5 padding 2
    -> max pool -> conv 384, 256, 256 @3x3 padding 1 -> max pool (224 -> 6x6x256) ->
    dropout, dense 4096, dropout, dense 4096, dense num_classes; ReLU throughout.
    """
    return ModelSpec(
        input_shape,
        num_classes,
        (
            ConvSpec(filters=64, kernel=11, stride=4, padding=2, activation="relu"),
            PoolSpec(pool="max", window=3, stride=2),
            ConvSpec(filters=192, kernel=5, padding=2, activation="relu"),
            PoolSpec(pool="max", window=3, stride=2),
            ConvSpec(filters=384, kernel=3, padding=1, activation="relu"),
            ConvSpec(filters=256, kernel=3, padding=1, activation="relu"),
            ConvSpec(filters=256, kernel=3, padding=1, activation="relu"),
            PoolSpec(pool="max", window=3, stride=2),
            FlattenSpec(),
            DropoutSpec(rate=0.5),
            DenseSpec(units=4096, activation="relu"),
            DropoutSpec(rate=0.5),
            DenseSpec(units=4096, activation="relu"),
            DenseSpec(units=num_classes),
        ),
        name="alexnet",
    )


# --------------------------------------------------------------------------- family
def simple_cnn(
    filters: int = 32,
    kernel: int = 3,
    stride: int = 1,
    padding: Padding = "valid",
    pool: Literal["max", "avg", "sum", "lp", "geometric", "harmonic", "none"] = "max",
    pool_window: int = 2,
    depth: int = 2,
    width_multiplier: float = 1.0,
    dense_units: int = 64,
    dropout: float = 0.0,
    activation: spec_lib.Activation = "relu",
    input_shape: Shape3 = (28, 28, 1),
    num_classes: int = 10,
) -> ModelSpec:
    """A plain convnet whose fields are the swept knobs.

    `depth` stages of [conv(kernel, stride, padding, activation) -> pool(pool_window)];
    stage i has round(filters * width_multiplier) * 2**i filters (doubling per stage, as in
    keras_mnist). pool="none" drops the pooling layers. Then flatten, dense(dense_units,
    activation) when dense_units > 0, dropout when dropout > 0, and dense(num_classes).
    A combination that shrinks the feature map below a kernel or window fails in
    `shapes.infer` with a SpecError naming the layer.
    """
    last_stage = filters * width_multiplier * 2 ** min(depth - 1, 64)
    checks = (
        (filters >= 1, f"filters must be >= 1, got {filters}"),
        (depth >= 1, f"depth must be >= 1, got {depth}"),
        (
            last_stage <= spec_lib.MAX_SIZE,
            f"the last of depth={depth} stages would have filters * width_multiplier "
            f"* 2**(depth - 1) = {last_stage:.4g} filters, over the limit of "
            f"{spec_lib.MAX_SIZE:,}; use a smaller depth, filters or width_multiplier",
        ),
        (width_multiplier > 0, f"width_multiplier must be > 0, got {width_multiplier}"),
        (
            dense_units >= 0,
            f"dense_units must be >= 0 (0 = no hidden dense), got {dense_units}",
        ),
    )
    for ok, message in checks:
        if not ok:
            raise SpecError(f"simple_cnn: {message}")
    width = max(1, round(filters * width_multiplier))
    layers: list[LayerSpec] = []
    for i in range(depth):
        layers.append(
            ConvSpec(
                filters=width * 2**i,
                kernel=kernel,
                stride=stride,
                padding=padding,
                activation=activation,
            )
        )
        if pool != "none":
            layers.append(PoolSpec(pool=pool, window=pool_window))
    layers.append(FlattenSpec())
    if dense_units > 0:
        layers.append(DenseSpec(units=dense_units, activation=activation))
    if dropout > 0:
        layers.append(DropoutSpec(rate=dropout))
    layers.append(DenseSpec(units=num_classes))
    return ModelSpec(input_shape, num_classes, tuple(layers), name="simple_cnn")


PRESETS: dict[str, Callable[..., ModelSpec]] = {
    "keras_mnist": keras_mnist,
    "lenet5": lenet5,
    "vgg_cifar": vgg_cifar,
    "resnet_cifar": resnet_cifar,
    "digits_cnn": digits_cnn,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "alexnet": alexnet,
}
FAMILIES: dict[str, Callable[..., ModelSpec]] = {"simple_cnn": simple_cnn}
PRESETS.update(
    architectures.PRESETS
)  # ResNet, GoogLeNet, ... (jaxcnn/architectures.py)
# The presets of published ImageNet networks (224x224x3 input, 299x299x3 for Inception
# v3; 1000 classes). jaxcnn.interop imports the published weights of each
# (`jaxcnn.interop.LAYOUTS`).
IMAGENET_PRESETS: tuple[str, ...] = (
    "vgg16",
    "vgg16_bn",
    "alexnet",
    *architectures.PRESETS,
)


def _call(fn: Callable[..., ModelSpec], name: str, args: dict[str, Any]) -> ModelSpec:
    """Calls a preset/family with type-checked keyword args (from TOML, JSON or --set)."""
    hints = typing.get_type_hints(fn)
    valid = list(inspect.signature(fn).parameters)
    kwargs = {}
    for key, value in args.items():
        if key not in valid:
            raise SpecError(
                f"model {name!r}: unknown argument {key!r}; valid arguments are {', '.join(valid)}"
            )
        kwargs[key] = coerce.convert(
            value, hints[key], f"model {name!r}: argument {key!r}"
        )
    try:
        return fn(**kwargs)
    except SpecError as e:
        raise SpecError(f"model {name!r} with {kwargs}: {e}") from None


def preset(name: str, **kwargs: Any) -> ModelSpec:
    """The spec of a preset or family by name, e.g. preset("simple_cnn", filters=64)."""
    table = {**PRESETS, **FAMILIES}
    if name not in table:
        raise SpecError(_unknown(name))
    return _call(table[name], name, kwargs)


def _unknown(name: str) -> str:
    return (
        f"unknown model {name!r}; presets are {', '.join(PRESETS)}; families are "
        f"{', '.join(FAMILIES)}; or give a path to a .toml/.json spec file"
    )


def _with_overrides(spec: ModelSpec, input_shape, num_classes) -> ModelSpec:
    """Replaces the input shape / class count of a finished spec.

    A new num_classes also resizes a final dense layer whose units equal the old one
    (the logits layer), so a file spec can be retargeted to another dataset.
    """
    changes: dict[str, Any] = {}
    if input_shape is not None:
        changes["input_shape"] = coerce.convert(input_shape, Shape3, "input_shape")
    if num_classes is not None:
        changes["num_classes"] = n = coerce.convert(num_classes, int, "num_classes")
        last = spec.layers[-1]
        if isinstance(last, DenseSpec) and last.units == spec.num_classes and n >= 1:
            changes["layers"] = (*spec.layers[:-1], dataclasses.replace(last, units=n))
    return dataclasses.replace(spec, **changes) if changes else spec


def load_spec(
    model: str | ModelSpec | ModelConfig,
    *,
    input_shape: Shape3 | None = None,
    num_classes: int | None = None,
) -> ModelSpec:
    """Resolves a model reference to a ModelSpec.

    Args:
      model: a preset or family name, a path to a .toml/.json spec file, a ModelSpec, or
        a ModelConfig (name + args, or an inline `spec`). `args` may hold family knobs
        and, for any model, input_shape / num_classes.
      input_shape, num_classes: overrides applied last (e.g. from --input-shape).

    Raises:
      SpecError: unknown name (listing presets and families), bad args, or a bad file.
    """
    if isinstance(model, ModelSpec):
        return _with_overrides(model, input_shape, num_classes)
    if isinstance(model, str):
        model = ModelConfig(name=model)
    if not isinstance(model, ModelConfig):
        raise SpecError(
            f"expected a model name, spec file, ModelSpec or ModelConfig, got {model!r}"
        )
    args = dict(model.args)
    if model.spec is not None or model.name not in {**PRESETS, **FAMILIES}:
        # Inline specs and files take only shape overrides from args.
        shape_args = {
            k: args.pop(k) for k in ("input_shape", "num_classes") if k in args
        }
        if args:
            raise SpecError(
                f"model {model.name!r}: unknown argument {sorted(args)[0]!r}; a spec file or "
                "inline spec accepts only input_shape and num_classes"
            )
        if model.spec is not None:
            spec = model.spec
        elif (
            pathlib.Path(model.name).suffix in (".toml", ".json")
            or pathlib.Path(model.name).is_file()
        ):
            spec = spec_lib.load_spec_file(model.name)
        else:
            raise SpecError(_unknown(model.name))
        spec = _with_overrides(
            spec, shape_args.get("input_shape"), shape_args.get("num_classes")
        )
        return _with_overrides(spec, input_shape, num_classes)
    # Presets and families size their layers from the shape (last dense = num_classes).
    if input_shape is not None:
        args["input_shape"] = input_shape
    if num_classes is not None:
        args["num_classes"] = num_classes
    return preset(model.name, **args)


# --------------------------------------------------------------------------- build
def build_model(
    spec: ModelSpec,
    *,
    rngs: nnx.Rngs | None = None,
    seed: int = 0,
    kernels: Kernels = "auto",
    precision: Precision = "float32",
    precision_layers: Mapping[str, Precision] | None = None,
    upto: str | None = None,
) -> nnx.Module:
    """Builds the Flax NNX model of `spec`.

    The spec is checked by `shapes.infer` first, so an impossible network raises a
    SpecError before anything reaches JAX. The model maps [batch, H, W, C] float32 to
    logits [batch, num_classes] for any H, W the spec can take; `model(x, rngs)` takes
    this call's dropout randomness as Flax modules do. It starts in training mode
    (`model.eval()` for inference).

    Construction needs no concrete values, so it runs under `nnx.vmap` (with
    `nnx.split_rngs`) to build an ensemble.

    Args:
      spec: the network (or a preset name / spec file, as `load_spec` takes).
      rngs: initial randomness, Flax style: parameters from its `params` stream, the
        model's own dropout stream from `dropout` (both fall back to `default`, as
        in Flax); with neither a dropout nor a default stream, dropout keys derive
        from the parameter key. Replaces `seed`.
      seed: without `rngs`, the model is a deterministic function of this int.
      kernels: the conv / pool implementations ("auto", "xla" or "fast", see
        jaxcnn.kernels.plan; `set_kernels` changes them later).
      precision: "float32" or "bfloat16": the operand dtype of the convs and matmuls
        (jaxcnn.precision); the parameters are float32 either way.
      precision_layers: per-layer precision by conv / dense path, e.g.
        {"conv_0": "float32"} keeps the first conv in float32.
      upto: build a backbone: the layers up to and including this top-level layer
        name (e.g. "flatten_5"), with the parameter paths and initial values of the
        whole network built from the same seed; the model returns that layer's
        output. The spec may then lack a classifier head: a spec ending in a feature
        map or a flatten builds, whatever its num_classes (`model.spec` is then the
        spec with a flatten / dense head appended, which is never built).

    Raises:
      SpecError: a bad spec, seed, rngs, kernels, precision, `precision_layers` path
        or `upto` name.
    """
    if not isinstance(spec, ModelSpec):
        spec = load_spec(spec)
    if upto is not None:
        spec = _backbone_spec(spec, upto)
    summary = shapes.infer(spec)
    from jaxcnn import layers  # Flax loads here, not at import time
    from jaxcnn.kernels import plan

    choice = plan.KernelChoice(
        kernels=kernels,
        precision=precision,
        precision_layers=tuple(sorted((precision_layers or {}).items())),
    )
    _check_layer_paths(spec, choice)
    return layers.CNN(
        spec, summary, rngs=_model_rngs(rngs, seed), kernels=choice, upto=upto
    )


def build_run_model(spec: ModelSpec, train: TrainConfig, seed: int | None = None):
    """`build_model` with a run config's kernels, precision and fp32 layers.

    Args:
      spec: the run's model spec.
      train: the run config's train section.
      seed: the init seed; default `train.seed`.
    """
    return build_model(
        spec,
        seed=train.seed if seed is None else seed,
        kernels=train.kernels,
        precision=train.precision,
        precision_layers=dict.fromkeys(train.fp32_layers, "float32"),
    )


def _check_layer_paths(spec: ModelSpec, choice, caller: str = "build_model") -> None:
    """Raises a SpecError for a per-layer override naming no conv / dense of `spec`."""
    from jaxcnn.kernels import plan

    plans = list(plan.model_plan(spec, spec.input_shape, choice, "cpu").walk())
    checks = (
        ("conv", choice.conv_layers, [p.name for p in plans if p.conv]),
        ("conv or dense", choice.precision_layers, [p.name for p in plans if p.dtype]),
    )
    for kind, overrides, valid in checks:
        for name, _ in overrides:
            if name not in valid:
                raise SpecError(
                    f"{caller}: no {kind} layer {name!r}; {kind} layers are "
                    f"{', '.join(valid)}"
                )


def _model_rngs(rngs: nnx.Rngs | None, seed: int) -> nnx.Rngs:
    """The model's own params and dropout streams, from `rngs` or else from `seed`."""
    import jax
    from flax import nnx

    if rngs is None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise SpecError(
                f"seed must be an int, got {seed!r}; pass rngs=nnx.Rngs(...) for a "
                "traced or split key (e.g. under nnx.vmap)"
            )
        dropout = jax.random.fold_in(jax.random.key(seed), 1)
        return nnx.Rngs(params=seed, dropout=dropout)
    if not isinstance(rngs, nnx.Rngs):
        raise SpecError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
    streams = set(rngs)
    if not streams & {"params", "default"}:
        raise SpecError(
            f"rngs has no 'params' or 'default' stream (it has "
            f"{', '.join(sorted(streams)) or 'none'}); use e.g. nnx.Rngs(0) or "
            "nnx.Rngs(params=0, dropout=1)"
        )
    params = rngs.params()
    has_dropout = streams & {"dropout", "default"}
    dropout = rngs.dropout() if has_dropout else jax.random.fold_in(params, 1)
    return nnx.Rngs(params=params, dropout=dropout)


def _backbone_spec(spec: ModelSpec, upto: str) -> ModelSpec:
    """`spec`, with a classifier head appended if it has none, checking `upto`.

    The head is never built (a backbone stops at `upto`); it only lets the spec pass
    `shapes.infer` and the kernel plan, which check for logits.
    """
    names = [f"{layer.type}_{i}" for i, layer in enumerate(spec.layers)]
    if upto not in names:
        raise SpecError(
            f"upto={upto!r} is no top-level layer of model {spec.name!r}; its layers "
            f"are {', '.join(names)}"
        )
    rows = shapes.infer_layers(spec.layers, spec.input_shape)
    out = [r for r in rows if "." not in r.index][-1].output_shape
    if tuple(out) == (spec.num_classes,):
        return spec
    head = (FlattenSpec(),) if len(out) > 1 else ()
    head += (DenseSpec(units=spec.num_classes),)
    return dataclasses.replace(spec, layers=(*spec.layers, *head))


def features(
    model: nnx.Module,
    images: jax.Array,
    layers: Sequence[str] | str,
    *,
    rngs: nnx.Rngs | None = None,
) -> dict[str, jax.Array]:
    """Activations of named layers for a batch: jittable, in the model's current mode.

    Runs the model's top-level layers up to the last one named, with its kernel choice,
    as `model(images, rngs)` would: eval mode for inference features, train mode for
    an auxiliary loss (dropout masks drawn, batch-norm statistics moved). The mode is
    left as it was. Works under `nnx.jit` (layer names are static).

    Args:
      model: a model from `build_model` (a backbone too).
      images: [batch, H, W, C] float32.
      layers: top-level layer names, e.g. ("conv_0", "pool_1"), or one name.
      rngs: dropout randomness for this call, as in `model(images, rngs)`.

    Returns:
      {name: [batch, ...] output of that layer}.

    Raises:
      SpecError: a model not from build_model, a name that is no top-level layer (the
        message lists them), or images the model cannot take.
    """
    from jaxcnn import layers as layers_lib

    if not isinstance(model, layers_lib.CNN):
        raise SpecError(
            f"features takes a model from build_model, got {type(model).__name__}"
        )
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    return model.features(images, names, rngs)


def set_kernels(
    model: nnx.Module,
    kernels: Kernels | None = None,
    *,
    conv: Literal["xla", "im2col", "winograd"] | None = None,
    pool: Literal["xla", "fast"] | None = None,
    crop: bool | None = None,
    fuse_relu_pool: bool | None = None,
    conv_layers: Mapping[str, Literal["xla", "im2col", "winograd"]] | None = None,
    precision: Precision | None = None,
    precision_layers: Mapping[str, Precision] | None = None,
) -> None:
    """Sets the kernel choice of a built model (one frozen value, see KernelChoice).

    The whole choice is replaced: an override not given is cleared (the plan then
    decides from `kernels`, the precision from `precision`). The parameters are
    untouched (float32 in every precision); a jitted function of the model recompiles.

    Args:
      model: a model from `build_model`.
      kernels: "auto", "xla" or "fast"; None keeps the model's.
      conv: force "xla", "im2col" or "winograd" on every ungrouped conv.
      pool: force "xla" or "fast" on every pool.
      crop: force border cropping of conv -> pool pairs on or off.
      fuse_relu_pool: force ReLU + max-pool fusion on or off.
      conv_layers: per-layer conv overrides by module path, e.g. {"conv_0": "xla"}.
      precision: "float32" or "bfloat16" (jaxcnn.precision); None keeps the model's.
      precision_layers: per-layer precision by conv / dense path, e.g.
        {"conv_0": "float32"}.

    Raises:
      SpecError: a bad value, or a `conv_layers` path that is no conv of the model
        (`precision_layers`: no conv or dense).
    """
    from jaxcnn.kernels import plan

    current = getattr(model, "kernel_choice", None)
    if not isinstance(current, plan.KernelChoice):
        raise SpecError(
            f"set_kernels takes a model from build_model, got {type(model).__name__}"
        )
    choice = plan.KernelChoice(
        kernels=current.kernels if kernels is None else kernels,
        conv=conv,
        pool=pool,
        crop=crop,
        fuse_relu_pool=fuse_relu_pool,
        conv_layers=tuple(sorted((conv_layers or {}).items())),
        precision=current.precision if precision is None else precision,
        precision_layers=tuple(sorted((precision_layers or {}).items())),
    )
    _check_layer_paths(model.spec, choice, "set_kernels")
    model.kernel_choice = choice


def param_paths(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Trainable parameter paths and shapes, e.g. {"conv_0/kernel": (3, 3, 1, 32), ...}.

    These are the paths `--freeze` regexes are searched in. Batch-norm statistics and RNG
    state are not parameters and are not listed.
    """
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    return {
        "/".join(str(part) for part in path): tuple(leaf.shape)
        for path, leaf in nnx.to_flat_state(state)
    }
