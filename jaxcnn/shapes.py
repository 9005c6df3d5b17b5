"""Static shape, parameter, MAC/FLOP and receptive-field inference (no JAX).

Every impossible network fails here, before anything is compiled, with a SpecError that
names the layer: `layer 6 (conv 3x3 valid): input 2x2x64 is smaller than the 3x3 kernel`.

Conventions:
  * Shapes exclude the batch axis: (H, W, C) for feature maps, (N,) for flat vectors.
  * Spatial size per axis: O = floor((W + P_total - D*(K-1) - 1) / S) + 1, where P_total is
    the padding resolved by `resolve_padding` (the one function layers.py also uses).
  * `params` counts trainable parameters (Keras "trainable params"): conv
    (kh*kw*Cin/groups + 1) * filters, dense (in + 1) * units (no +1 without bias),
    norm 2*C (scale and bias; C without a scale). Batch-norm running mean and variance (2*C) are counted in
    `non_trainable_params`.
  * FLOPs: conv and dense cost 2 * MACs (one multiply and one add per MAC; bias adds and
    fused activations are not counted, as in Keras/fvcore-style counters). Layers without
    MACs count elementwise ops on their output: pooling 1 op per window element per output,
    global pooling 1 op per input element, activation 1 op per element (0 for identity),
    normalisation 4 ops per element (subtract mean, divide by std, scale, shift; the
    statistics themselves are not counted), residual add 1 op per element (+1 when the
    block has an activation) plus its projection's 2 * MACs (and 4 ops per element for
    its batch norm); a branch join 1 op per output element per added branch (0 for a
    concatenation, +1 with an activation); dropout and flatten 0.
  * Receptive field and jump (effective stride) are in input pixels, per axis (h, w):
    a conv/pool with dilated kernel K_eff and stride S maps r -> r + (K_eff-1)*j,
    j -> j*S. Flatten and global pooling see the whole feature map (as a kernel the size
    of the map would). Norm, activation and dropout layers are treated as pointwise. A
    branch block's is the largest of its branches' (an empty branch: its input's).

The memory a training step or evaluation batch of the network needs: `footprint`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

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
    Padding,
    PoolSpec,
    ResidualSpec,
)

Shape = tuple[int, ...]
Pads = tuple[tuple[int, int], tuple[int, int]]

NORM_FLOPS_PER_ELEMENT = 4


# --------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """What one layer does to the shape, and what it costs.

    Attributes:
      index: position label, "3" or "3.1" for the second layer inside residual block 3,
        "3.b1.0" for the first layer of branch 1 of branch block 3.
      name: module path, e.g. "conv_0", "residual_3/conv_1" or "branches_3/b1/conv_0"
        (parameter path prefix).
      spec: the layer spec.
      input_shape / output_shape: without the batch axis.
      params: trainable parameters of this layer alone (a residual row counts only its
        projection and its norm; a branch block's row 0; their inner layers have their
        own rows).
      non_trainable_params: batch-norm running statistics.
      macs / flops: forward cost for one example (see the module docstring).
      receptive_field / jump: (h, w) in input pixels at this layer's output.
      projection: for a residual block whose shape changes, the 1x1 conv on the skip path.
    """

    index: str
    name: str
    spec: LayerSpec
    input_shape: Shape
    output_shape: Shape
    params: int
    non_trainable_params: int
    macs: int
    flops: int
    receptive_field: tuple[int, int]
    jump: tuple[int, int]
    projection: ConvSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "type": self.spec.type,
            "description": self.spec.describe(),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "params": self.params,
            "non_trainable_params": self.non_trainable_params,
            "macs": self.macs,
            "flops": self.flops,
            "receptive_field": list(self.receptive_field),
            "jump": list(self.jump),
            "projection": self.projection.to_dict() if self.projection else None,
        }


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-layer rows (inner residual layers first, then the block's own row) and totals."""

    spec: ModelSpec
    layers: tuple[LayerInfo, ...]
    total_params: int
    total_non_trainable_params: int
    total_macs: int
    total_flops: int
    output_shape: Shape

    def row(self, index: str) -> LayerInfo:
        """The row with this index label ("3", "3.1")."""
        for info in self.layers:
            if info.index == index:
                return info
        raise KeyError(index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "input_shape": list(self.spec.input_shape),
            "num_classes": self.spec.num_classes,
            "layers": [info.to_dict() for info in self.layers],
            "total_params": self.total_params,
            "total_non_trainable_params": self.total_non_trainable_params,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
            "output_shape": list(self.output_shape),
            "spec": self.spec.to_dict(),
        }


