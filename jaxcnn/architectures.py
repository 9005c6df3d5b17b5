"""Published ImageNet architectures as model specs, at torchvision's configuration.

Each function returns a plain `ModelSpec` (layer tables, residual and branch blocks),
so `jaxcnn summary resnet50` shows its shapes, parameters, FLOPs and receptive fields
before anything compiles. Parameter counts at 224x224x3 (299x299x3 for Inception v3)
equal torchvision's `sum(p.numel() for p in model.parameters())`; batch-norm running
statistics are jaxcnn's non-trainable parameters, as they are torchvision's buffers.
GoogLeNet and Inception v3 leave out the auxiliary heads, which only train. ResNet-50's
and the DenseNets' arguments also build Keras's configurations of them.

Batch norms keep jaxcnn's defaults (`NormSpec`: momentum 0.99 in Flax's convention)
except epsilon, which is the source's (1e-5; 1e-3 in GoogLeNet and Inception v3).
Where torchvision pools in ceil mode, the presets pad the bottom/right of the pool
explicitly for their input size (max pooling pads with -inf, so the windows are the
same); at the sizes where ceil and floor mode agree no padding is added.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ActivationSpec,
    BranchesSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    GlobalPoolSpec,
    LayerSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
    ResidualSpec,
)

Shape3 = tuple[int, int, int]
IMAGENET = (224, 224, 3)


def _conv_bn(
    filters: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    *,
    groups: int = 1,
    activation: str | None = "relu",
    epsilon: float = 1e-5,
    bias: bool = False,
    scale: bool = True,
    momentum: float = 0.99,
) -> list[LayerSpec]:
    """conv (no bias unless `bias`) -> batch norm (without a scale unless `scale`)
    [-> activation]: torchvision's usual unit."""
    layers: list[LayerSpec] = [
        ConvSpec(
            filters=filters,
            kernel=kernel,
            stride=stride,
            padding=padding,
            groups=groups,
            use_bias=bias,
        ),
        NormSpec(norm="batch", epsilon=epsilon, scale=scale, momentum=momentum),
    ]
    if activation is not None:
        layers.append(ActivationSpec(activation=activation))
    return layers


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _ceil_pool(size: int, window: int, stride: int) -> tuple[PoolSpec, int]:
    """A max pool computing what PyTorch's ceil_mode=True pool does at `size`, and the
    output size: the bottom/right padding that makes floor mode reach ceil mode's
    last window (which PyTorch starts inside the input)."""
    out = math.ceil((size - window) / stride) + 1
    if (out - 1) * stride >= size:  # PyTorch drops a window starting in the padding
        out -= 1
    extra = max((out - 1) * stride + window - size, 0)
    pool = PoolSpec(
        pool="max", window=window, stride=stride, padding=((0, extra), (0, extra))
    )
    return pool, out


# --------------------------------------------------------------------------- ResNet
def _basic_block(cin: int, planes: int, stride: int) -> ResidualSpec:
    body = [
        *_conv_bn(planes, 3, stride, 1),
        *_conv_bn(planes, 3, 1, 1, activation=None),
    ]
    projects = stride != 1 or cin != planes
    return ResidualSpec(layers=body, activation="relu", projection_norm=projects)


StrideOn = Literal["1x1", "3x3"]
STRIDE_ON: tuple[str, ...] = get_args(StrideOn)


