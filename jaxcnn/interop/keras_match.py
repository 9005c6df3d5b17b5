"""Keras weight files matched to jaxcnn's layers by kind and order.

Owns the Keras matching (`keras_entries`): Keras 3 names layers by class and Keras 2
files keep the layer order, so the k-th conv (dense, batch-norm) layer of the file is
the k-th of the spec in Keras's layer order (`_keras_units`). Keras's convolutions are
HWIO and its dense kernels [in, out], as jaxcnn's; it flattens NHWC, as jaxcnn does;
its batch norm's gamma, beta, moving_mean, moving_variance are scale, bias, mean, var
(a batch norm built with scale=False has no gamma, as the spec's `scale=False` norms).
Depthwise convs are a kind of their own (Keras 3 numbers DepthwiseConv2D layers apart
from Conv2D's), their [kh, kw, C, 1] kernels jaxcnn's [kh, kw, 1, C].
Builds on `names` (`Entry`, the unit walk); `mapping` dispatches to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxcnn.interop import readers
from jaxcnn.interop.names import Entry, Unit, layer_units
from jaxcnn.spec import ActivationSpec, BranchesSpec, ConvSpec, ResidualSpec


def _keras_kind(names: Sequence[str], arrays: Sequence[np.ndarray]) -> str:
    first = arrays[0].ndim
    if first == 4 and _is_depthwise(names[0]):
        return "depthwise"
    if first == 4:
        return "conv"
    if first == 2:
        return "dense"
    if len(arrays) in (3, 4) and all(a.ndim == 1 for a in arrays):
        return "batch norm"  # gamma (unless scale=False), beta, mean, variance
    return "other"


def _is_depthwise(name: str) -> bool:
    """A DepthwiseConv2D's kernel: Keras 3 names the layer depthwise_conv2d[_N]; Keras
    2 files name the weight depthwise_kernel (Keras 2's own) or keep the layer's name,
    which says depthwise (depthwise_conv2d_N, MobileNetV2's block_N_depthwise)."""
    if name.startswith("layers/"):
        return re.fullmatch(r"depthwise_conv2d(_\d+)?", name.split("/")[1]) is not None
    return "depthwise" in name.removeprefix("model_weights/")


def _depthwise_paths(layers: Sequence, prefix: str = "") -> set[str]:
    """The paths of the depthwise convs (one input channel and one filter per group:
    Keras's DepthwiseConv2D, matched among the file's depthwise layers), named as the
    unit walk names them."""
    out: set[str] = set()
    for i, layer in enumerate(layers):
        path = f"{prefix}{layer.type}_{i}"
        if isinstance(layer, ConvSpec) and 1 < layer.groups == layer.filters:
            out.add(path)  # one input channel per group, one filter per channel
        elif isinstance(layer, ResidualSpec):
            out |= _depthwise_paths(layer.layers, f"{path}/")
        elif isinstance(layer, BranchesSpec):
            for b, branch in enumerate(layer.branches):
                out |= _depthwise_paths(branch, f"{path}/b{b}/")
    return out


def _depth(layer) -> int:
    """Keras layers a layer stands for on its longest path: a branch block is its
    longest branch and the join."""
    if isinstance(layer, BranchesSpec):
        return 1 + max(sum(map(_depth, branch)) for branch in layer.branches)
    return 1


def _placed(block: BranchesSpec, path: str, after: int, shapes_) -> list[tuple]:
    """(distance to the block's join, unit) for the units of a branch block's
    branches; `after`: layers between the block's join and the outer block's."""
    placed: list[tuple[int, Unit]] = []
    for b, branch in enumerate(block.branches):
        for j, inner in enumerate(branch):
            here = f"{path}/b{b}/{inner.type}_{j}"
            rest = after + sum(map(_depth, branch[j + 1 :]))
            if isinstance(inner, BranchesSpec):  # its own join, then the rest
                placed += _placed(inner, here, rest + 1, shapes_)
                continue
            act = j + 1 < len(branch) and isinstance(branch[j + 1], ActivationSpec)
            placed += [(rest + 1, u) for u in layer_units(inner, here, act, shapes_)]
    return placed


def _keras_units(layers: Sequence, prefix: str, shapes_) -> list[Unit]:
    """A layer table's units in the order of a Keras functional model's layers, which
    Keras sorts by their distance from the model's output (the longest path), farthest
    first, and in the order it reached them where distances tie. Outside branch blocks
    that is the unit walk of `names`. In a branch block, a unit with n layers on its
    longest path to the join comes before those with fewer, branches in order where
    they tie; a branch block nested in a branch counts as its longest branch and its
    join. Keras's ResNet50 block (shortcut conv and batch norm as branch 0) has its
    layers in the order 1_conv, 1_bn, 2_conv, 2_bn, 0_conv, 3_conv, 0_bn, 3_bn; in
    Keras's InceptionV3 mixed9 and mixed10 blocks, the 1x3 and 3x1 convs of the
    nested splits come before the 1x1 branch's conv and the pool branch's."""
    out: list[Unit] = []
    for i, layer in enumerate(layers):
        path = f"{prefix}{layer.type}_{i}"
        if not isinstance(layer, BranchesSpec):
            act = i + 1 < len(layers) and isinstance(layers[i + 1], ActivationSpec)
            out += layer_units(layer, path, act, shapes_)
            continue
        placed = _placed(layer, path, 0, shapes_)
        out += [u for _, u in sorted(placed, key=lambda p: -p[0])]  # stable: ties keep
    return out


def keras_entries(spec, shapes_, tensors) -> list[Entry]:
    """Keras layers matched to jaxcnn's by kind and order: the k-th conv of the file is
    the k-th conv of the spec in the order of `_keras_units`, likewise dense and
    batch-norm layers. Keras 3 names layers by class (conv2d, conv2d_1, ...) and Keras
    2 files keep the layer order, so the order within each kind is the model's."""
    kinds = {"conv": "conv", "dense": "dense", "norm": "batch norm"}
    depthwise = _depthwise_paths(spec.layers)
    weights = {
        "conv": ("kernel", "bias"),
        "depthwise": ("kernel", "bias"),
        "dense": ("kernel", "bias"),
        "batch norm": ("scale", "bias", "mean", "var"),
    }
    wanted: dict[str, list[tuple[str, tuple[str, ...]]]] = {k: [] for k in weights}
    for u in _keras_units(spec.layers, "", shapes_):
        kind = "depthwise" if u.path in depthwise else kinds[u.kind]
        wanted[kind].append((u.path, weights[kind]))
    found: dict[str, list[list[str]]] = {kind: [] for kind in wanted}
    for _layer, names in readers.keras_layers(tensors):
        kind = _keras_kind(names, [tensors[n] for n in names])
        found.setdefault(kind, []).append(names)
    entries = []
    for kind, layers in wanted.items():
        for (name, params), names in zip(layers, found[kind], strict=False):
            params = [p for p in params if f"{name}/{p}" in shapes_]
            for param, source in zip(params, names, strict=False):
                path = f"{name}/{param}"
                layout = (
                    "depthwise" if kind == "depthwise" and param == "kernel" else "same"
                )
                entries.append(Entry(source, path, layout, shapes_[path]))
        for name, params in layers[len(found[kind]) :]:  # the file has too few
            for param in params:
                path = f"{name}/{param}"
                if path in shapes_:
                    entries.append(
                        Entry(f"<{kind} layer for {name}>", path, "same", shapes_[path])
                    )
    return entries