# --------------------------------------------------------------------------- padding
def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Size covered by a dilated kernel: D*(K-1) + 1."""
    return dilation * (kernel - 1) + 1


def resolve_padding(
    padding: Padding,
    in_hw: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int] = (1, 1),
) -> Pads:
    """Explicit ((top, bottom), (left, right)) zero padding for a conv or pool.

    `same` follows TF/Keras: total = max((ceil(W/S) - 1)*S + D*(K-1) + 1 - W, 0), with the
    odd pixel at the bottom/right. An (h, w) pair pads h rows on top and bottom and w
    columns left and right; ((top, bottom), (left, right)) is taken as it is; `valid`
    pads nothing.

    Args:
      padding: "valid", "same", an (h, w) pair or ((top, bottom), (left, right)).
      in_hw: input (H, W).
      window: kernel or pooling window (kh, kw).
      stride: (sh, sw).
      dilation: (dh, dw); 1 for pooling.
    """
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        pads = []
        for size, k, s, d in zip(in_hw, window, stride, dilation, strict=True):
            total = max(
                (math.ceil(size / s) - 1) * s + effective_kernel(k, d) - size, 0
            )
            pads.append((total // 2, total - total // 2))
        return (pads[0], pads[1])
    if isinstance(padding[0], tuple):
        return (tuple(padding[0]), tuple(padding[1]))
    ph, pw = padding
    return ((ph, ph), (pw, pw))


def _window_out(size: int, pads: tuple[int, int], k_eff: int, stride: int) -> int:
    return (size + pads[0] + pads[1] - k_eff) // stride + 1


# --------------------------------------------------------------------------- helpers
def format_shape(shape: Sequence[int]) -> str:
    """(2, 2, 64) -> '2x2x64'; (576,) -> '576'."""
    return "x".join(str(d) for d in shape)


def _label(index: str, layer: LayerSpec) -> str:
    return f"layer {index} ({layer.describe()})"


def _need_map(layer: LayerSpec, index: str, shape: Shape) -> None:
    if len(shape) != 3:
        raise SpecError(
            f"{_label(index, layer)}: input is flat ({shape[0]} features) but a "
            f"{layer.type} layer needs an HxWxC feature map; move it before the "
            "flatten/global_pool"
        )


def _windowed(
    layer: LayerSpec,
    index: str,
    shape: Shape,
    window: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    what: str,
) -> tuple[int, int]:
    """Output (H, W) of a conv/pool, or a SpecError when the input is too small."""
    pads = resolve_padding(layer.padding, shape[:2], window, stride, dilation)
    k_eff = tuple(effective_kernel(k, d) for k, d in zip(window, dilation, strict=True))
    padded = tuple(s + p[0] + p[1] for s, p in zip(shape[:2], pads, strict=True))
    if padded[0] < k_eff[0] or padded[1] < k_eff[1]:
        msg = f"{_label(index, layer)}: input {format_shape(shape)}"
        if padded != tuple(shape[:2]):
            msg += f" padded to {format_shape(padded)}"
        msg += f" is smaller than the {format_shape(window)} {what}"
        if k_eff != tuple(window):
            msg += f" (dilated to {format_shape(k_eff)})"
        raise SpecError(
            msg + "; use 'same' padding, a smaller kernel/stride, or a larger input"
        )
    return tuple(
        _window_out(s, p, k, st)
        for s, p, k, st in zip(shape[:2], pads, k_eff, stride, strict=True)
    )


def _grow(rf, jump, k_eff, stride):
    rf = tuple(r + (k - 1) * j for r, k, j in zip(rf, k_eff, jump, strict=True))
    jump = tuple(j * s for j, s in zip(jump, stride, strict=True))
    return rf, jump


def _elements(shape: Shape) -> int:
    return math.prod(shape)


# --------------------------------------------------------------------------- one layer
class _Cost(NamedTuple):
    """What one plain (non-residual) layer does to its input.

    `window` and `stride` grow the receptive field ((1, 1): a pointwise layer).
    """

    out: Shape
    params: int = 0
    non_trainable: int = 0
    macs: int = 0
    flops: int = 0
    window: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)


def _conv(layer: ConvSpec, index: str, shape: Shape) -> _Cost:
    _need_map(layer, index, shape)
    cin = shape[2]
    if cin % layer.groups:
        raise SpecError(
            f"{_label(index, layer)}: input channels {cin} are not divisible by "
            f"groups={layer.groups}; use a groups value that divides {cin}"
        )
    hw = _windowed(
        layer, index, shape, layer.kernel, layer.stride, layer.dilation, "kernel"
    )
    kh, kw = layer.kernel
    fan_in = kh * kw * cin // layer.groups
    macs = hw[0] * hw[1] * layer.filters * fan_in
    k_eff = tuple(
        effective_kernel(k, d)
        for k, d in zip(layer.kernel, layer.dilation, strict=True)
    )
    return _Cost(
        out=(*hw, layer.filters),
        params=(fan_in + int(layer.use_bias)) * layer.filters,
        macs=macs,
        flops=2 * macs,
        window=k_eff,
        stride=layer.stride,
    )


def _pool(layer: PoolSpec, index: str, shape: Shape) -> _Cost:
    _need_map(layer, index, shape)
    hw = _windowed(layer, index, shape, layer.window, layer.stride, (1, 1), "window")
    out = (*hw, shape[2])
    flops = _elements(out) * layer.window[0] * layer.window[1]
    return _Cost(out, flops=flops, window=layer.window, stride=layer.stride)


def _whole_map(shape: Shape) -> dict[str, tuple[int, int]]:
    """Flatten and global pooling see the whole map, as a kernel its size would."""
    return {"window": shape[:2], "stride": shape[:2]} if len(shape) == 3 else {}


def _global_pool(layer: GlobalPoolSpec, index: str, shape: Shape) -> _Cost:
    _need_map(layer, index, shape)
    return _Cost((shape[2],), flops=_elements(shape), **_whole_map(shape))


def _flatten(layer: FlattenSpec, index: str, shape: Shape) -> _Cost:
    return _Cost((_elements(shape),), **_whole_map(shape))


def _dense(layer: DenseSpec, index: str, shape: Shape) -> _Cost:
    if len(shape) != 1:
        raise SpecError(
            f"{_label(index, layer)}: input {format_shape(shape)} is not flat; add a "
            "flatten or global_pool before it"
        )
    macs = shape[0] * layer.units
    params = (shape[0] + int(layer.use_bias)) * layer.units
    return _Cost((layer.units,), params=params, macs=macs, flops=2 * macs)


def _norm(layer: NormSpec, index: str, shape: Shape) -> _Cost:
    channels = shape[-1]
    if layer.norm == "group" and channels % layer.groups:
        raise SpecError(
            f"{_label(index, layer)}: {channels} channels are not divisible by "
            f"groups={layer.groups}; use a groups value that divides {channels}"
        )
    return _Cost(
        shape,
        params=(1 + int(layer.scale)) * channels,  # [scale and] bias
        non_trainable=2 * channels if layer.norm == "batch" else 0,
        flops=NORM_FLOPS_PER_ELEMENT * _elements(shape),
    )


def _activation(layer: ActivationSpec, index: str, shape: Shape) -> _Cost:
    return _Cost(shape, flops=0 if layer.activation == "identity" else _elements(shape))


def _dropout(layer: DropoutSpec, index: str, shape: Shape) -> _Cost:
    return _Cost(shape)


_COSTS = {
    ConvSpec: _conv,
    PoolSpec: _pool,
    GlobalPoolSpec: _global_pool,
    FlattenSpec: _flatten,
    DenseSpec: _dense,
    NormSpec: _norm,
    ActivationSpec: _activation,
    DropoutSpec: _dropout,
}


def _infer_layer(layer, index, name, shape, rf, jump) -> list[LayerInfo]:
    """Rows for one layer (several for a residual block); the last row is the layer's own."""
    if isinstance(layer, ResidualSpec):
        return _infer_residual(layer, index, name, shape, rf, jump)
    if isinstance(layer, BranchesSpec):
        return _infer_branches(layer, index, name, shape, rf, jump)
    cost = next((f for cls, f in _COSTS.items() if isinstance(layer, cls)), None)
    if cost is None:
        raise SpecError(
            f"{_label(index, layer)}: unsupported layer type {type(layer).__name__}"
        )
    c = cost(layer, index, shape)
    rf, jump = _grow(rf, jump, c.window, c.stride)
    return [
        LayerInfo(
            index,
            name,
            layer,
            tuple(shape),
            tuple(c.out),
            c.params,
            c.non_trainable,
            c.macs,
            c.flops,
            tuple(rf),
            tuple(jump),
        )
    ]