def _bottleneck(
    cin: int,
    planes: int,
    stride: int,
    stride_on: StrideOn = "3x3",
    conv_bias: bool = False,
    epsilon: float = 1e-5,
) -> LayerSpec:
    """The bottleneck block: 1x1, 3x3, 1x1 convs, each with a batch norm; the stride is
    on the 3x3 conv (torchvision's v1.5) or on the first 1x1 conv (v1, Keras's).

    A block that changes the shape projects its input with a strided 1x1 conv and a
    batch norm. At torchvision's configuration (convs without bias, epsilon 1e-5) that
    is a `ResidualSpec` projection; otherwise the projection's bias and epsilon follow
    the arguments and the block is a `BranchesSpec` adding the projection (branch 0)
    and the body (branch 1), as Keras's ResNet50 builds it.
    """
    unit = {"epsilon": epsilon, "bias": conv_bias}
    first, second = (stride, 1) if stride_on == "1x1" else (1, stride)
    body = [
        *_conv_bn(planes, 1, first, **unit),
        *_conv_bn(planes, 3, second, 1, **unit),
        *_conv_bn(4 * planes, 1, activation=None, **unit),
    ]
    projects = stride != 1 or cin != 4 * planes
    if projects and (conv_bias or epsilon != 1e-5):
        shortcut = _conv_bn(4 * planes, 1, stride, activation=None, **unit)
        return BranchesSpec(
            branches=(tuple(shortcut), tuple(body)), join="add", activation="relu"
        )
    return ResidualSpec(layers=body, activation="relu", projection_norm=projects)


def _resnet(
    name: str,
    blocks: tuple[int, int, int, int],
    bottleneck: bool,
    input_shape: Shape3,
    num_classes: int,
    stride_on: StrideOn = "3x3",
    conv_bias: bool = False,
    epsilon: float = 1e-5,
) -> ModelSpec:
    if stride_on not in STRIDE_ON:
        raise SpecError(
            f"argument 'stride_on' must be one of {', '.join(map(repr, STRIDE_ON))} "
            f"(the conv of a bottleneck block that strides), got {stride_on!r}"
        )
    unit = {"epsilon": epsilon, "bias": conv_bias}
    layers: list[LayerSpec] = [
        *_conv_bn(64, 7, 2, 3, **unit),
        PoolSpec(pool="max", window=3, stride=2, padding=1),
    ]
    cin = 64
    for stage, (planes, count) in enumerate(
        zip((64, 128, 256, 512), blocks, strict=True)
    ):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            if bottleneck:
                layers.append(
                    _bottleneck(cin, planes, stride, stride_on, conv_bias, epsilon)
                )
                cin = 4 * planes
            else:
                layers.append(_basic_block(cin, planes, stride))
                cin = planes
    layers += [GlobalPoolSpec(pool="avg"), DenseSpec(units=num_classes)]
    return ModelSpec(input_shape, num_classes, tuple(layers), name=name)


def resnet18(input_shape: Shape3 = IMAGENET, num_classes: int = 1000) -> ModelSpec:
    """ResNet-18 (He et al. 2016) as torchvision builds it: 11,689,512 parameters."""
    return _resnet("resnet18", (2, 2, 2, 2), False, input_shape, num_classes)


def resnet34(input_shape: Shape3 = IMAGENET, num_classes: int = 1000) -> ModelSpec:
    """ResNet-34 as torchvision builds it: 21,797,672 parameters."""
    return _resnet("resnet34", (3, 4, 6, 3), False, input_shape, num_classes)


def resnet50(
    input_shape: Shape3 = IMAGENET,
    num_classes: int = 1000,
    stride_on: StrideOn = "3x3",
    conv_bias: bool = False,
    epsilon: float = 1e-5,
) -> ModelSpec:
    """ResNet-50 v1.5 (stride on the 3x3 conv) as torchvision builds it: 25,557,032
    parameters.

    `stride_on` is the conv of a stage's first block that strides ("3x3", or "1x1":
    ResNet v1), `conv_bias` gives every conv a bias and `epsilon` is batch norm's.
    Keras's ResNet50 is `stride_on="1x1", conv_bias=True, epsilon=1.001e-5`:
    25,636,712 parameters.
    """
    return _resnet(
        "resnet50",
        (3, 4, 6, 3),
        True,
        input_shape,
        num_classes,
        stride_on,
        conv_bias,
        epsilon,
    )


# --------------------------------------------------------------------------- SqueezeNet
def _fire(squeeze: int, expand1: int, expand3: int) -> list[LayerSpec]:
    """Squeeze 1x1, then 1x1 and 3x3 expansions concatenated (Iandola et al. 2016)."""
    return [
        ConvSpec(filters=squeeze, kernel=1, activation="relu"),
        BranchesSpec(
            branches=(
                (ConvSpec(filters=expand1, kernel=1, activation="relu"),),
                (ConvSpec(filters=expand3, kernel=3, padding=1, activation="relu"),),
            ),
        ),
    ]


