"""torchvision's and timm's module names for jaxcnn's presets, walked off the spec.

Owns `Entry` (one tensor of a source file and the jaxcnn parameter it becomes) and the
name walks each layout function of `mapping.LAYOUTS` is; `keras_match` reuses `Entry`
and the unit walk (`Unit`, `layer_units`), `mapping` holds the tables and the check.

jaxcnn's paths are `<type>_<index>/<name>` (`conv_0/kernel`, `norm_1/scale`,
`dense_23/bias`; batch-norm running statistics `norm_1/mean`, `norm_1/var`). Layouts:

* PyTorch convolutions are [out, in, kh, kw] (OIHW), jaxcnn's [kh, kw, in, out] (HWIO).
* PyTorch linear layers are [out, in], jaxcnn's dense kernels [in, out].
* PyTorch flattens a [C, H, W] map channel-major, jaxcnn (NHWC) position-major, so the
  rows of the first dense layer after a flatten are permuted from (c, h, w) to (h, w, c)
  order.
* timm's VGG head is a 7x7 convolution over the last 7x7 map (`pre_logits.fc1`) and a
  1x1 one (`pre_logits.fc2`): on that map they are the dense layers after the flatten.
* Batch norm: PyTorch's weight, bias, running_mean, running_var are scale, bias, mean,
  var (`num_batches_tracked` plays no part in inference and is not imported).

* The branch-block networks (ResNet, SqueezeNet, MobileNet v2, GoogLeNet, DenseNet,
  Inception v3) take torchvision's module names, derived by walking the spec in the
  order torchvision registers its modules; published DenseNet files' older names are
  renamed (`densenet_names`). timm's ResNets, DenseNets and Inception v3 keep
  torchvision's names; its MobileNet v2 has its own (`timm_mobilenet_v2`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxcnn import shapes
from jaxcnn.errors import SpecError
from jaxcnn.spec import (
    ActivationSpec,
    BranchesSpec,
    ConvSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    GlobalPoolSpec,
    LayerSpec,
    ModelSpec,
    NormSpec,
    PoolSpec,
    ResidualSpec,
)

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a source file and the jaxcnn parameter it becomes.

    layout: "same" (copied), "oihw" (a PyTorch conv kernel), "linear" (a PyTorch
      linear weight; with `chw`, the first after a flatten of a [C, H, W] map), or
      "conv_dense" (a PyTorch conv kernel covering the whole [C, H, W] map: a dense
      layer on the flattened map), or "depthwise" (a Keras depthwise kernel,
      [kh, kw, C, 1]: jaxcnn's grouped conv kernel is [kh, kw, 1, C]).
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
        if self.layout == "depthwise":
            return (s[0], s[1], s[3], s[2])
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
        elif self.layout == "depthwise":
            value = value.transpose(0, 1, 3, 2)
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


# --------------------------------------------------------------------------- branch nets
# The networks of jaxcnn/architectures.py. `_units` lists a layer table's conv, batch-
# norm and dense modules in the order torchvision registers its own (a residual block's
# body, then its projection and the projection's batch norm; branches in order), and a
# network's naming walks the spec to give each its torchvision module name.
@dataclasses.dataclass(frozen=True)
class Unit:
    """A conv, batch-norm or dense module of the spec, in a source's module order."""

    path: str  # jaxcnn's module path: residual_4/conv_0, branches_3/b1/norm_4
    kind: str  # "conv", "norm" or "dense"
    act: bool = False  # an activation layer follows it in its table


def _units(layers: Sequence, prefix: str, shapes_: Mapping[str, Shape]) -> list[Unit]:
    out: list[Unit] = []
    for i, layer in enumerate(layers):
        act = i + 1 < len(layers) and isinstance(layers[i + 1], ActivationSpec)
        out += layer_units(layer, f"{prefix}{layer.type}_{i}", act, shapes_)
    return out