def _skip_stride(size: int, target: int) -> int | None:
    """The stride s with which a 1x1 valid conv maps `size` to `target`, if any."""
    s = math.ceil(size / target)
    return s if (size - 1) // s + 1 == target else None


def _projection(
    layer: ResidualSpec, index: str, shape: Shape, out: Shape
) -> ConvSpec | None:
    """The 1x1 conv that makes the skip path match the block's output, or None (identity)."""
    if tuple(shape) == tuple(out):
        return None
    where = _label(index, layer)
    if len(shape) != 3 or len(out) != 3:
        raise SpecError(
            f"{where}: the block maps {format_shape(shape)} to {format_shape(out)}; a skip "
            "projection needs HxWxC feature maps on both sides (keep flatten/dense out of "
            "residual blocks, or keep the shape unchanged)"
        )
    strides = []
    for axis, (size, target) in enumerate(zip(shape[:2], out[:2], strict=True)):
        s = _skip_stride(size, target) if target <= size else None
        if s is None:
            raise SpecError(
                f"{where}: the block maps {format_shape(shape)} to {format_shape(out)}; no "
                f"integer stride takes {'height' if axis == 0 else 'width'} {size} to {target} "
                "on the skip path; use 'same' padding inside the block so sizes shrink by an "
                "integer factor"
            )
        strides.append(s)
    return ConvSpec(
        filters=out[2],
        kernel=(1, 1),
        stride=tuple(strides),
        use_bias=not layer.projection_norm,
    )