def squeezenet1_1(input_shape: Shape3 = IMAGENET, num_classes: int = 1000) -> ModelSpec:
    """SqueezeNet 1.1 as torchvision builds it: 1,235,496 parameters."""
    h, w = (_conv_out(s, 3, 2, 0) for s in input_shape[:2])
    layers: list[LayerSpec] = [
        ConvSpec(filters=64, kernel=3, stride=2, activation="relu")
    ]
    stages = (
        ((16, 64, 64), (16, 64, 64)),
        ((32, 128, 128), (32, 128, 128)),
        ((48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)),
    )
    for fires in stages:
        (pool_h, h), (pool_w, w) = _ceil_pool(h, 3, 2), _ceil_pool(w, 3, 2)
        layers.append(_merge_pools(pool_h, pool_w))
        for fire in fires:
            layers += _fire(*fire)
    layers += [
        DropoutSpec(rate=0.5),
        ConvSpec(filters=num_classes, kernel=1, activation="relu"),
        GlobalPoolSpec(pool="avg"),
    ]
    return ModelSpec(input_shape, num_classes, tuple(layers), name="squeezenet1_1")


def _merge_pools(pool_h: PoolSpec, pool_w: PoolSpec) -> PoolSpec:
    """One pool with pool_h's padding along H and pool_w's along W."""
    return PoolSpec(
        pool="max",
        window=pool_h.window,
        stride=pool_h.stride,
        padding=(pool_h.padding[0], pool_w.padding[1]),
    )


# --------------------------------------------------------------------------- MobileNet
Padding = Literal["symmetric", "same"]
PADDINGS: tuple[str, ...] = get_args(Padding)


def _inverted_residual(
    cin: int, cout: int, stride: int, expand: int, pad: int | str, norm: dict
) -> list[LayerSpec]:
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection; with an
    identity skip when the shape is kept (Sandler et al. 2018). `pad`: the depthwise
    conv's padding; `norm`: the batch norms' epsilon and momentum."""
    hidden = cin * expand
    body: list[LayerSpec] = []
    if expand != 1:
        body += _conv_bn(hidden, 1, activation="relu6", **norm)
    body += _conv_bn(hidden, 3, stride, pad, groups=hidden, activation="relu6", **norm)
    body += _conv_bn(cout, 1, activation=None, **norm)
    if stride == 1 and cin == cout:
        return [ResidualSpec(layers=body)]
    return body


def mobilenet_v2(
    input_shape: Shape3 = IMAGENET,
    num_classes: int = 1000,
    padding: Padding = "symmetric",
    epsilon: float = 1e-5,
    momentum: float = 0.99,
) -> ModelSpec:
    """MobileNetV2 (width 1.0) as torchvision builds it: 3,504,872 parameters.

    `padding` is the 3x3 convs' ("symmetric": 1 on each side, torchvision's; "same":
    TF's, which for a stride-2 conv on an even size pads only the bottom and right, as
    Keras's ZeroPadding2D(correct_pad) before its valid stride-2 convs); `epsilon` and
    `momentum` are batch norm's. Keras's MobileNetV2 (alpha 1.0) is `padding="same",
    epsilon=1e-3, momentum=0.999`: the same 3,504,872 parameters and 34,112 batch-norm
    statistics, Keras's `count_params()` of 3,538,984.
    """
    if padding not in PADDINGS:
        raise SpecError(
            f"argument 'padding' must be one of {', '.join(map(repr, PADDINGS))} "
            f"(the 3x3 convs' padding), got {padding!r}"
        )
    pad = 1 if padding == "symmetric" else "same"
    norm = {"epsilon": epsilon, "momentum": momentum}
    layers: list[LayerSpec] = [*_conv_bn(32, 3, 2, pad, activation="relu6", **norm)]
    cin = 32
    settings = (  # expansion, channels, blocks, first stride
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    for expand, cout, count, first_stride in settings:
        for i in range(count):
            stride = first_stride if i == 0 else 1
            layers += _inverted_residual(cin, cout, stride, expand, pad, norm)
            cin = cout
    layers += [
        *_conv_bn(1280, 1, activation="relu6", **norm),
        GlobalPoolSpec(pool="avg"),
        DropoutSpec(rate=0.2),
        DenseSpec(units=num_classes),
    ]
    return ModelSpec(input_shape, num_classes, tuple(layers), name="mobilenet_v2")


# --------------------------------------------------------------------------- GoogLeNet
def _inception(
    c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int
) -> BranchesSpec:
    """GoogLeNet's inception module as torchvision builds it (its "5x5" branch has a
    3x3 conv, which torchvision's pretrained weights were trained with)."""
    unit = {"epsilon": 1e-3}
    return BranchesSpec(
        branches=(
            tuple(_conv_bn(c1, 1, **unit)),
            (*_conv_bn(c3r, 1, **unit), *_conv_bn(c3, 3, 1, 1, **unit)),
            (*_conv_bn(c5r, 1, **unit), *_conv_bn(c5, 3, 1, 1, **unit)),
            (
                PoolSpec(pool="max", window=3, stride=1, padding=1),
                *_conv_bn(pool_proj, 1, **unit),
            ),
        ),
    )