def layer_units(layer, path: str, act: bool, shapes_) -> list[Unit]:
    """The units of `layer` at `path` (a block's in `_units`'s order); `act`: an
    activation layer follows it."""
    if isinstance(layer, ConvSpec):
        return [Unit(path, "conv", act or layer.activation != "identity")]
    if isinstance(layer, NormSpec) and layer.norm == "batch":
        return [Unit(path, "norm", act)]
    if isinstance(layer, DenseSpec):
        return [Unit(path, "dense", act)]
    if isinstance(layer, ResidualSpec):
        out = _units(layer.layers, f"{path}/", shapes_)
        if f"{path}/proj/kernel" in shapes_:
            out.append(Unit(f"{path}/proj", "conv"))
        if f"{path}/proj_norm/scale" in shapes_:
            out.append(Unit(f"{path}/proj_norm", "norm"))
        return out
    if isinstance(layer, BranchesSpec):
        return [
            u
            for b, branch in enumerate(layer.branches)
            for u in _units(branch, f"{path}/b{b}/", shapes_)
        ]
    if isinstance(
        layer, PoolSpec | GlobalPoolSpec | ActivationSpec | DropoutSpec | FlattenSpec
    ):
        return []
    raise SpecError(
        f"layer {path} ({layer.type}) has no counterpart in the source framework's "
        f"layout"
    )


_TORCH_NORM = ("weight", "bias", "running_mean", "running_var")


def _named(pairs: Sequence[tuple[str, Unit]], shapes_) -> list[Entry]:
    """Entries for (torchvision module name, unit) pairs."""
    entries: list[Entry] = []
    for name, unit in pairs:
        prefix = f"{name}."
        if unit.kind == "norm":
            entries += _norm_entries(prefix, unit.path, shapes_, _TORCH_NORM)
        else:
            layout = "oihw" if unit.kind == "conv" else "linear"
            entries += _weight_entries(prefix, unit.path, shapes_, layout)
    return entries


def _conv_bn_names(units: Sequence[Unit], name: str) -> list[tuple[str, Unit]]:
    """torchvision's BasicConv2d: a conv and its batch norm as `name.conv`, `name.bn`."""
    kinds = [u.kind for u in units]
    if kinds != ["conv", "norm"]:
        raise SpecError(
            f"{', '.join(u.path for u in units)}: torchvision's {name} is a conv and a "
            f"batch norm, the spec has {', '.join(kinds)}"
        )
    return [(f"{name}.conv", units[0]), (f"{name}.bn", units[1])]


def _top_units(spec: ModelSpec, shapes_) -> list[tuple[int, LayerSpec, list[Unit]]]:
    """Each top-level layer with its units; a unit's `act` sees the next top layer."""
    out = []
    for i, layer in enumerate(spec.layers):
        act = i + 1 < len(spec.layers) and isinstance(
            spec.layers[i + 1], ActivationSpec
        )
        out.append((i, layer, layer_units(layer, f"{layer.type}_{i}", act, shapes_)))
    return out


def torchvision_resnet(spec, shapes_) -> list[Entry]:
    """torchvision's `resnet*`: conv1, bn1, layer<s>.<b>.conv<n> / bn<n> /
    downsample.0 / downsample.1, fc. A stage starts at the first block and at each
    block with a projection."""
    pairs, stage, block, convs, norms = [], 0, 0, 0, 0
    for i, layer, units in _top_units(spec, shapes_):
        if isinstance(layer, ResidualSpec):
            if stage == 0 or f"residual_{i}/proj/kernel" in shapes_:
                stage, block = stage + 1, 0
            where = f"layer{stage}.{block}"
            n = {"conv": 0, "norm": 0}
            for u in units:
                if u.path.endswith("/proj"):
                    pairs.append((f"{where}.downsample.0", u))
                elif u.path.endswith("/proj_norm"):
                    pairs.append((f"{where}.downsample.1", u))
                else:
                    n[u.kind] += 1
                    torch = "conv" if u.kind == "conv" else "bn"
                    pairs.append((f"{where}.{torch}{n[u.kind]}", u))
            block += 1
            continue
        for u in units:
            if u.kind == "dense":
                pairs.append(("fc", u))
            elif u.kind == "conv":
                convs += 1
                pairs.append((f"conv{convs}", u))
            else:
                norms += 1
                pairs.append((f"bn{norms}", u))
    return _named(pairs, shapes_)


