"""Each source framework's tensor names and layouts, mapped to jaxcnn's parameter paths.

jaxcnn's paths are `<type>_<index>/<name>` (`conv_0/kernel`, `norm_1/scale`,
`dense_23/bias`; batch-norm running statistics `norm_1/mean`, `norm_1/var`). Layouts:

* PyTorch convolutions are [out, in, kh, kw] (OIHW), jaxcnn's [kh, kw, in, out] (HWIO);
  Keras's are HWIO already.
* PyTorch linear layers are [out, in], jaxcnn's and Keras's dense kernels [in, out].
* PyTorch flattens a [C, H, W] map channel-major, jaxcnn (NHWC) position-major, so the
  rows of the first dense layer after a flatten are permuted from (c, h, w) to (h, w, c)
  order. Keras flattens NHWC, as jaxcnn does.
* timm's VGG head is a 7x7 convolution over the last 7x7 map (`pre_logits.fc1`) and a
  1x1 one (`pre_logits.fc2`): on that map they are the dense layers after the flatten.
* Batch norm: PyTorch's weight, bias, running_mean, running_var and Keras's gamma,
  beta, moving_mean, moving_variance are scale, bias, mean, var (`num_batches_tracked`
  plays no part in inference and is not imported).

`LAYOUTS` says which presets each source's names cover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxcnn import shapes
from jaxcnn.errors import CheckpointError, SpecError, listing
from jaxcnn.interop import readers
from jaxcnn.spec import (
    ActivationSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
)

Shape = tuple[int, ...]
_IGNORED = ("num_batches_tracked",)  # PyTorch batch-norm counters: not weights
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a source file and the jaxcnn parameter it becomes.

    layout: "same" (copied), "oihw" (a PyTorch conv kernel), "linear" (a PyTorch
      linear weight; with `chw`, the first after a flatten of a [C, H, W] map), or
      "conv_dense" (a PyTorch conv kernel covering the whole [C, H, W] map: a dense
      layer on the flattened map).
    shape: the jaxcnn parameter's shape.
    """

    source: str
    path: str
    layout: str
    shape: Shape
    chw: tuple[int, int, int] | None = None

    def source_shape(self) -> Shape:
        """The shape the source file must hold this tensor in."""
        s = self.shape
        if self.layout == "oihw":
            return (s[3], s[2], s[0], s[1])
        if self.layout == "linear":
            return (s[1], s[0])
        if self.layout == "conv_dense":
            return (s[1], *self.chw)
        return s

    def convert(self, value: np.ndarray) -> np.ndarray:
        """The source array in jaxcnn's layout (float32, C-contiguous)."""
        value = np.asarray(value, np.float32)
        if self.layout == "oihw":
            value = value.transpose(2, 3, 1, 0)
        elif self.layout == "linear" and self.chw is not None:
            c, h, w = self.chw
            value = (
                value.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
            )
        elif self.layout == "linear":
            value = value.T
        elif self.layout == "conv_dense":
            value = value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
        return np.ascontiguousarray(value)


# --------------------------------------------------------------------------- walkers
def _norm_entries(prefix, name, shapes_, names) -> list[Entry]:
    return [
        Entry(f"{prefix}{src}", f"{name}/{dst}", "same", shapes_[f"{name}/{dst}"])
        for src, dst in zip(names, ("scale", "bias", "mean", "var"), strict=True)
    ]


def _weight_entries(prefix, name, shapes_, layout, chw=None) -> list[Entry]:
    out = [
        Entry(
            f"{prefix}weight", f"{name}/kernel", layout, shapes_[f"{name}/kernel"], chw
        )
    ]
    if f"{name}/bias" in shapes_:
        out.append(
            Entry(f"{prefix}bias", f"{name}/bias", "same", shapes_[f"{name}/bias"])
        )
    return out


