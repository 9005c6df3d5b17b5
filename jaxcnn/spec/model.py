"""The model spec: input shape, number of classes and layers in order; spec files."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from jaxcnn.errors import SpecError
from jaxcnn.spec.coerce import (
    MAX_SIZE,
    check,
    coerce_fields,
    fields_from_dict,
    read_table,
)
from jaxcnn.spec.layers import LayerSpec, layer_list


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
        layers = layer_list(self.layers, "layer ", 0, "model spec")
        object.__setattr__(self, "layers", layers)
        coerce_fields(self, skip=("layers",))
        shape = list(self.input_shape)
        check(
            min(shape) >= 1,
            f"input_shape must be [H, W, C] of positive ints, got {shape}",
        )
        check(
            max(shape) <= MAX_SIZE,
            f"input_shape must be at most {MAX_SIZE:,} (2**20) per axis, got {shape}",
        )
        check(
            self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"
        )
        check(
            self.num_classes <= MAX_SIZE,
            f"num_classes must be <= {MAX_SIZE:,} (2**20), got {self.num_classes}",
        )
        check(len(self.layers) >= 1, "a model needs at least one layer")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise SpecError(
                f"a model spec must be a table/object, got {type(data).__name__}"
            )
        kwargs = fields_from_dict(cls, data, "model spec", skip=("layers",))
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