def googlenet(input_shape: Shape3 = IMAGENET, num_classes: int = 1000) -> ModelSpec:
    """GoogLeNet (Szegedy et al. 2015) as torchvision builds it, without the auxiliary
    heads (they only train): 6,624,904 parameters."""
    unit = {"epsilon": 1e-3}
    h, w = (_conv_out(s, 7, 2, 3) for s in input_shape[:2])

    def pool(window: int) -> PoolSpec:
        nonlocal h, w
        (pool_h, h), (pool_w, w) = _ceil_pool(h, window, 2), _ceil_pool(w, window, 2)
        return _merge_pools(pool_h, pool_w)

    layers: list[LayerSpec] = [*_conv_bn(64, 7, 2, 3, **unit), pool(3)]
    layers += [*_conv_bn(64, 1, **unit), *_conv_bn(192, 3, 1, 1, **unit), pool(3)]
    layers += [
        _inception(64, 96, 128, 16, 32, 32),
        _inception(128, 128, 192, 32, 96, 64),
        pool(3),
        _inception(192, 96, 208, 16, 48, 64),
        _inception(160, 112, 224, 24, 64, 64),
        _inception(128, 128, 256, 24, 64, 64),
        _inception(112, 144, 288, 32, 64, 64),
        _inception(256, 160, 320, 32, 128, 128),
        pool(2),
        _inception(256, 160, 320, 32, 128, 128),
        _inception(384, 192, 384, 48, 128, 128),
        GlobalPoolSpec(pool="avg"),
        DropoutSpec(rate=0.2),
        DenseSpec(units=num_classes),
    ]
    return ModelSpec(input_shape, num_classes, tuple(layers), name="googlenet")