def torchvision_squeezenet(spec, shapes_) -> list[Entry]:
    """torchvision's `squeezenet1_1`: features.<k> (a fire module's squeeze, expand1x1
    and expand3x3), then classifier.1 (the 1x1 conv after the dropout); every layer
    takes one index and a fused activation another."""
    pairs, area, k = [], "features", 0
    layers = spec.layers
    for i, layer, units in _top_units(spec, shapes_):
        if isinstance(layer, DropoutSpec):
            area, k = "classifier", 1
            continue
        if (
            isinstance(layer, ConvSpec)
            and i + 1 < len(layers)
            and isinstance(layers[i + 1], BranchesSpec)
        ):
            pairs.append((f"{area}.{k}.squeeze", units[0]))
        elif isinstance(layer, BranchesSpec):
            if [u.kind for u in units] != ["conv", "conv"]:
                raise SpecError(f"branches_{i} is not a fire module's two expansions")
            pairs += [
                (f"{area}.{k}.expand1x1", units[0]),
                (f"{area}.{k}.expand3x3", units[1]),
            ]
            k += 1
        elif isinstance(layer, ConvSpec):
            pairs.append((f"{area}.{k}", units[0]))
            k += 1 + (layer.activation != "identity")
        elif not isinstance(layer, GlobalPoolSpec):
            k += 1
    return _named(pairs, shapes_)


def _mobilenet_v2_blocks(spec, shapes_):
    """MobileNet v2 as its modules: the stem (conv, bn); each inverted residual block's
    conv-bn pairs with whether it keeps a skip (a block keeps none where the map size or
    width changes, so each stage starts with one); the last conv and bn; the head."""
    blocks: list[tuple[list[Unit], bool]] = []  # the stem first
    open_: list[Unit] = []
    head: list[Unit] = []
    for _i, layer, units in _top_units(spec, shapes_):
        if isinstance(layer, ResidualSpec):
            blocks.append((units, True))
            continue
        for u in units:
            if u.kind == "dense":
                head.append(u)
            elif not blocks and not open_ and u.kind == "conv":
                blocks.append(([u], False))  # the stem
            elif len(blocks) == 1 and len(blocks[0][0]) == 1:
                blocks[0][0].append(u)  # the stem's batch norm
            else:
                open_.append(u)
                if u.kind == "norm" and not u.act:  # a block's linear projection
                    blocks.append((open_, False))
                    open_ = []
    return blocks[0][0], blocks[1:], open_, head


def torchvision_mobilenet_v2(spec, shapes_) -> list[Entry]:
    """torchvision's `mobilenet_v2`: features.0 (conv, bn), the inverted residual
    blocks features.<k>.conv.<j>, features.<last> (conv, bn), classifier.1."""
    stem, blocks, last, head = _mobilenet_v2_blocks(spec, shapes_)
    pairs = [(f"features.0.{j}", u) for j, u in enumerate(stem)]
    for k, (group, _skip) in enumerate(blocks, 1):
        for j in range(0, len(group), 2):  # conv-bn-act pairs, then conv, bn
            if j + 2 < len(group):
                pairs += [
                    (f"features.{k}.conv.{j // 2}.{m}", group[j + m]) for m in (0, 1)
                ]
            else:
                pairs += [
                    (f"features.{k}.conv.{j // 2 + m}", group[j + m]) for m in (0, 1)
                ]
    pairs += [(f"features.{len(blocks) + 1}.{j}", u) for j, u in enumerate(last)]
    pairs += [("classifier.1", u) for u in head]
    return _named(pairs, shapes_)