def _sequential(
    spec: ModelSpec, shapes_: Mapping[str, Shape], head: Callable
) -> list[Entry]:
    """torchvision's VGG / AlexNet module numbering: `features.<k>` up to the flatten,
    every layer (ReLU, pool, dropout) taking one index and a fused activation another;
    `head(j, name, chw, k)` names the j-th dense layer after the flatten."""
    entries: list[Entry] = []
    k, dense, chw = 0, 0, None
    summary = shapes.infer(spec)
    for i, layer in enumerate(spec.layers):
        name = f"{layer.type}_{i}"
        if isinstance(layer, ConvSpec):
            entries += _weight_entries(f"features.{k}.", name, shapes_, "oihw")
            k += 1 + (layer.activation != "identity")
        elif isinstance(layer, NormSpec) and layer.norm == "batch":
            torch_names = ("weight", "bias", "running_mean", "running_var")
            entries += _norm_entries(f"features.{k}.", name, shapes_, torch_names)
            k += 1
        elif isinstance(layer, FlattenSpec):
            h, w, c = summary.row(str(i)).input_shape
            chw, k = (c, h, w), 0
        elif isinstance(layer, DenseSpec):
            entries += head(dense, name, shapes_, chw, k)
            dense, chw = dense + 1, None
            k += 1 + (layer.activation != "identity")
        elif isinstance(layer, PoolSpec | ActivationSpec | DropoutSpec):
            k += 1
        else:
            raise SpecError(
                f"model {spec.name!r}: layer {name} ({layer.type}) has no place in "
                f"torchvision's sequential VGG / AlexNet layout"
            )
    return entries


def torchvision_sequential(spec, shapes_) -> list[Entry]:
    """torchvision's `vgg*` and `alexnet`: features.<k>, classifier.<k>."""

    def head(j, name, shapes_, chw, k):
        return _weight_entries(f"classifier.{k}.", name, shapes_, "linear", chw)

    return _sequential(spec, shapes_, head)


def timm_vgg(spec, shapes_) -> list[Entry]:
    """timm's `vgg*`: torchvision's features, then pre_logits.fc1 (7x7 conv),
    pre_logits.fc2 (1x1 conv) and head.fc (linear)."""

    def head(j, name, shapes_, chw, k):
        if j == 0:
            return _weight_entries("pre_logits.fc1.", name, shapes_, "conv_dense", chw)
        if j == 1:
            units = shapes_[f"{name}/kernel"][0]
            return _weight_entries(
                "pre_logits.fc2.", name, shapes_, "conv_dense", (units, 1, 1)
            )
        if j == 2:
            return _weight_entries("head.fc.", name, shapes_, "linear")
        raise SpecError(
            f"model {spec.name!r} has more dense layers than timm's VGG head"
        )

    return _sequential(spec, shapes_, head)


LAYOUTS: dict[tuple[str, str], Callable] = {
    ("vgg16", "torchvision"): torchvision_sequential,
    ("vgg16_bn", "torchvision"): torchvision_sequential,
    ("alexnet", "torchvision"): torchvision_sequential,
    ("vgg16", "timm"): timm_vgg,
    ("vgg16_bn", "timm"): timm_vgg,
    ("vgg16", "keras"): None,  # Keras: layers matched by kind and order (keras_entries)
}


def supported() -> str:
    return ", ".join(f"{arch} from {source}" for arch, source in LAYOUTS)


def _check_layout(arch: str, source: str) -> None:
    if (arch, source) not in LAYOUTS:
        raise CheckpointError(
            f"no {source} layout for architecture {arch!r}; jaxcnn imports "
            f"{supported()}"
        )


# --------------------------------------------------------------------------- keras
def _keras_kind(arrays: Sequence[np.ndarray]) -> str:
    first = arrays[0].ndim
    if first == 4:
        return "conv"
    if first == 2:
        return "dense"
    if len(arrays) == 4 and all(a.ndim == 1 for a in arrays):
        return "batch norm"
    return "other"