# --------------------------------------------------------------------------- DenseNet
def _dense_layer(growth: int, bn_size: int, epsilon: float) -> BranchesSpec:
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3, its `growth` new channels concatenated after
    its input (the empty branch)."""
    new = (
        NormSpec(norm="batch", epsilon=epsilon),
        ActivationSpec(activation="relu"),
        ConvSpec(filters=bn_size * growth, kernel=1, use_bias=False),
        NormSpec(norm="batch", epsilon=epsilon),
        ActivationSpec(activation="relu"),
        ConvSpec(filters=growth, kernel=3, padding=1, use_bias=False),
    )
    return BranchesSpec(branches=((), new))


def _densenet(
    name: str,
    blocks: tuple[int, ...],
    input_shape: Shape3,
    num_classes: int,
    epsilon: float,
    growth: int = 32,
    bn_size: int = 4,
) -> ModelSpec:
    layers: list[LayerSpec] = [
        *_conv_bn(2 * growth, 7, 2, 3, epsilon=epsilon),
        PoolSpec(pool="max", window=3, stride=2, padding=1),
    ]
    channels = 2 * growth
    for b, count in enumerate(blocks):
        layers += [_dense_layer(growth, bn_size, epsilon) for _ in range(count)]
        channels += count * growth
        if b < len(blocks) - 1:  # transition: halve channels and size
            channels //= 2
            layers += [
                NormSpec(norm="batch", epsilon=epsilon),
                ActivationSpec(activation="relu"),
                ConvSpec(filters=channels, kernel=1, use_bias=False),
                PoolSpec(pool="avg", window=2, stride=2),
            ]
    layers += [
        NormSpec(norm="batch", epsilon=epsilon),
        ActivationSpec(activation="relu"),
        GlobalPoolSpec(pool="avg"),
        DenseSpec(units=num_classes),
    ]
    return ModelSpec(input_shape, num_classes, tuple(layers), name=name)


def densenet121(
    input_shape: Shape3 = IMAGENET, num_classes: int = 1000, epsilon: float = 1e-5
) -> ModelSpec:
    """DenseNet-121 (Huang et al. 2017) as torchvision builds it: 7,978,856
    parameters. `epsilon` is batch norm's (Keras's DenseNet121: 1.001e-5)."""
    return _densenet("densenet121", (6, 12, 24, 16), input_shape, num_classes, epsilon)


def densenet201(
    input_shape: Shape3 = IMAGENET, num_classes: int = 1000, epsilon: float = 1e-5
) -> ModelSpec:
    """DenseNet-201 as torchvision builds it: 20,013,928 parameters. `epsilon` is
    batch norm's (Keras's DenseNet201: 1.001e-5)."""
    return _densenet("densenet201", (6, 12, 48, 32), input_shape, num_classes, epsilon)


# --------------------------------------------------------------------------- Inception v3
def _bn_conv(
    filters: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    *,
    scale: bool = True,
) -> tuple[LayerSpec, ...]:
    """Inception v3's BasicConv2d: conv without bias, batch norm (epsilon 1e-3; without
    a scale unless `scale`), ReLU."""
    return tuple(_conv_bn(filters, kernel, stride, padding, epsilon=1e-3, scale=scale))


def _avg_branch(
    filters: int, count_padding: bool, scale: bool
) -> tuple[LayerSpec, ...]:
    # torchvision's avg_pool2d counts the padding in the mean, Keras's does not
    pool = PoolSpec(
        pool="avg", window=3, stride=1, padding=1, count_padding=count_padding
    )
    return (pool, *_bn_conv(filters, 1, scale=scale))


def _split(filters: int, scale: bool) -> BranchesSpec:
    """Inception v3's 1x3 and 3x1 convs of one input, concatenated."""
    return BranchesSpec(
        branches=(
            _bn_conv(filters, (1, 3), 1, (0, 1), scale=scale),
            _bn_conv(filters, (3, 1), 1, (1, 0), scale=scale),
        )
    )


def _inception_a(pool_features: int, count_padding: bool, scale: bool) -> BranchesSpec:
    bn = {"scale": scale}
    return BranchesSpec(
        branches=(
            _bn_conv(64, 1, **bn),
            (*_bn_conv(48, 1, **bn), *_bn_conv(64, 5, 1, 2, **bn)),
            (
                *_bn_conv(64, 1, **bn),
                *_bn_conv(96, 3, 1, 1, **bn),
                *_bn_conv(96, 3, 1, 1, **bn),
            ),
            _avg_branch(pool_features, count_padding, scale),
        )
    )


def _inception_b(scale: bool) -> BranchesSpec:
    bn = {"scale": scale}
    return BranchesSpec(
        branches=(
            _bn_conv(384, 3, 2, **bn),
            (
                *_bn_conv(64, 1, **bn),
                *_bn_conv(96, 3, 1, 1, **bn),
                *_bn_conv(96, 3, 2, **bn),
            ),
            (PoolSpec(pool="max", window=3, stride=2),),
        )
    )