def _infer_residual(layer, index, name, shape, rf, jump) -> list[LayerInfo]:
    rows = _infer_sequence(layer.layers, shape, f"{index}.", f"{name}/", rf, jump)
    out = rows[-1].output_shape
    proj = _projection(layer, index, shape, out)
    if layer.projection_norm and proj is None:
        raise SpecError(
            f"{_label(index, layer)}: projection_norm = true, but the block keeps its "
            f"input shape {format_shape(shape)}, so its skip path is the identity with "
            "no projection to normalise; remove projection_norm"
        )
    params = macs = non_trainable = norm_flops = 0
    if proj is not None:
        params = (shape[2] + int(proj.use_bias)) * proj.filters
        macs = out[0] * out[1] * proj.filters * shape[2]
    if layer.projection_norm:
        params += 2 * out[2]
        non_trainable = 2 * out[2]
        norm_flops = NORM_FLOPS_PER_ELEMENT * _elements(out)
    per_add = 1 if layer.activation == "identity" else 2
    flops = 2 * macs + norm_flops + per_add * _elements(out)
    last = rows[-1]
    own = LayerInfo(
        index,
        name,
        layer,
        tuple(shape),
        tuple(out),
        params,
        non_trainable,
        macs,
        flops,
        last.receptive_field,
        last.jump,
        proj,
    )
    return [*rows, own]