def keras_entries(spec, shapes_, tensors) -> list[Entry]:
    """Keras layers matched to jaxcnn's by kind and order: the k-th conv of the file is
    the k-th conv of the spec, likewise dense and batch-norm layers. Keras 3 names
    layers by class (conv2d, conv2d_1, ...) and Keras 2 files keep the layer order, so
    the order within each kind is the model's."""
    wanted = {"conv": [], "dense": [], "batch norm": []}
    for i, layer in enumerate(spec.layers):
        name = f"{layer.type}_{i}"
        if isinstance(layer, ConvSpec):
            wanted["conv"].append((name, ("kernel", "bias")))
        elif isinstance(layer, DenseSpec):
            wanted["dense"].append((name, ("kernel", "bias")))
        elif isinstance(layer, NormSpec) and layer.norm == "batch":
            wanted["batch norm"].append((name, ("scale", "bias", "mean", "var")))
        elif not isinstance(
            layer, PoolSpec | ActivationSpec | DropoutSpec | FlattenSpec
        ):
            raise SpecError(
                f"layer {name} ({layer.type}) has no Keras counterpart here"
            )
    found: dict[str, list[list[str]]] = {kind: [] for kind in wanted}
    for _layer, names in readers.keras_layers(tensors):
        kind = _keras_kind([tensors[n] for n in names])
        found.setdefault(kind, []).append(names)
    entries = []
    for kind, layers in wanted.items():
        for (name, params), names in zip(layers, found[kind], strict=False):
            params = [p for p in params if f"{name}/{p}" in shapes_]
            for param, source in zip(params, names, strict=False):
                path = f"{name}/{param}"
                entries.append(Entry(source, path, "same", shapes_[path]))
        for name, params in layers[len(found[kind]) :]:  # the file has too few
            for param in params:
                path = f"{name}/{param}"
                if path in shapes_:
                    entries.append(
                        Entry(f"<{kind} layer for {name}>", path, "same", shapes_[path])
                    )
    return entries


# --------------------------------------------------------------------------- check
def entries_for(
    spec: ModelSpec,
    arch: str,
    source: str,
    shapes_: Mapping[str, Shape],
    tensors: Mapping[str, np.ndarray],
) -> list[Entry]:
    """The entries mapping a `source` file of architecture `arch` onto `spec`."""
    _check_layout(arch, source)
    if source == "keras":
        return keras_entries(spec, shapes_, tensors)
    return LAYOUTS[arch, source](spec, shapes_)


def convert(
    entries: Sequence[Entry],
    tensors: Mapping[str, np.ndarray],
    shapes_: Mapping[str, Shape],
    *,
    file: str,
    arch: str,
    source: str,
) -> dict[str, np.ndarray]:
    """{jaxcnn path: array} from the file's tensors, once they match `entries` exactly.

    Every parameter and batch-norm statistic of the model (`shapes_`) must be covered,
    and every tensor of the file used (PyTorch's num_batches_tracked aside).

    Raises:
      CheckpointError: naming the first tensor whose shape differs (both shapes), the
        tensors the file lacks and those it has beyond the architecture.
    """
    expected = {e.source for e in entries}
    present = [n for n in tensors if not n.endswith(_IGNORED)]
    missing = [e.source for e in entries if e.source not in tensors]
    unexpected = [n for n in present if n not in expected]
    mismatch = next(
        (
            e
            for e in entries
            if e.source in tensors
            and tuple(np.shape(tensors[e.source])) != e.source_shape()
        ),
        None,
    )
    uncovered = sorted(set(shapes_) - {e.path for e in entries})
    problems = []
    if mismatch is not None:
        got = tuple(np.shape(tensors[mismatch.source]))
        problems.append(
            f"tensor {mismatch.source!r} has shape {_shape(got)} in the file but "
            f"{arch} needs {_shape(mismatch.source_shape())} (jaxcnn's "
            f"{mismatch.path} {_shape(mismatch.shape)})"
        )
    if missing:
        problems.append(f"the file lacks {_listing(missing)}")
    if unexpected:
        problems.append(
            f"the file has tensors {arch} has no place for: {_listing(unexpected)}"
        )
    if uncovered:  # a layout that misses a parameter of the spec
        problems.append(f"no tensor of the file maps to {_listing(uncovered)}")
    if problems:
        raise CheckpointError(
            f"{file} does not match architecture {arch!r} in {source}'s names and "
            f"layout: " + "; ".join(problems) + f". Import a {source} {arch} at its "
            f"published configuration (`jaxcnn summary {arch}` shows it)"
        )
    out = {}
    for e in entries:
        value = tensors[e.source]
        if value.dtype.kind != "f":
            raise CheckpointError(
                f"{file}: tensor {e.source!r} holds {value.dtype} values, not floats"
            )
        out[e.path] = e.convert(value)
    return out


def _shape(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _listing(names: Sequence[str]) -> str:
    return listing([repr(n) for n in names], _MAX_LISTED)