def timm_mobilenet_v2(spec, shapes_) -> list[Entry]:
    """timm's `mobilenetv2_100`: conv_stem, bn1, blocks.<stage>.<i> (the first block
    conv_dw, bn1, conv_pw, bn2; the others conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3;
    a stage starts at each block without a skip), conv_head, bn2, classifier."""
    stem, blocks, last, head = _mobilenet_v2_blocks(spec, shapes_)
    pairs = [("conv_stem", stem[0]), ("bn1", stem[1])]
    stage, i = -1, 0
    for group, skip in blocks:
        stage, i = (stage, i + 1) if skip else (stage + 1, 0)
        convs = ("conv_dw", "conv_pw") if len(group) == 4 else _TIMM_IR_CONVS
        for j, conv in enumerate(convs):
            pairs += [
                (f"blocks.{stage}.{i}.{conv}", group[2 * j]),
                (f"blocks.{stage}.{i}.bn{j + 1}", group[2 * j + 1]),
            ]
    pairs += [("conv_head", last[0]), ("bn2", last[1])]
    pairs += [("classifier", u) for u in head]
    return _named(pairs, shapes_)


_TIMM_IR_CONVS = ("conv_pw", "conv_dw", "conv_pwl")


def torchvision_googlenet(spec, shapes_) -> list[Entry]:
    """torchvision's `googlenet`: conv1..conv3 (BasicConv2d: .conv, .bn), the
    inception modules inception<stage><letter> (the stage counts the pools before
    it) with branch<n>[.<j>], fc. The auxiliary heads (aux1, aux2) only train."""
    pairs, stem, pools, stage, letter = [], [], 0, 0, 0
    for i, layer, units in _top_units(spec, shapes_):
        if isinstance(layer, PoolSpec):
            pools += 1
        elif isinstance(layer, BranchesSpec):
            if pools + 1 != stage:
                stage, letter = pools + 1, 0
            where = f"inception{stage}{'abcdefgh'[letter]}"
            letter += 1
            for b, branch in enumerate(layer.branches):
                modules = _branch_modules(branch, f"branches_{i}/b{b}/", shapes_)
                for j, module in enumerate(modules):
                    if module:
                        name = f"{where}.branch{b + 1}"
                        if len(modules) > 1:
                            name += f".{j}"
                        pairs += _conv_bn_names(module, name)
        else:
            stem += units
    for u in stem:
        if u.kind == "dense":
            pairs.append(("fc", u))
    convs = [u for u in stem if u.kind != "dense"]
    for j in range(0, len(convs), 2):
        pairs += _conv_bn_names(convs[j : j + 2], f"conv{j // 2 + 1}")
    return _named(pairs, shapes_)


def _branch_modules(branch, prefix, shapes_) -> list[list[Unit]]:
    """A branch as torchvision's Sequential sees it: each conv with its batch norm
    (and activation) one module, each pool one (with no units)."""
    modules: list[list[Unit]] = []
    for i, layer in enumerate(branch):
        if isinstance(layer, PoolSpec):
            modules.append([])
        elif isinstance(layer, ConvSpec):
            modules.append([Unit(f"{prefix}conv_{i}", "conv")])
        elif isinstance(layer, NormSpec):
            modules[-1].append(Unit(f"{prefix}norm_{i}", "norm"))
        elif isinstance(layer, BranchesSpec):
            for b, inner in enumerate(layer.branches):
                modules += _branch_modules(
                    inner, f"{prefix}branches_{i}/b{b}/", shapes_
                )
    return modules