def _infer_branches(layer, index, name, shape, rf, jump) -> list[LayerInfo]:
    """Rows of every branch (branch b's layers indexed "3.b<b>.<i>"), then the block's."""
    where = _label(index, layer)
    if len(shape) != 3:
        raise SpecError(
            f"{where}: input is flat ({shape[0]} features) but branches need an HxWxC "
            "feature map; move the block before the flatten/global_pool"
        )
    rows: list[LayerInfo] = []
    ends = []  # (output shape, receptive field, jump) of each branch
    for b, branch in enumerate(layer.branches):
        inner = _infer_sequence(
            branch, shape, f"{index}.b{b}.", f"{name}/b{b}/", rf, jump
        )
        rows.extend(inner)
        last = inner[-1] if inner else None
        ends.append(
            (last.output_shape, last.receptive_field, last.jump)
            if last
            else (tuple(shape), tuple(rf), tuple(jump))
        )
    outs = [e[0] for e in ends]
    for b, out in enumerate(outs):
        if len(out) != 3:
            raise SpecError(
                f"{where}: branch {b} outputs {format_shape(out)} features, but a "
                f"branch must output an HxWxC feature map to {layer.join}; keep "
                "flatten/global_pool/dense out of branches"
            )
    shown = ", ".join(f"branch {b} {format_shape(o)}" for b, o in enumerate(outs))
    if layer.join == "concat":
        odd = next((b for b, o in enumerate(outs) if o[:2] != outs[0][:2]), None)
        if odd is not None:
            raise SpecError(
                f"{where}: branch {odd} outputs {format_shape(outs[odd])} but branch 0 "
                f"outputs {format_shape(outs[0])} ({shown}); concatenation needs the same "
                "height and width in every branch: use 'same' padding or the same "
                "strides"
            )
        out = (*outs[0][:2], sum(o[2] for o in outs))
        flops = 0
    else:
        odd = next((b for b, o in enumerate(outs) if o != outs[0]), None)
        if odd is not None:
            raise SpecError(
                f"{where}: branch {odd} outputs {format_shape(outs[odd])} but branch 0 "
                f"outputs {format_shape(outs[0])} ({shown}); addition needs the same "
                "shape in every branch"
            )
        out = outs[0]
        flops = (len(outs) - 1) * _elements(out)
    if layer.activation != "identity":
        flops += _elements(out)
    rf = tuple(max(e[1][axis] for e in ends) for axis in (0, 1))
    jump = tuple(max(e[2][axis] for e in ends) for axis in (0, 1))
    own = LayerInfo(
        index, name, layer, tuple(shape), tuple(out), 0, 0, 0, flops, rf, jump
    )
    return [*rows, own]


def _infer_sequence(
    layers, shape, index_prefix, name_prefix, rf, jump
) -> list[LayerInfo]:
    rows: list[LayerInfo] = []
    for i, layer in enumerate(layers):
        new = _infer_layer(
            layer,
            f"{index_prefix}{i}",
            f"{name_prefix}{layer.type}_{i}",
            shape,
            rf,
            jump,
        )
        rows.extend(new)
        shape, rf, jump = new[-1].output_shape, new[-1].receptive_field, new[-1].jump
    return rows


