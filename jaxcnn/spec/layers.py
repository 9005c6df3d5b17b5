"""Layer specs: one frozen dataclass per layer kind, and parsing a layer table into one.

A layer table names its kind in `type` ({type = "conv", filters = 32, kernel = 3});
`LAYER_TYPES` maps each `type` to its spec class. Each class checks its own fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

from jaxcnn.errors import SpecError
from jaxcnn.spec.coerce import (
    MAX_NESTING,
    Padding,
    Pair,
    check,
    check_size,
    coerce_fields,
    fields_from_dict,
    plain,
    show,
)

Activation = Literal[
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "softplus",
    "identity",
]
ACTIVATIONS = get_args(Activation)
# Conv kernel initialisers: Flax's default, or a classic kernel (jaxcnn.filters)
ConvInit = Literal[
    "default",
    "vertical_edge",
    "horizontal_edge",
    "sobel_x",
    "sobel_y",
    "laplacian",
    "box_blur",
    "sharpen",
]
CONV_INITS = get_args(ConvInit)
PoolKind = Literal["max", "avg", "sum", "lp", "geometric", "harmonic"]
POOL_KINDS = get_args(PoolKind)
GlobalPoolKind = Literal["max", "avg"]
GLOBAL_POOL_KINDS = get_args(GlobalPoolKind)
NormKind = Literal["batch", "layer", "group"]
NORM_KINDS = get_args(NormKind)


def _padding_ok(padding: Padding) -> None:
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        check_size("padding", padding[0] + padding[1], low=0)
    elif isinstance(padding, tuple):
        check_size("padding", padding, low=0)


def _describe_padding(padding: Padding) -> str:
    return padding if isinstance(padding, str) else f"pad {plain(padding)}"


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Base class of every layer spec; `type` is the key used in spec files."""

    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and value and isinstance(value[0], LayerSpec):
                out[f.name] = [v.to_dict() for v in value]
            else:
                out[f.name] = plain(value)
        return out

    def describe(self) -> str:
        """Short human label, e.g. 'conv 3x3 valid' (used in error messages)."""
        return self.type


@dataclasses.dataclass(frozen=True)
class ConvSpec(LayerSpec):
    """2-D convolution, NHWC. Output = floor((W - D(K-1) - 1 + 2P) / S) + 1 per axis."""

    type: ClassVar[str] = "conv"
    filters: int
    kernel: Pair = (3, 3)
    stride: Pair = (1, 1)
    padding: Padding = "valid"
    dilation: Pair = (1, 1)
    groups: int = 1
    activation: Activation = "identity"
    use_bias: bool = True
    # "default": random (Flax) init; else a classic 3x3 kernel from jaxcnn/filters.py
    init: ConvInit = "default"
    trainable: bool = True  # False: frozen while training (kept at its init)

    def __post_init__(self):
        coerce_fields(self)
        for name in ("filters", "kernel", "stride", "dilation", "groups"):
            check_size(name, getattr(self, name))
        _padding_ok(self.padding)
        check(
            self.filters % self.groups == 0,
            f"field 'filters'={self.filters} must be divisible by groups={self.groups}",
        )
        check(
            self.init == "default" or self.kernel == (3, 3),
            f"field 'init'={self.init!r} is a classic 3x3 kernel but field 'kernel' is "
            f'{list(self.kernel)}; use kernel = 3 or init = "default"',
        )

    def describe(self) -> str:
        pad = _describe_padding(self.padding)
        extra = (
            f" stride {self.stride[0]}x{self.stride[1]}"
            if self.stride != (1, 1)
            else ""
        )
        return f"conv {self.kernel[0]}x{self.kernel[1]} {pad}{extra}"


@dataclasses.dataclass(frozen=True)
class PoolSpec(LayerSpec):
    """Windowed pooling; `stride` defaults to the window. `p` is used by `lp` only.

    `count_padding` (avg only): divide by the whole window, padded cells included
    (PyTorch's count_include_pad=True); by default padding is left out of the mean, as
    in Keras.
    """

    type: ClassVar[str] = "pool"
    pool: PoolKind = "max"
    window: Pair = (2, 2)
    stride: Pair | None = None
    padding: Padding = "valid"
    p: float = 2.0
    count_padding: bool = False

    def __post_init__(self):
        coerce_fields(self)
        check_size("window", self.window)
        if self.stride is None:
            object.__setattr__(self, "stride", self.window)
        check_size("stride", self.stride)
        _padding_ok(self.padding)
        check(self.p > 0, f"field 'p' must be > 0, got {self.p}")
        check(
            not self.count_padding or self.pool == "avg",
            f"field 'count_padding' applies to avg pooling only, not {self.pool!r}; "
            "remove it",
        )

    def describe(self) -> str:
        pad = _describe_padding(self.padding)
        return f"{self.pool} pool {self.window[0]}x{self.window[1]} {pad}"