# Inception v3's module kinds, told apart by their number of BasicConv2d modules, and
# the torchvision names of those modules in order. B and D halve the map size and
# start a stage (Mixed_6a, Mixed_7a).
_INCEPTION_V3 = {
    7: ("A", ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1",
              "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool")),
    4: ("B", ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")),
    10: ("C", ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3",
               "branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
               "branch7x7dbl_5", "branch_pool")),
    6: ("D", ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2",
              "branch7x7x3_3", "branch7x7x3_4")),
    9: ("E", ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b",
              "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b",
              "branch_pool")),
}  # fmt: skip
_INCEPTION_V3_STEM = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
)


def torchvision_inception_v3(spec, shapes_) -> list[Entry]:
    """torchvision's `inception_v3`: Conv2d_1a_3x3 ... Conv2d_4a_3x3, Mixed_5b ...
    Mixed_7c (BasicConv2d modules named per module kind), fc. The auxiliary head
    (AuxLogits) only trains."""
    pairs, stem, head = [], [], []
    stage, letter = 5, 1
    for i, layer, units in _top_units(spec, shapes_):
        if not isinstance(layer, BranchesSpec):
            stem += [u for u in units if u.kind != "dense"]
            head += [u for u in units if u.kind == "dense"]
            continue
        modules = [
            m
            for b, branch in enumerate(layer.branches)
            for m in _branch_modules(branch, f"branches_{i}/b{b}/", shapes_)
            if m
        ]
        if len(modules) not in _INCEPTION_V3:
            raise SpecError(
                f"branches_{i}: {len(modules)} conv modules is no Inception v3 module"
            )
        kind, names = _INCEPTION_V3[len(modules)]
        if kind in "BD":
            stage, letter = stage + 1, 0
        where = f"Mixed_{stage}{'abcdefgh'[letter]}"
        letter += 1
        for name, module in zip(names, modules, strict=True):
            pairs += _conv_bn_names(module, f"{where}.{name}")
    if len(stem) != 2 * len(_INCEPTION_V3_STEM):
        raise SpecError(f"model {spec.name!r} has no Inception v3 stem")
    for j, name in enumerate(_INCEPTION_V3_STEM):
        pairs += _conv_bn_names(stem[2 * j : 2 * j + 2], name)
    pairs += [("fc", u) for u in head]
    return _named(pairs, shapes_)


def torchvision_densenet(spec, shapes_) -> list[Entry]:
    """torchvision's `densenet*`: features.conv0, features.norm0, then
    features.denseblock<b>.denselayer<l>.norm1 / conv1 / norm2 / conv2, between blocks
    features.transition<b>.norm / conv, features.norm5, classifier."""
    pairs, block, layer_n, after_block = [], 0, 0, False
    tops = _top_units(spec, shapes_)
    for n, (_i, layer, units) in enumerate(tops):
        if isinstance(layer, BranchesSpec):
            if not after_block:
                block, layer_n = block + 1, 0
            layer_n += 1
            where = f"features.denseblock{block}.denselayer{layer_n}"
            count = {"conv": 0, "norm": 0}
            for u in units:
                count[u.kind] += 1
                pairs.append((f"{where}.{u.kind}{count[u.kind]}", u))
            after_block = True
            continue
        after_block = False
        for u in units:
            if u.kind == "dense":
                pairs.append(("classifier", u))
            elif block == 0:
                pairs.append((f"features.{u.kind}0", u))
            elif any(isinstance(t[1], BranchesSpec) for t in tops[n:]):
                pairs.append((f"features.transition{block}.{u.kind}", u))
            else:
                pairs.append(("features.norm5", u))
    return _named(pairs, shapes_)


def densenet_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision's published DenseNet files name a dense layer's modules `norm.1`,
    `conv.2`, ...; torchvision renames them `norm1`, `conv2` when it loads them."""
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|"
        r"running_mean|running_var))$"
    )
    out = {}
    for name, value in tensors.items():
        match = pattern.match(name)
        out[match.group(1) + match.group(2) if match else name] = value
    return out
