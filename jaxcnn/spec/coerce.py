"""Plain data in: reading TOML/JSON tables and coercing their values to typed spec fields.

The layer specs, the model spec and the run config all parse through here, so a bad
value reads the same wherever it is written: the field, what it must be, what it got.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import pathlib
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from jaxcnn.errors import SpecError

# The largest size a spec may name (filters, units, kernel, stride, padding, groups, each
# input_shape axis, num_classes): far above real networks, and small enough that the
# static memory estimate (footprint.memory_estimate) can say how far over budget a net is.
MAX_SIZE = 2**20
# How deep residual and branch blocks may nest inside one another.
MAX_NESTING = 32

# The value types with coercion rules of their own: an int n is the pair (n, n).
Pair = tuple[int, int]
# Explicit ((top, bottom), (left, right)) padding.
Pads = tuple[Pair, Pair]
# "valid", "same", symmetric padding (rows, cols), or explicit ((top, bottom),
# (left, right)) padding
Padding = Literal["valid", "same"] | Pair | Pads


def _type_name(tp: Any) -> str:
    if tp == Pair:
        return "an int or [h, w] pair of ints"
    if tp == Padding:
        return (
            '"valid", "same", an int, an [h, w] pair of ints or '
            "[[top, bottom], [left, right]] of ints"
        )
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


def show(value: Any, limit: int = 60) -> str:
    """`value` as JSON writes it, cut to `limit` characters (for error messages)."""
    try:
        text = json.dumps(plain(value), default=str)
    except (ValueError, RecursionError):  # an int of > 4300 digits, a deep structure
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain(value: Any) -> Any:
    """Tuples to lists, recursively, so that dicts print as JSON/TOML would."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


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


def _nested_pair(value: Any) -> bool:
    """Whether `value` looks like [[top, bottom], [left, right]]."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (list, tuple)) for v in value)
    )


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
    if tp == Padding and _nested_pair(value):
        return (_pair(value[0]), _pair(value[1]))
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


def convert(value: Any, tp: Any, what: str) -> Any:
    """`value` as type `tp` (see `_coerce`), else SpecError "{what} must be ..., got ...".

    `what` names the value, e.g. "field 'kernel'" or "model 'x': argument 'filters'".
    """
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise SpecError(f"{what} must be {_type_name(tp)}, got {show(value)}") from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The init fields of a spec dataclass and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def fields_from_dict(
    cls: type, data: Mapping[str, Any], where: str, skip: Sequence[str] = ()
) -> dict[str, Any]:
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
        kwargs[key] = convert(value, hints[key], f"{where}: field {key!r}")
    return kwargs


def coerce_fields(spec: Any, skip: Sequence[str] = ()) -> None:
    """Type-checks every field of a spec in place, normalising as `_coerce` does.

    Python callers then get the same SpecError as a file would (and may write
    kernel=3 or input_shape=[28, 28, 1]).
    """
    for key, tp in _hints(type(spec)).items():
        if key in skip:
            continue
        value = convert(getattr(spec, key), tp, f"field {key!r}")
        object.__setattr__(spec, key, value)


def check(cond: bool, message: str) -> None:
    """Raises SpecError(message) unless `cond`."""
    if not cond:
        raise SpecError(message)


def check_size(name: str, value: int | Pair, low: int = 1) -> None:
    """Checks low <= value <= MAX_SIZE (for a pair: both entries)."""
    values = value if isinstance(value, tuple) else (value,)
    shown = list(value) if isinstance(value, tuple) else value
    check(min(values) >= low, f"field {name!r} must be >= {low}, got {shown}")
    check(
        max(values) <= MAX_SIZE,
        f"field {name!r} must be <= {MAX_SIZE:,} (2**20), got {show(shown)}",
    )


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