@dataclasses.dataclass(frozen=True)
class GlobalPoolSpec(LayerSpec):
    """Reduces H and W away: [batch, H, W, C] -> [batch, C]."""

    type: ClassVar[str] = "global_pool"
    pool: GlobalPoolKind = "avg"

    def __post_init__(self):
        coerce_fields(self)


@dataclasses.dataclass(frozen=True)
class NormSpec(LayerSpec):
    """Batch, layer or group normalisation over channels (`groups` for group norm).

    The defaults are Flax's (nnx.BatchNorm / LayerNorm / GroupNorm). Keras's
    BatchNormalization is epsilon=1e-3, momentum=0.99; PyTorch's is epsilon=1e-5 with
    momentum 0.1 in its own convention, i.e. momentum=0.9 here.
    """

    type: ClassVar[str] = "norm"
    norm: NormKind = "batch"
    groups: int = 8
    # Batch norm only: running average decay (new = momentum * old + (1 - momentum) *
    # batch), as in Flax and Keras.
    momentum: float = 0.99
    epsilon: float = 1e-5  # added to the variance before the square root, as in Flax
    # A learned per-channel scale (gamma) after normalising, as Flax's use_scale;
    # Keras's InceptionV3 builds its batch norms without one (scale=False).
    scale: bool = True

    def __post_init__(self):
        coerce_fields(self)
        check_size("groups", self.groups)
        check(
            0.0 <= self.momentum < 1.0,
            f"field 'momentum' must be in [0, 1), got {self.momentum}",
        )
        check(
            0.0 < self.epsilon <= 1.0,
            f"field 'epsilon' must be in (0, 1] (Flax 1e-5, Keras 1e-3), "
            f"got {self.epsilon}",
        )


@dataclasses.dataclass(frozen=True)
class DropoutSpec(LayerSpec):
    """Drops a fraction `rate` of activations while training."""

    type: ClassVar[str] = "dropout"
    rate: float = 0.5

    def __post_init__(self):
        coerce_fields(self)
        check(
            0.0 <= self.rate < 1.0, f"field 'rate' must be in [0, 1), got {self.rate}"
        )


@dataclasses.dataclass(frozen=True)
class ActivationSpec(LayerSpec):
    type: ClassVar[str] = "activation"
    activation: Activation = "relu"

    def __post_init__(self):
        coerce_fields(self)


@dataclasses.dataclass(frozen=True)
class FlattenSpec(LayerSpec):
    type: ClassVar[str] = "flatten"


@dataclasses.dataclass(frozen=True)
class DenseSpec(LayerSpec):
    """Fully connected layer on a flat [batch, features] input."""

    type: ClassVar[str] = "dense"
    units: int
    activation: Activation = "identity"
    use_bias: bool = True

    def __post_init__(self):
        coerce_fields(self)
        check_size("units", self.units)


@dataclasses.dataclass(frozen=True)
class ResidualSpec(LayerSpec):
    """y = activation(f(x) + skip(x)); skip is identity, or a 1x1 conv when shapes differ.

    The 1x1 projection has the stride that maps the input's height and width to the
    block's output. With `projection_norm`, it has no bias and a batch norm (Flax's
    defaults, as a `norm` layer's) follows it: torchvision's ResNet downsample.
    """

    type: ClassVar[str] = "residual"
    layers: tuple[LayerSpec, ...] = ()
    activation: Activation = "identity"
    projection_norm: bool = False

    def __post_init__(self):
        layers = layer_list(self.layers, "layer ", 1, "residual")
        object.__setattr__(self, "layers", layers)
        coerce_fields(self, skip=("layers",))
        check(len(self.layers) >= 1, "field 'layers' must hold at least one layer")
        _check_nesting(self.layers)


Join = Literal["concat", "add"]
JOINS = get_args(Join)


@dataclasses.dataclass(frozen=True)
class BranchesSpec(LayerSpec):
    """Parallel paths from one input, joined: y = activation(join(b0(x), b1(x), ...)).

    `concat` stacks the branches' channels in order (every branch must keep the same
    height and width); `add` sums them (every branch must give the same shape). An
    empty branch is the identity, e.g. DenseNet's concatenation of a layer's input
    with its new features.
    """

    type: ClassVar[str] = "branches"
    branches: tuple[tuple[LayerSpec, ...], ...] = ()
    join: Join = "concat"
    activation: Activation = "identity"

    def __post_init__(self):
        check(
            isinstance(self.branches, Sequence)
            and not isinstance(self.branches, (str, bytes)),
            "field 'branches' must be a list of branches, each a list of layer "
            f"tables, got {show(self.branches)}",
        )
        branches = tuple(
            layer_list(b, f"layer b{i}.", 1, f"branch {i}")
            for i, b in enumerate(self.branches)
        )
        object.__setattr__(self, "branches", branches)
        coerce_fields(self, skip=("branches",))
        check(
            len(self.branches) >= 2,
            f"field 'branches' must hold at least 2 branches (lists of layers), got "
            f"{len(self.branches)}",
        )
        for branch in self.branches:
            _check_nesting(branch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "branches": [[layer.to_dict() for layer in b] for b in self.branches],
            "join": self.join,
            "activation": self.activation,
        }

    def describe(self) -> str:
        return f"{len(self.branches)} branches, {self.join}"


