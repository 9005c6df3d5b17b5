"""Typed, frozen specs for models and runs; parsing from TOML/JSON/dicts and validation.

Nothing here imports JAX: a spec can be checked, printed and diffed anywhere.

A model is a `ModelSpec`: an input shape (H, W, C), a number of classes and a tuple of
layer specs (`ConvSpec`, `PoolSpec`, ...). A run is a `RunConfig`: which model, which data,
which optimiser and how to train. Both round-trip exactly through `to_dict`/`from_dict`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import pathlib
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

from jaxcnn import recipes
from jaxcnn.errors import SpecError

# The largest size a spec may name (filters, units, kernel, stride, padding, groups, each
# input_shape axis, num_classes): far above real networks, and small enough that the
# static memory estimate (shapes.memory_estimate) can say how far over budget a net is.
MAX_SIZE = 2**20
# How deep residual blocks may nest inside residual blocks.
MAX_NESTING = 32

POOL_KINDS = ("max", "avg", "sum", "lp", "geometric", "harmonic")
GLOBAL_POOL_KINDS = ("max", "avg")
NORM_KINDS = ("batch", "layer", "group")

Activation = Literal[
    "relu",
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
Pair = tuple[int, int]
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
# "valid", "same", or explicit symmetric zero padding (rows, cols)
Padding = Literal["valid", "same"] | tuple[int, int]
# conv/pool implementations (jaxcnn.kernels.plan): "auto" is the hand-written kernels
# on CPU and XLA's on GPU/TPU, "fast" the hand-written ones everywhere
Kernels = Literal["auto", "xla", "fast"]
KERNELS = get_args(Kernels)
# operand dtype of the convolutions and matmuls (jaxcnn.precision): parameters,
# optimiser state, accumulation, loss and metrics stay float32 either way
Precision = Literal["float32", "bfloat16"]
PRECISIONS = get_args(Precision)


# --------------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    if tp == Pair:
        return "an int or [h, w] pair of ints"
    if tp == Padding:
        return '"valid", "same", an int or an [h, w] pair of ints'
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{_PLURALS.get(args[0], _type_name(args[0]))}"
    if origin in (dict, Mapping) or tp is dict:
        return "a table"
    if tp is type(None):
        return "null (omit it)"
    return _NAMES.get(tp, f"a {getattr(tp, '__name__', tp)}")


_NAMES = {int: "an int", float: "a finite number", bool: "true/false", str: "a string"}
_PLURALS = {int: "ints", float: "numbers", str: "strings"}


def _show(value: Any, limit: int = 60) -> str:
    """`value` as JSON writes it, cut to `limit` characters (for error messages)."""
    try:
        text = json.dumps(_plain(value), default=str)
    except (ValueError, RecursionError):  # an int of > 4300 digits, a deep structure
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Mismatch(Exception):
    pass


def _int(value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Mismatch


def _float(value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    raise _Mismatch


def _exactly(tp: type) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, tp):
            return value
        raise _Mismatch

    return check


_SCALARS = {
    int: _int,
    float: _float,
    bool: _exactly(bool),
    str: _exactly(str),
    type(None): _exactly(type(None)),
}


def _pair(value: Any) -> Pair:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (_int(value[0]), _int(value[1]))
    value = _int(value)
    return (value, value)


def _tuple(value: Any, args: tuple) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if args[-1] is Ellipsis:
        return tuple(_coerce(v, args[0]) for v in value)
    if len(value) != len(args):
        raise _Mismatch
    return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))


def _coerce(value: Any, tp: Any) -> Any:
    """Converts a parsed TOML/JSON value to `tp`, or raises _Mismatch.

    Integral floats (3.0) become ints, lists become tuples, an int becomes a pair (3 ->
    (3, 3)); NaN and infinities are not numbers here; a bool is never an int.
    """
    if tp is Any:
        return value
    if tp == Padding and isinstance(value, str) and value in ("valid", "same"):
        return value
    if tp in (Pair, Padding):
        return _pair(value)
    origin = typing.get_origin(tp)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if type(value) is type(choice) and value == choice:
                return value
        raise _Mismatch
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            with contextlib.suppress(_Mismatch):
                return _coerce(value, arg)
        raise _Mismatch
    if origin is tuple:
        return _tuple(value, typing.get_args(tp))
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch
    if tp in _SCALARS:
        return _SCALARS[tp](value)
    if dataclasses.is_dataclass(tp):
        return _exactly(tp)(value)
    raise TypeError(f"unsupported spec field type {tp!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The init fields of a spec dataclass and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _mismatch(key: str, value: Any, tp: Any) -> SpecError:
    return SpecError(f"field {key!r} must be {_type_name(tp)}, got {_show(value)}")


def _fields_from_dict(cls: type, data: Mapping[str, Any], where: str, skip=()) -> dict:
    """Checks keys and types of `data` against the dataclass `cls`; returns kwargs."""
    hints = _hints(cls)
    valid = [n for n in hints if n not in skip]
    kwargs = {}
    for key, value in data.items():
        if key in skip:
            continue
        if key not in valid:
            raise SpecError(
                f"{where}: unknown key {key!r}; valid keys are {', '.join(valid)}"
            )
        try:
            kwargs[key] = _coerce(value, hints[key])
        except _Mismatch:
            raise SpecError(f"{where}: {_mismatch(key, value, hints[key])}") from None
    return kwargs


def _coerce_fields(spec: Any, skip: Sequence[str] = ()) -> None:
    """Type-checks every field of a spec in place, normalising as `_coerce` does.

    Python callers then get the same SpecError as a file would (and may write
    kernel=3 or input_shape=[28, 28, 1]).
    """
    for key, tp in _hints(type(spec)).items():
        if key in skip:
            continue
        value = getattr(spec, key)
        try:
            object.__setattr__(spec, key, _coerce(value, tp))
        except _Mismatch:
            raise _mismatch(key, value, tp) from None


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so that dicts print as JSON/TOML would."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise SpecError(message)


def _size(name: str, value: int | Pair, low: int = 1) -> None:
    """Checks low <= value <= MAX_SIZE (for a pair: both entries)."""
    values = value if isinstance(value, tuple) else (value,)
    shown = list(value) if isinstance(value, tuple) else value
    _check(min(values) >= low, f"field {name!r} must be >= {low}, got {shown}")
    _check(
        max(values) <= MAX_SIZE,
        f"field {name!r} must be <= {MAX_SIZE:,} (2**20), got {_show(shown)}",
    )


def _padding_ok(padding: Padding) -> None:
    if isinstance(padding, tuple):
        _size("padding", padding, low=0)


# --------------------------------------------------------------------------- layers
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
                out[f.name] = _plain(value)
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
        _coerce_fields(self)
        for name in ("filters", "kernel", "stride", "dilation", "groups"):
            _size(name, getattr(self, name))
        _padding_ok(self.padding)
        _check(
            self.filters % self.groups == 0,
            f"field 'filters'={self.filters} must be divisible by groups={self.groups}",
        )
        inits = typing.get_args(ConvInit)
        _check(
            self.init in inits,
            f"field 'init' must be one of {', '.join(inits)}, got {self.init!r}",
        )
        _check(
            self.init == "default" or self.kernel == (3, 3),
            f"field 'init'={self.init!r} is a classic 3x3 kernel but field 'kernel' is "
            f'{list(self.kernel)}; use kernel = 3 or init = "default"',
        )

    def describe(self) -> str:
        pad = (
            self.padding
            if isinstance(self.padding, str)
            else f"pad {list(self.padding)}"
        )
        extra = (
            f" stride {self.stride[0]}x{self.stride[1]}"
            if self.stride != (1, 1)
            else ""
        )
        return f"conv {self.kernel[0]}x{self.kernel[1]} {pad}{extra}"


@dataclasses.dataclass(frozen=True)
class PoolSpec(LayerSpec):
    """Windowed pooling; `stride` defaults to the window. `p` is used by `lp` only."""

    type: ClassVar[str] = "pool"
    pool: Literal["max", "avg", "sum", "lp", "geometric", "harmonic"] = "max"
    window: Pair = (2, 2)
    stride: Pair | None = None
    padding: Padding = "valid"
    p: float = 2.0

    def __post_init__(self):
        _coerce_fields(self)
        _size("window", self.window)
        if self.stride is None:
            object.__setattr__(self, "stride", self.window)
        _size("stride", self.stride)
        _padding_ok(self.padding)
        _check(self.p > 0, f"field 'p' must be > 0, got {self.p}")

    def describe(self) -> str:
        pad = (
            self.padding
            if isinstance(self.padding, str)
            else f"pad {list(self.padding)}"
        )
        return f"{self.pool} pool {self.window[0]}x{self.window[1]} {pad}"


@dataclasses.dataclass(frozen=True)
class GlobalPoolSpec(LayerSpec):
    """Reduces H and W away: [batch, H, W, C] -> [batch, C]."""

    type: ClassVar[str] = "global_pool"
    pool: Literal["max", "avg"] = "avg"

    def __post_init__(self):
        _coerce_fields(self)


@dataclasses.dataclass(frozen=True)
class NormSpec(LayerSpec):
    """Batch, layer or group normalisation over channels (`groups` for group norm).

    The defaults are Flax's (nnx.BatchNorm / LayerNorm / GroupNorm). Keras's
    BatchNormalization is epsilon=1e-3, momentum=0.99; PyTorch's is epsilon=1e-5 with
    momentum 0.1 in its own convention, i.e. momentum=0.9 here.
    """

    type: ClassVar[str] = "norm"
    norm: Literal["batch", "layer", "group"] = "batch"
    groups: int = 8
    # Batch norm only: running average decay (new = momentum * old + (1 - momentum) *
    # batch), as in Flax and Keras.
    momentum: float = 0.99
    epsilon: float = 1e-5  # added to the variance before the square root, as in Flax

    def __post_init__(self):
        _coerce_fields(self)
        _size("groups", self.groups)
        _check(
            0.0 <= self.momentum < 1.0,
            f"field 'momentum' must be in [0, 1), got {self.momentum}",
        )
        _check(
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
        _coerce_fields(self)
        _check(
            0.0 <= self.rate < 1.0, f"field 'rate' must be in [0, 1), got {self.rate}"
        )


@dataclasses.dataclass(frozen=True)
class ActivationSpec(LayerSpec):
    type: ClassVar[str] = "activation"
    activation: Activation = "relu"

    def __post_init__(self):
        _coerce_fields(self)


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
        _coerce_fields(self)
        _size("units", self.units)


@dataclasses.dataclass(frozen=True)
class ResidualSpec(LayerSpec):
    """y = activation(f(x) + skip(x)); skip is identity, or a 1x1 conv when shapes differ."""

    type: ClassVar[str] = "residual"
    layers: tuple[LayerSpec, ...] = ()
    activation: Activation = "identity"

    def __post_init__(self):
        layers = _layer_list(self.layers, "layer ", 1, "residual")
        object.__setattr__(self, "layers", layers)
        _coerce_fields(self, skip=("layers",))
        _check(len(self.layers) >= 1, "field 'layers' must hold at least one layer")
        _check(
            _nesting(self.layers) < MAX_NESTING,
            f"residual blocks nest more than {MAX_NESTING} deep; at most {MAX_NESTING} "
            "levels of residual blocks inside residual blocks are supported",
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
            f'{where}: expected a table like {{type = "conv", ...}}, got {_show(data)}'
        )
    kind = data.get("type")
    valid = ", ".join(LAYER_TYPES)
    if kind is None:
        raise SpecError(f"{where}: missing required field 'type' (one of {valid})")
    if not isinstance(kind, str):
        raise SpecError(
            f"{where}: field 'type' must be one of {valid}; got {_show(kind)}"
        )
    if kind not in LAYER_TYPES:
        raise SpecError(
            f"{where}: unknown layer type {kind!r}; valid types are {valid}"
        )
    cls = LAYER_TYPES[kind]
    label = f"{where} ({kind})"
    skip = ("type", "layers") if cls is ResidualSpec else ("type",)
    kwargs = _fields_from_dict(cls, data, label, skip=skip)
    if cls is ResidualSpec:
        if depth >= MAX_NESTING:
            raise SpecError(
                f"{label}: residual blocks nest more than {MAX_NESTING} deep; at most "
                f"{MAX_NESTING} levels of residual blocks inside residual blocks are "
                "supported"
            )
        kwargs["layers"] = _layer_list(
            data.get("layers", []), f"{where}.", depth + 1, label
        )
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.name not in kwargs:
            raise SpecError(f"{label}: missing required field {f.name!r}")
    try:
        return cls(**kwargs)
    except SpecError as e:
        raise SpecError(f"{label}: {e}") from None


def _layer_list(
    data: Any, prefix: str, depth: int, owner: str
) -> tuple[LayerSpec, ...]:
    """Parses the `layers` list of `owner`, labelled prefix + index ("layer 3.0", ...)."""
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
        raise SpecError(
            f"{owner}: field 'layers' must be a list of layer tables, got {_show(data)}"
        )
    return tuple(_layer(d, f"{prefix}{j}", depth) for j, d in enumerate(data))


def _nesting(layers: Sequence[LayerSpec]) -> int:
    """Levels of residual blocks in `layers` (0: none)."""
    return max(
        (1 + _nesting(x.layers) for x in layers if isinstance(x, ResidualSpec)),
        default=0,
    )


# --------------------------------------------------------------------------- model
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A whole network: input (H, W, C), number of classes and layers in order.

    The last layer must produce [batch, num_classes] logits (checked by `shapes.infer`).
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[LayerSpec, ...]
    name: str = "custom"

    def __post_init__(self):
        # Python callers may pass lists or layer dicts; keep the spec hashable and typed.
        layers = _layer_list(self.layers, "layer ", 0, "model spec")
        object.__setattr__(self, "layers", layers)
        _coerce_fields(self, skip=("layers",))
        shape = list(self.input_shape)
        _check(
            min(shape) >= 1,
            f"input_shape must be [H, W, C] of positive ints, got {shape}",
        )
        _check(
            max(shape) <= MAX_SIZE,
            f"input_shape must be at most {MAX_SIZE:,} (2**20) per axis, got {shape}",
        )
        _check(
            self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"
        )
        _check(
            self.num_classes <= MAX_SIZE,
            f"num_classes must be <= {MAX_SIZE:,} (2**20), got {self.num_classes}",
        )
        _check(len(self.layers) >= 1, "a model needs at least one layer")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise SpecError(
                f"a model spec must be a table/object, got {type(data).__name__}"
            )
        kwargs = _fields_from_dict(cls, data, "model spec", skip=("layers",))
        for key in ("input_shape", "num_classes", "layers"):
            if key not in data:
                raise SpecError(f"model spec: missing required key {key!r}")
        return cls(**kwargs, layers=data["layers"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def read_table(path: str | pathlib.Path) -> dict[str, Any]:
    """Reads a .toml or .json file into a dict, with a clear error when it can't."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    kind = path.suffix[1:].upper()
    try:
        text = path.read_text()
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            return tomllib.loads(text)
    except OSError as e:
        raise SpecError(f"{path}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:  # bad syntax, bad UTF-8, an integer of > 4300 digits
        raise SpecError(f"{path}: not valid {kind}: {e}") from None
    except RecursionError:
        raise SpecError(
            f"{path}: not valid {kind}: lists/tables nest too deeply to read (residual "
            f"blocks may nest at most {MAX_NESTING} levels)"
        ) from None
    raise SpecError(f"{path}: unknown file type {path.suffix!r}; use .toml or .json")


def load_spec_file(path: str | pathlib.Path) -> ModelSpec:
    """Reads a model spec from a .toml or .json file."""
    data = read_table(path)
    try:
        spec = ModelSpec.from_dict(data)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    if "name" not in data:
        spec = dataclasses.replace(spec, name=pathlib.Path(path).stem)
    return spec


# --------------------------------------------------------------------------- run config
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model: a preset, a family (`simple_cnn`) with `args`, a spec file, or inline.

    `args` holds family fields (filters=64, stride=2, ...) and, for any model,
    `input_shape`/`num_classes` overrides. `spec`, when given, is the model itself.
    """

    name: str = "digits_cnn"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    spec: ModelSpec | None = None

    def __post_init__(self):
        _coerce_fields(self)


def _check_config(section: str, config: Any) -> None:
    """Type-checks a run-config section; every int must fit in 64 bits (JAX, NumPy)."""
    _coerce_fields(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            _check(
                not isinstance(v, int) or -(2**63) <= v < 2**63,
                f"{section}.{f.name} must fit in 64 bits (-2**63 <= value < 2**63), "
                f"got {_show(value)}",
            )


# A TFDS name: name, name/config, name:version or name/config:version (versions 1.2.3 or
# 1.*.*). A "namespace:" prefix names a community dataset; TFDS's builder-keyword suffix
# (name/key=value) is not accepted.
_DATASET_NAME = re.compile(
    r"(?:(?P<namespace>[\w-]+):)?[a-zA-Z]\w*(?:/[\w+.-]+)?(?::(?:\d+|\*)(?:\.(?:\d+|\*)){2})?"
)


def is_folder_dataset(name: str) -> bool:
    """Whether `data.dataset` names a folder: an existing directory or a path by its form.

    TFDS names may contain "/" (`emnist/balanced`), so a missing path counts as a folder
    only when it starts with "/", "." or "~", or ends with "/".
    """
    return (
        os.path.isdir(os.path.expanduser(name))
        or name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or (os.sep != "/" and os.sep in name)
    )


def _check_dataset(name: str, allow_community: bool) -> None:
    if is_folder_dataset(name):
        return
    match = _DATASET_NAME.fullmatch(name)
    _check(
        match is not None,
        f"data.dataset={_show(name)} is not a TFDS dataset name or a folder; valid "
        "TFDS forms are name, name/config, name:version and name/config:version (e.g. "
        "mnist, emnist/balanced, mnist:3.0.1); a folder of images is an existing "
        "directory or a path starting with /, . or ~",
    )
    namespace = match.group("namespace")
    _check(
        namespace is None or allow_community,
        f"data.dataset={_show(name)} is a community dataset (namespace {namespace!r}), "
        "whose builder code TFDS may download and run; set data.allow_community = "
        "true to allow it",
    )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Any TFDS image-classification name ("digits" is embedded), or a folder of image
    # files, one sub-folder per class (an existing directory, or a path starting with
    # "/", "." or "~"); see jaxcnn/data/folders.py for its layouts.
    dataset: str = "digits"
    # TFDS data directory (default: TFDS's own); for a folder, where its decoded images
    # are cached (default: ~/.cache/jaxcnn/folders, or $JAXCNN_FOLDER_CACHE)
    data_dir: str | None = None
    manual_dir: str | None = None  # folder of raw downloads to build the dataset from
    val_split: str | None = None  # None: the dataset's validation split, else carved
    # TFDS: carved from the end of train when there is no val split; folders: per class
    val_fraction: float = 0.1
    test_split: str = "test"
    test_fraction: float = 0.1  # folders without a test/ folder: carved per class
    split_seed: int = 0  # folders: seed of the carved splits, fixed across train.seed
    # folders: unreadable or non-image files and empty class folders are an "error",
    # or left out with a logged, counted note ("skip")
    bad_files: Literal["error", "skip"] = "error"
    train_examples: int | None = None  # use only the first N training examples
    standardize: bool = False  # per-channel mean/std from the train split
    augment_crop: int = 0  # random crop after zero padding by this many pixels
    augment_flip: bool = False  # random horizontal flip
    device_limit_mb: int = 4096  # larger datasets stream from tf.data instead
    # allow "namespace:name" community datasets (TFDS may download their builder code)
    allow_community: bool = False

    def __post_init__(self):
        _check_config("data", self)
        _check_dataset(self.dataset, self.allow_community)
        _check(
            0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )
        _check(
            0.0 < self.test_fraction < 1.0
            and self.val_fraction + self.test_fraction < 1.0,
            f"data.test_fraction must be in (0, 1) and leave images for training "
            f"(val_fraction + test_fraction < 1), got test_fraction="
            f"{self.test_fraction} with val_fraction={self.val_fraction}",
        )
        _check(
            self.bad_files in ("error", "skip"),
            f"data.bad_files must be 'error' or 'skip', got {self.bad_files!r}",
        )
        _check(
            self.train_examples is None or self.train_examples >= 1,
            f"data.train_examples must be >= 1, got {self.train_examples}",
        )
        _check(
            self.augment_crop >= 0,
            f"data.augment_crop must be >= 0, got {self.augment_crop}",
        )


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
# Per-parameter state each optimiser keeps (optax): momentum traces, Adam's two moments,
# RMSprop's mean square plus its momentum trace (shapes.memory_estimate uses these).
OPTIMIZER_SLOTS = {
    "sgd": 0,
    "momentum": 1,
    "nesterov": 1,
    "adam": 2,
    "adamw": 2,
    "rmsprop": 2,
}
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "onecycle")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"] = (
        "adam"
    )
    lr: float = 1e-3
    # None: the optimiser's own default, which is Keras's (constants in optim.py):
    # momentum 0.9 for momentum / nesterov, none for rmsprop; sgd, adam, adamw ignore it.
    momentum: float | None = None
    epsilon: float | None = None  # adam / adamw / rmsprop; None: Keras's 1e-7
    # Decoupled, as Keras's `weight_decay` on every optimiser: p -= lr * weight_decay * p
    # each step, outside the optimiser's moments. None: 0.004 for adamw (Keras), else 0.
    weight_decay: float | None = None
    l2: float = 0.0  # coupled: adds l2 * p to the gradient (PyTorch's weight_decay)
    schedule: Literal["constant", "cosine", "warmup_cosine", "step", "onecycle"] = (
        "constant"
    )
    warmup_epochs: float = 0.0
    step_epochs: tuple[
        int, ...
    ] = ()  # "step": multiply lr by step_factor at these epochs
    step_factor: float = 0.1
    clip_norm: float | None = None  # clip the global gradient norm
    label_smoothing: float = 0.0

    def __post_init__(self):
        _check_config("optim", self)
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(
            self.momentum is None or 0 <= self.momentum < 1,
            f"optim.momentum must be in [0, 1), got {self.momentum}",
        )
        _check(
            self.epsilon is None or self.epsilon > 0,
            f"optim.epsilon must be > 0, got {self.epsilon}",
        )
        for name in ("weight_decay", "l2"):
            value = getattr(self, name)
            _check(
                value is None or value >= 0, f"optim.{name} must be >= 0, got {value}"
            )
        _check(
            0.0 <= self.label_smoothing < 1.0,
            f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}",
        )
        _check(
            self.clip_norm is None or self.clip_norm > 0,
            f"optim.clip_norm must be > 0, got {self.clip_norm}",
        )
        _check(
            self.warmup_epochs >= 0,
            f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}",
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # The defaults train the embedded digits run to ~96% test accuracy in ~25 s on 2 CPU
    # cores; larger datasets want fewer epochs (--epochs) and often larger batches.
    epochs: int = 30
    batch_size: int = 32  # Keras's default
    eval_batch_size: int = 1000
    seed: int = 0
    steps_per_dispatch: int = 0  # 0: chosen automatically per backend
    patience: int = 0  # early stopping on val accuracy; 0 = off
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_steps: int = 0  # also checkpoint mid-epoch every N steps; 0 = off
    keep_checkpoints: int = 2  # latest N kept, plus the best by val accuracy
    kernels: Kernels = "auto"  # conv/pool implementation
    precision: Precision = "float32"  # conv/matmul operands (jaxcnn.precision)
    # conv/dense layer paths ("conv_0", "residual_3/proj") that compute in float32
    # whatever `precision` says
    fp32_layers: tuple[str, ...] = ()
    init_from: str | None = (
        None  # a finished run's workdir: start from its best weights
    )
    freeze: tuple[str, ...] = ()  # regexes searched in parameter paths (conv_0/kernel)
    new_head: bool = False  # with init_from: re-initialise the last dense layer
    # a published recipe of the preset (jaxcnn.recipes): its settings lie under the
    # config's own values; see RunConfig.from_dict / override
    recipe: str | None = None

    def __post_init__(self):
        _check_config("train", self)
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            value = getattr(self, name)
            _check(value >= 1, f"train.{name} must be >= 1, got {value}")
        _check(self.patience >= 0, f"train.patience must be >= 0, got {self.patience}")
        _check(
            self.checkpoint_steps >= 0,
            f"train.checkpoint_steps must be >= 0 (0 = epoch ends only), got "
            f"{self.checkpoint_steps}",
        )
        _check(
            self.steps_per_dispatch >= 0,
            f"train.steps_per_dispatch must be >= 0 (0 = auto), got {self.steps_per_dispatch}",
        )


_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; `config.json` in a workdir is `to_dict()`.

    `train.recipe` names a published recipe of the preset (jaxcnn.recipes). `from_dict`
    and `from_layers` put its settings under the given values (defaults < recipe <
    table < overrides); `override("train.recipe", name)` puts them over the current
    values. A RunConfig built directly from its sections records the name only.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.recipe is not None:
            self.recipe()

    def recipe(self) -> recipes.Recipe | None:
        """The recipe `train.recipe` names, or None.

        Raises:
          SpecError: the model is no preset with that recipe (listing the valid ones).
        """
        if self.train.recipe is None:
            return None
        return recipes.lookup(
            self.model.name, self.train.recipe, inline=self.model.spec is not None
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Parses a run config; `model_spec` (written by training) is ignored.

        A `train.recipe` in `data` fills in every field `data` leaves out.
        """
        config = cls._parse(data)
        recipe = config.recipe()
        if recipe is None:
            return config
        return cls._parse(_merge_tables(recipe.table(), data))

    @classmethod
    def from_layers(
        cls, table: Mapping[str, Any], overrides: Mapping[str, Any]
    ) -> RunConfig:
        """defaults < recipe < `table` (a config file) < `overrides` (flags, --set).

        The recipe and the model it belongs to are the ones `overrides` name, else the
        ones `table` names: a recipe named by an override still lies under the table.
        """
        overrides = dict(overrides)
        early = {
            path: overrides.pop(path)
            for path in ("model.name", "train.recipe")
            if path in overrides
        }
        nested: dict[str, dict[str, Any]] = {}
        for path, value in early.items():
            section, _, field = path.partition(".")
            nested.setdefault(section, {})[field] = value
        return cls.from_dict(_merge_tables(table, nested)).with_overrides(overrides)

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise SpecError(
                "a run config must be a table with [model] [data] [optim] [train] "
                f"sections, got {_show(data)}"
            )
        unknown = sorted(map(str, set(data) - set(_SECTIONS) - {"model_spec"}))
        if unknown:
            raise SpecError(
                f"run config: unknown section {unknown[0]!r}; valid sections are "
                f"{', '.join(_SECTIONS)}"
            )
        sections = {}
        for name, section_cls in _SECTIONS.items():
            table = data.get(name, {})
            if name == "model" and isinstance(table, str):
                table = {"name": table}
            if not isinstance(table, Mapping):
                raise SpecError(
                    f"run config: [{name}] must be a table, got {_show(table)}"
                )
            table = dict(table)
            spec = table.pop("spec", None) if name == "model" else None
            kwargs = _fields_from_dict(section_cls, table, f"[{name}]")
            if spec is not None:
                try:
                    kwargs["spec"] = ModelSpec.from_dict(spec)
                except SpecError as e:
                    raise SpecError(f"[model] spec: {e}") from None
            try:
                sections[name] = section_cls(**kwargs)
            except SpecError as e:
                raise SpecError(f"[{name}]: {e}") from None
        return cls(**sections)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            table = {
                f.name: _plain(getattr(section, f.name))
                for f in dataclasses.fields(section)
            }
            if name == "model":
                table["spec"] = self.model.spec.to_dict() if self.model.spec else None
            out[name] = table
        return out

    def override(self, path: str, value: Any) -> RunConfig:
        """Returns a copy with one field changed, e.g. override("optim.lr", 0.01).

        `model.<field>` that is not a ModelConfig field goes to `model.args`, so a family
        knob reads `model.filters`. Values are type-checked like a config file's.
        `train.recipe` applies the recipe's settings over the current values.
        """
        section, _, field = path.partition(".")
        if section not in _SECTIONS or not field:
            raise SpecError(
                f"cannot set {path!r}: paths look like section.field with section one of "
                f"{', '.join(_SECTIONS)} (e.g. optim.lr, train.epochs, model.filters)"
            )
        if section == "model" and field.startswith("args."):
            field = field[len("args.") :]
        if section == "model" and field not in ("name", "args", "spec"):
            args = {**self.model.args, field: value}
            return dataclasses.replace(
                self, model=dataclasses.replace(self.model, args=args)
            )
        data = self.to_dict()
        data[section][field] = value
        if path == "train.recipe" and isinstance(value, str):
            named = dataclasses.replace(
                self, train=dataclasses.replace(self.train, recipe=value)
            )
            data = _merge_tables(data, named.recipe().table())
        if section == "model" and data["model"]["spec"] is None:
            data["model"].pop("spec")
        return RunConfig.from_dict(data)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """`override` for each item; a `train.recipe` among them (with the `model.name`
        it belongs to) goes first, so the other items win over the recipe."""
        overrides = dict(overrides)
        config = self
        if "train.recipe" in overrides:
            recipe = overrides.pop("train.recipe")
            config = config.override("train.recipe", None)
            if "model.name" in overrides:
                config = config.override("model.name", overrides.pop("model.name"))
            config = config.override("train.recipe", recipe)
        for path, value in overrides.items():
            config = config.override(path, value)
        return config


def _merge_tables(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """Run-config tables `high` over `low`, field by field within each section."""
    out = dict(low)
    for section, table in high.items():
        below = out.get(section)
        if section == "model" and isinstance(below, str):
            below = {"name": below}
        if section == "model" and isinstance(table, str):
            table = {"name": table}
        if isinstance(below, Mapping) and isinstance(table, Mapping):
            table = {**below, **table}
        out[section] = table
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parses a `--set key=value` item; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set expects key=value (e.g. optim.lr=0.01), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except (ValueError, RecursionError):  # not a TOML value: the text itself
        value = raw.strip()
    return key.strip(), value


def load_run_config(path: str | pathlib.Path) -> RunConfig:
    """Reads a run config (.toml/.json with [model] [data] [optim] [train] tables)."""
    try:
        return RunConfig.from_dict(read_table(path))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