# --------------------------------------------------------------------------- public
def infer_layers(
    layers: Sequence[LayerSpec], input_shape: Shape, index_prefix: str = ""
) -> tuple[LayerInfo, ...]:
    """The rows of `layers` applied in order to `input_shape` (no batch axis).

    Rows are labelled as in `infer` (inner residual rows first); `index_prefix` is put
    before each index ("3." for the body of block 3). Raises SpecError as `infer` does.
    """
    rows = _infer_sequence(layers, tuple(input_shape), index_prefix, "", (1, 1), (1, 1))
    return tuple(rows)


def infer(spec: ModelSpec) -> Summary:
    """Checks `spec` and computes every layer's shapes, parameters, cost and receptive field.

    Raises:
      SpecError: naming the first impossible layer and what would fix it, or when the
        final output is not exactly (num_classes,).
    """
    if not isinstance(spec, ModelSpec):
        raise SpecError(f"expected a ModelSpec, got {type(spec).__name__}")
    rows = _infer_sequence(spec.layers, tuple(spec.input_shape), "", "", (1, 1), (1, 1))
    top = [r for r in rows if "." not in r.index]
    out = top[-1].output_shape
    n = spec.num_classes
    if len(out) != 1:
        raise SpecError(
            f"the model outputs a {format_shape(out)} feature map but must output "
            f"num_classes={n} logits; end with a flatten (or global_pool) and dense(units={n})"
        )
    if out[0] != n:
        raise SpecError(
            f"last layer outputs {out[0]} features but num_classes={n}; end with dense(units={n})"
        )
    return Summary(
        spec=spec,
        layers=tuple(rows),
        total_params=sum(r.params for r in rows),
        total_non_trainable_params=sum(r.non_trainable_params for r in rows),
        total_macs=sum(r.macs for r in rows),
        total_flops=sum(r.flops for r in rows),
        output_shape=tuple(out),
    )


def summarize(spec: ModelSpec) -> Summary:
    """Alias of `infer` (the public API name)."""
    return infer(spec)


def _si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_table(summary: Summary) -> str:
    """A Keras-style table: one row per layer, then totals.

    Columns: layer name (type), output shape, trainable params, MACs, FLOPs, receptive
    field. Layers inside a residual block are indented above the block's own row.
    """
    header = (
        "Layer (type)",
        "Output shape",
        "Param #",
        "MACs",
        "FLOPs",
        "Receptive field",
    )
    rows = []
    for info in summary.layers:
        depth = info.index.count(".")
        parts = info.name.split("/")
        # a layer in a branch shows its branch: "b1/conv_0"
        in_branch = len(parts) > 1 and re.fullmatch(r"b\d+", parts[-2])
        short = "/".join(parts[-2:]) if in_branch else parts[-1]
        label = "  " * depth + f"{short} ({info.spec.describe()})"
        rows.append(
            (
                label,
                format_shape(info.output_shape),
                f"{info.params:,}",
                f"{info.macs:,}",
                f"{info.flops:,}",
                f"{info.receptive_field[0]}x{info.receptive_field[1]}",
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ("<", "<", ">", ">", ">", ">")

    def line(cells):
        return "  ".join(
            f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)
        )

    rule = "=" * len(line(header))
    spec = summary.spec
    out = [
        f'Model: "{spec.name}"  input {format_shape(spec.input_shape)}, '
        f"{spec.num_classes} classes",
        rule,
        line(header),
        rule.replace("=", "-"),
        *(line(r) for r in rows),
        rule,
        f"Total params: {summary.total_params + summary.total_non_trainable_params:,}",
        f"Trainable params: {summary.total_params:,}",
        f"Non-trainable params: {summary.total_non_trainable_params:,}",
        f"Forward MACs per example: {summary.total_macs:,} ({_si(summary.total_macs)})",
        f"Forward FLOPs per example: {summary.total_flops:,} ({_si(summary.total_flops)})",
    ]
    return "\n".join(out)