def _check_nesting(layers: Sequence[LayerSpec]) -> None:
    check(
        _nesting(layers) < MAX_NESTING,
        f"blocks nest more than {MAX_NESTING} deep; at most {MAX_NESTING} levels of "
        "residual/branch blocks inside residual/branch blocks are supported",
    )


LAYER_TYPES: dict[str, type[LayerSpec]] = {
    cls.type: cls
    for cls in (
        ConvSpec,
        PoolSpec,
        GlobalPoolSpec,
        NormSpec,
        DropoutSpec,
        ActivationSpec,
        FlattenSpec,
        DenseSpec,
        ResidualSpec,
        BranchesSpec,
    )
}


def layer_from_dict(data: Mapping[str, Any], where: str = "layer") -> LayerSpec:
    """Parses one layer table, e.g. {"type": "conv", "filters": 32, "kernel": 3}.

    Raises:
      SpecError naming `where` (e.g. "layer 3 (conv)"), the field and the bad value.
    """
    return _layer(data, where, depth=0)


def _layer(data: Any, where: str, depth: int) -> LayerSpec:
    """layer_from_dict inside `depth` residual blocks."""
    if isinstance(data, LayerSpec):
        return data
    if not isinstance(data, Mapping):
        raise SpecError(
            f'{where}: expected a table like {{type = "conv", ...}}, got {show(data)}'
        )
    kind = data.get("type")
    valid = ", ".join(LAYER_TYPES)
    if kind is None:
        raise SpecError(f"{where}: missing required field 'type' (one of {valid})")
    if not isinstance(kind, str):
        raise SpecError(
            f"{where}: field 'type' must be one of {valid}; got {show(kind)}"
        )
    if kind not in LAYER_TYPES:
        raise SpecError(
            f"{where}: unknown layer type {kind!r}; valid types are {valid}"
        )
    cls = LAYER_TYPES[kind]
    label = f"{where} ({kind})"
    nested = {ResidualSpec: "layers", BranchesSpec: "branches"}.get(cls)
    skip = ("type", nested) if nested else ("type",)
    kwargs = fields_from_dict(cls, data, label, skip=skip)
    if nested and depth >= MAX_NESTING:
        raise SpecError(
            f"{label}: blocks nest more than {MAX_NESTING} deep; at most {MAX_NESTING} "
            "levels of residual/branch blocks inside residual/branch blocks are "
            "supported"
        )
    if cls is ResidualSpec:
        kwargs["layers"] = layer_list(
            data.get("layers", []), f"{where}.", depth + 1, label
        )
    if cls is BranchesSpec:
        branches = data.get("branches", [])
        if isinstance(branches, (str, bytes, Mapping)) or not isinstance(
            branches, Sequence
        ):
            raise SpecError(
                f"{label}: field 'branches' must be a list of branches, each a list "
                f"of layer tables, got {show(branches)}"
            )
        kwargs["branches"] = tuple(
            layer_list(b, f"{where}.b{i}.", depth + 1, f"{label} branch {i}")
            for i, b in enumerate(branches)
        )
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.name not in kwargs:
            raise SpecError(f"{label}: missing required field {f.name!r}")
    try:
        return cls(**kwargs)
    except SpecError as e:
        raise SpecError(f"{label}: {e}") from None


def layer_list(data: Any, prefix: str, depth: int, owner: str) -> tuple[LayerSpec, ...]:
    """Parses the `layers` list of `owner`, labelled prefix + index ("layer 3.0", ...).

    `depth` is how many residual/branch blocks hold the list (0: the model's own
    layers).
    """
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
        raise SpecError(
            f"{owner}: field 'layers' must be a list of layer tables, got {show(data)}"
        )
    return tuple(_layer(d, f"{prefix}{j}", depth) for j, d in enumerate(data))


def _nesting(layers: Sequence[LayerSpec]) -> int:
    """Levels of residual/branch blocks in `layers` (0: none)."""
    return max(
        (
            1 + max(_nesting(b) for b in inner_lists(x))
            for x in layers
            if inner_lists(x)
        ),
        default=0,
    )


def inner_lists(layer: LayerSpec) -> tuple[tuple[LayerSpec, ...], ...]:
    """The layer lists inside a block: a residual body, the branches; () otherwise."""
    if isinstance(layer, ResidualSpec):
        return (layer.layers,)
    if isinstance(layer, BranchesSpec):
        return layer.branches
    return ()