def _inception_c(c7: int, count_padding: bool, scale: bool) -> BranchesSpec:
    bn = {"scale": scale}
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
    return BranchesSpec(
        branches=(
            _bn_conv(192, 1, **bn),
            (*_bn_conv(c7, 1, **bn), *_bn_conv(c7, row[0], 1, row[1], **bn),
             *_bn_conv(192, col[0], 1, col[1], **bn)),
            (
                *_bn_conv(c7, 1, **bn),
                *_bn_conv(c7, col[0], 1, col[1], **bn),
                *_bn_conv(c7, row[0], 1, row[1], **bn),
                *_bn_conv(c7, col[0], 1, col[1], **bn),
                *_bn_conv(192, row[0], 1, row[1], **bn),
            ),
            _avg_branch(192, count_padding, scale),
        )
    )  # fmt: skip


def _inception_d(scale: bool) -> BranchesSpec:
    bn = {"scale": scale}
    return BranchesSpec(
        branches=(
            (*_bn_conv(192, 1, **bn), *_bn_conv(320, 3, 2, **bn)),
            (
                *_bn_conv(192, 1, **bn),
                *_bn_conv(192, (1, 7), 1, (0, 3), **bn),
                *_bn_conv(192, (7, 1), 1, (3, 0), **bn),
                *_bn_conv(192, 3, 2, **bn),
            ),
            (PoolSpec(pool="max", window=3, stride=2),),
        )
    )


def _inception_e(count_padding: bool, scale: bool) -> BranchesSpec:
    bn = {"scale": scale}
    return BranchesSpec(
        branches=(
            _bn_conv(320, 1, **bn),
            (*_bn_conv(384, 1, **bn), _split(384, scale)),
            (
                *_bn_conv(448, 1, **bn),
                *_bn_conv(384, 3, 1, 1, **bn),
                _split(384, scale),
            ),
            _avg_branch(192, count_padding, scale),
        )
    )


def inception_v3(
    input_shape: Shape3 = (299, 299, 3),
    num_classes: int = 1000,
    bn_scale: bool = True,
    count_padding: bool = True,
) -> ModelSpec:
    """Inception v3 (Szegedy et al. 2016) as torchvision builds it, without the
    auxiliary head (it only trains): 27,161,264 parameters at 299x299x3.

    Its average-pool branches count the zero padding in the mean (`count_padding`), as
    torchvision's do; `bn_scale` gives batch norms a learned scale. Keras's InceptionV3
    is `bn_scale=False, count_padding=False` (its BatchNormalization(scale=False) and
    AveragePooling2D(padding="same")): 23,817,352 parameters and 34,432 batch-norm
    statistics, Keras's `count_params()` of 23,851,784.
    """
    a, bn = {"count_padding": count_padding, "scale": bn_scale}, {"scale": bn_scale}
    layers: list[LayerSpec] = [
        *_bn_conv(32, 3, 2, **bn),
        *_bn_conv(32, 3, **bn),
        *_bn_conv(64, 3, 1, 1, **bn),
        PoolSpec(pool="max", window=3, stride=2),
        *_bn_conv(80, 1, **bn),
        *_bn_conv(192, 3, **bn),
        PoolSpec(pool="max", window=3, stride=2),
        _inception_a(32, **a),
        _inception_a(64, **a),
        _inception_a(64, **a),
        _inception_b(bn_scale),
        _inception_c(128, **a),
        _inception_c(160, **a),
        _inception_c(160, **a),
        _inception_c(192, **a),
        _inception_d(bn_scale),
        _inception_e(**a),
        _inception_e(**a),
        GlobalPoolSpec(pool="avg"),
        DropoutSpec(rate=0.5),
        DenseSpec(units=num_classes),
    ]
    return ModelSpec(input_shape, num_classes, tuple(layers), name="inception_v3")


PRESETS: dict[str, Callable[..., ModelSpec]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "squeezenet1_1": squeezenet1_1,
    "mobilenet_v2": mobilenet_v2,
    "googlenet": googlenet,
    "densenet121": densenet121,
    "densenet201": densenet201,
    "inception_v3": inception_v3,
}
