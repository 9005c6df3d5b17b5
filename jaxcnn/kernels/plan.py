"""The kernel plan: which implementation every layer runs, for one input shape.

One place decides, from (the model spec, the `KernelChoice` held by the model, the
backend, the ACTUAL input shape), per layer:

- conv: "xla" (`lax.conv_general_dilated`), "im2col" or "winograd" (`kernels.conv`);
- pool: "xla" or "fast" (`kernels.pool`);
- crop: a conv directly followed by a pool skips the rows/columns of its output that
  the floor-mode pool never reads (`border_crop`; identical values and gradients);
- fusion: a ReLU conv followed by a max pool hands its ReLU to the pool, which runs
  `relu_max_pool` (one hand-written backward pass);
- precision: the operand dtype of each conv and dense layer's matmuls, the dtype of
  their products (`product_dtype`) and of the activations it hands on
  (`jaxcnn.precision` has the policy);
- forward only: a model in eval mode plans with `KernelChoice.forward_only`; on CPU,
  "auto" then runs XLA's convolution for a 3x3 stride-1 conv with fewer than
  EVAL_WINOGRAD_MIN_CHANNELS input channels instead of Winograd, and for every conv
  with fewer than WINOGRAD_MIN_CHANNELS input channels instead of im2col, and XLA's
  reduce_window for a max pool whose windows tile its input (window == stride, no
  padding) instead of the "fast" pool, whose reason is its backward pass (without a
  backward pass those run as fast or faster and compile several times faster:
  benchmarks/results/eval_kernels.md, eval_batch1000_kernels.md); a forward pass of a
  single image runs XLA's kernels everywhere (eval_batch1_kernels.md);
- for the whole model, `rolls_steps`: whether k train steps per dispatch may run as a
  rolled `lax.fori_loop` (not on CPU when a conv runs XLA's lax.conv: XLA:CPU runs it
  far slower inside a loop body, jax-ml/jax#12868).

Defaults ("auto"): on CPU the hand-written kernels (Winograd for 3x3 stride-1 convs with
at least WINOGRAD_MIN_CHANNELS input channels, im2col for the other ungrouped convs,
"fast" max pooling, cropping on, fusion off: the fused VJP pays only next to XLA convs,
benchmarks/README.md); on GPU/TPU XLA's everywhere. Grouped convs always run XLA's.

Plans are static (shapes only) and cached, so modules ask for theirs at trace time at no
cost under jit; an input the spec cannot take raises a SpecError naming the layer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Literal

from jaxcnn import shapes
from jaxcnn.errors import SpecError
from jaxcnn.kernels import conv as conv_lib
from jaxcnn.kernels import pool as pool_lib
from jaxcnn.kernels.windows import Pads, out_size, pair
from jaxcnn.spec import (
    KERNELS,
    PRECISIONS,
    BranchesSpec,
    ConvSpec,
    DenseSpec,
    FlattenSpec,
    Kernels,
    LayerSpec,
    ModelSpec,
    PoolSpec,
    Precision,
    ResidualSpec,
)

Shape = tuple[int, ...]

# a forward-only pass (eval mode) keeps Winograd on CPU from this many input channels
# up; below it XLA's forward convolution runs as fast and compiles several times faster
# (benchmarks/results/eval_kernels.md)
EVAL_WINOGRAD_MIN_CHANNELS = 64


# --------------------------------------------------------------------------- choice
@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """The kernels setting of a model, plus optional overrides (tests, benchmarks).

    Attributes:
      kernels: "auto" (hand-written kernels on CPU, XLA's on GPU/TPU), "xla" or "fast"
        (the hand-written kernels on any backend).
      conv: force this implementation on every ungrouped conv ("winograd" runs the
        convs it does not apply to as "im2col"); None: from `kernels`.
      pool: force "xla" or "fast" on every pool; None: from `kernels`.
      crop: force border cropping of conv -> pool pairs on or off; None: from `kernels`.
      fuse_relu_pool: force ReLU + max-pool fusion on or off; None: off.
      conv_layers: per-layer conv overrides, ((path, impl), ...) such as
        (("conv_0", "xla"),); they win over `conv`.
      precision: the operand dtype of every conv and dense layer, "float32" or
        "bfloat16" (jaxcnn.precision).
      precision_layers: per-layer precision overrides of conv and dense layers,
        ((path, precision), ...) such as (("conv_0", "float32"),); they win over
        `precision`.
      forward_only: plan for a forward pass without gradients (a model in eval mode
        sets it at trace time): with kernels "auto" on CPU, Winograd only from
        EVAL_WINOGRAD_MIN_CHANNELS input channels up, XLA's convolution below.
    """

    kernels: Kernels = "auto"
    conv: conv_lib.ConvImpl | None = None
    pool: pool_lib.PoolImpl | None = None
    crop: bool | None = None
    fuse_relu_pool: bool | None = None
    conv_layers: tuple[tuple[str, conv_lib.ConvImpl], ...] = ()
    precision: Precision = "float32"
    precision_layers: tuple[tuple[str, Precision], ...] = ()
    forward_only: bool = False

    def __post_init__(self):
        def check(ok, message):
            if not ok:
                raise SpecError(message)

        check(
            self.kernels in KERNELS,
            f"kernels must be one of {', '.join(KERNELS)}; got {self.kernels!r}",
        )
        impls = ", ".join(conv_lib.CONV_IMPLS)
        check(
            self.conv is None or self.conv in conv_lib.CONV_IMPLS,
            f"conv must be None or one of {impls}; got {self.conv!r}",
        )
        check(
            self.pool is None or self.pool in pool_lib.POOL_IMPLS,
            f"pool must be None or one of xla, fast; got {self.pool!r}",
        )
        check(
            isinstance(self.forward_only, bool),
            f"forward_only must be True or False; got {self.forward_only!r}",
        )
        for name in ("crop", "fuse_relu_pool"):
            value = getattr(self, name)
            check(
                value is None or isinstance(value, bool),
                f"{name} must be None, True or False; got {value!r}",
            )
        layers = tuple(tuple(item) for item in self.conv_layers)
        object.__setattr__(self, "conv_layers", layers)
        for item in layers:
            check(
                len(item) == 2
                and isinstance(item[0], str)
                and item[1] in conv_lib.CONV_IMPLS,
                f"conv_layers entries must be (layer path, one of {impls}); got {item!r}",
            )
        names = ", ".join(PRECISIONS)
        check(
            self.precision in PRECISIONS,
            f"precision must be one of {names}; got {self.precision!r}",
        )
        layers = tuple(tuple(item) for item in self.precision_layers)
        object.__setattr__(self, "precision_layers", layers)
        for item in layers:
            check(
                len(item) == 2 and isinstance(item[0], str) and item[1] in PRECISIONS,
                f"precision_layers entries must be (layer path, one of {names}); "
                f"got {item!r}",
            )

    def layer_precision(self, name: str) -> Precision:
        """The precision of the conv or dense layer at module path `name`."""
        return dict(self.precision_layers).get(name, self.precision)


def _backend(choice: KernelChoice, backend: str) -> str:
    """The backend whose defaults apply: "fast" plans as on CPU."""
    return "cpu" if choice.kernels == "fast" else backend


def _forward_only(choice: KernelChoice) -> bool:
    """Whether the forward-only defaults apply: "auto" kernels (an explicit "fast"
    keeps the hand-written kernels in every mode)."""
    return choice.forward_only and choice.kernels == "auto"


def choose_impl(
    backend: str,
    op: Literal["conv", "pool"],
    *,
    kind: pool_lib.PoolKind = "max",
    groups: int = 1,
    kernel: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    in_channels: int = 0,
    window: int | Sequence[int] = 2,
    pool_stride: int | Sequence[int] | None = None,
    padded: bool = False,
    forward_only: bool = False,
) -> str:
    """The default implementation of one layer on one backend.

    On CPU: "winograd" for 3x3 stride-1 convolutions with at least
    WINOGRAD_MIN_CHANNELS input channels, "im2col" for the other ungrouped ones, and
    "fast" max pooling (the other pool kinds run flax's pools). For a forward pass
    only: "xla" for a conv with fewer than WINOGRAD_MIN_CHANNELS input channels and
    for a 3x3 stride-1 conv with fewer than EVAL_WINOGRAD_MIN_CHANNELS, and "xla" for
    a max pool whose windows tile its input. On GPU/TPU, XLA's convolution (cuDNN) and
    reduce_window.

    Args:
      backend: jax.default_backend() or a device platform: "cpu", "gpu", "cuda",
        "rocm", "tpu", ...
      op: "conv" or "pool".
      kind: the pool kind (pool only).
      groups, kernel, stride, dilation, in_channels: the conv's (conv only); grouped
        convs stay on XLA.
      window, pool_stride, padded: the pool's window, stride (default the window) and
        whether it pads its input (pool only).
      forward_only: no backward pass will run through the layer (eval mode).

    Returns:
      "xla" | "im2col" | "winograd" for convs, "xla" | "fast" for pools.
    """
    cpu = backend == "cpu"
    if op == "conv":
        if not cpu or groups != 1:
            return "xla"
        few = in_channels < conv_lib.WINOGRAD_MIN_CHANNELS
        winograd = conv_lib.winograd_applies(kernel, stride, dilation) and not few
        eval_winograd = winograd and in_channels >= EVAL_WINOGRAD_MIN_CHANNELS
        if forward_only and (few or (winograd and not eval_winograd)):
            return "xla"  # strided convs from WINOGRAD_MIN_CHANNELS up stay im2col
        return "winograd" if winograd else "im2col"
    if op == "pool":
        if not cpu or kind != "max":
            return "xla"
        tiles = pair(window) == pair(window if pool_stride is None else pool_stride)
        return "xla" if forward_only and tiles and not padded else "fast"
    raise ValueError(f"choose_impl op must be 'conv' or 'pool', got {op!r}")


# --------------------------------------------------------------------------- crop
def dead_border(size: int, window: int, stride: int, padding: tuple[int, int]) -> int:
    """Trailing rows (or columns) of a pool's input that a floor-mode pool never reads.

    Args:
      size: length of the pool input along one axis (e.g. conv output height).
      window, stride: the pool's window and stride along that axis.
      padding: the pool's (low, high) padding along that axis.

    Returns:
      how many of the last `size` positions no window covers (>= 0).
    """
    n_out = out_size(size, window, stride, 1, padding)
    last_read = (n_out - 1) * stride + window - 1 - padding[0]  # unpadded coordinate
    return max(0, size - 1 - last_read)


@dataclasses.dataclass(frozen=True)
class BorderCrop:
    """How to skip the conv output a following pool never reads (identical results).

    Apply as: ``x = x[:, :in_keep[0], :in_keep[1]]``, convolve with `conv_padding`,
    then pool with `pool_padding`.
    """

    in_keep: tuple[int, int]  # input rows/cols to keep
    conv_padding: Pads  # conv padding with the high side reduced
    pool_padding: Pads  # pool padding with the high side dropped where it was cropped
    dead: tuple[int, int]  # conv output rows/cols no longer computed

    @property
    def is_noop(self) -> bool:
        return self.dead == (0, 0)


def border_crop(
    in_hw: Sequence[int],
    *,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    padding: Pads,
    pool_window: Sequence[int],
    pool_stride: Sequence[int],
    pool_padding: Pads,
) -> BorderCrop:
    """Static plan to crop a conv's input so it computes only what the next pool reads.

    A floor-mode pool drops trailing rows/cols (e.g. 2x2 pooling of an odd-sized map);
    the conv rows feeding only those are dead. Cropping the conv input (or its high-side
    padding) so the conv produces exactly the rows the pool reads changes no output and
    no gradient, and saves their FLOPs.

    Args:
      in_hw: (H, W) of the conv input.
      kernel, stride, dilation, padding: the conv's (explicit pads).
      pool_window, pool_stride, pool_padding: the following pool's.

    Returns:
      a BorderCrop; ``is_noop`` when there is nothing to skip.
    """
    keep, conv_pads, pool_pads, dead = [], [], [], []
    for ax in range(2):
        size, k, s, d = in_hw[ax], kernel[ax], stride[ax], dilation[ax]
        lo, hi = padding[ax]
        conv_out = out_size(size, k, s, d, (lo, hi))
        n_dead = dead_border(
            conv_out, pool_window[ax], pool_stride[ax], pool_padding[ax]
        )
        extent = (conv_out - n_dead - 1) * s + d * (k - 1) + 1  # padded rows read
        if n_dead == 0 or extent - lo < 1:
            keep.append(size)
            conv_pads.append((lo, hi))
            pool_pads.append(tuple(pool_padding[ax]))
            dead.append(0)
            continue
        keep.append(min(size, extent - lo))
        conv_pads.append((lo, max(0, extent - lo - size)))
        # The cropped map ends where the last window ends: no high-side pool padding.
        pool_pads.append((pool_padding[ax][0], 0))
        dead.append(n_dead)
    return BorderCrop(tuple(keep), tuple(conv_pads), tuple(pool_pads), tuple(dead))


# --------------------------------------------------------------------------- plans
@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How one layer runs at one input shape.

    Attributes:
      name: module path, e.g. "conv_0", "residual_3/conv_1", "residual_3/proj".
      spec: the layer spec (a residual projection: its 1x1 conv at this input shape).
      input_shape: the layer's input without the batch axis.
      padding: conv/pool explicit padding at this input shape, after any crop.
      conv: "xla" | "im2col" | "winograd" (convs only).
      pool: "xla" | "fast" (pools only).
      crop: a conv followed by a pool: its input rows/cols to keep (None: all).
      fuse_relu_pool: a conv: leave the ReLU to the next pool; a pool: apply it
        (`relu_max_pool`).
      dtype: a conv or dense layer: the dtype of its matmul operands (accumulation
        is float32).
      product_dtype: a conv or dense layer: the dtype of its convolution / matmul
        result before bias and activation (`product_dtype`): float32 on CPU, the
        operand dtype on GPU/TPU.
      out_dtype: a conv or dense layer: the dtype of its output (the logits:
        float32).
      layers: a residual block's body.
      proj: a residual block's 1x1 skip projection (None: identity skip).
      branches: a branch block's branches, each a tuple of plans (empty: identity).
    """

    name: str
    spec: LayerSpec
    input_shape: Shape
    padding: Pads | None = None
    conv: conv_lib.ConvImpl | None = None
    pool: pool_lib.PoolImpl | None = None
    crop: BorderCrop | None = None
    fuse_relu_pool: bool = False
    dtype: Precision | None = None
    product_dtype: Precision | None = None
    out_dtype: Precision | None = None
    layers: tuple[LayerPlan, ...] = ()
    proj: LayerPlan | None = None
    branches: tuple[tuple[LayerPlan, ...], ...] = ()

    def walk(self) -> Iterator[LayerPlan]:
        """This plan, then those of a residual body and projection or of the branches,
        depth first."""
        yield self
        for plan in self.layers:
            yield from plan.walk()
        if self.proj is not None:
            yield self.proj
        for branch in self.branches:
            for plan in branch:
                yield from plan.walk()


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """The plans of a model's layers at one input shape, and whether steps roll."""

    input_shape: Shape
    backend: str
    choice: KernelChoice
    layers: tuple[LayerPlan, ...]
    rolls_steps: bool

    def walk(self) -> Iterator[LayerPlan]:
        """Every layer plan, residual bodies, projections and branches included."""
        for plan in self.layers:
            yield from plan.walk()

    def layer(self, name: str) -> LayerPlan:
        """The plan of the layer at module path `name` ("conv_2", "residual_3/proj")."""
        for plan in self.walk():
            if plan.name == name:
                return plan
        raise KeyError(name)


def product_dtype(precision: Precision, backend: str) -> Precision:
    """The dtype of a conv or dense layer's product of `precision` operands.

    The products accumulate in float32 either way; this is the dtype they hand out.
    JAX's reverse mode transposes a product with a cotangent in the dtype of its
    result, so a float32 result makes the backward products take float32 operands
    (the bfloat16 ones widened). On GPU/TPU the result is bfloat16 for bfloat16
    operands (cuDNN, cuBLAS and the MXU accumulate in float32 and round once), so
    the backward convolutions and matmuls take bfloat16 operands too, as under
    Keras's mixed_bfloat16 policy, PyTorch's autocast and flax's dtype=bfloat16. On
    CPU it is float32: XLA:CPU's bfloat16-output products are slower than its
    float32-output ones, and its bfloat16 backward products do not beat float32
    ones (benchmarks/results/precision_backward.md).
    """
    return "float32" if backend == "cpu" else precision


def _conv_plan(spec: ConvSpec, name, shape, choice, backend) -> LayerPlan:
    padding = shapes.resolve_padding(
        spec.padding, shape[:2], spec.kernel, spec.stride, spec.dilation
    )
    forced = dict(choice.conv_layers).get(name, choice.conv)
    if spec.groups != 1:
        impl = "xla"  # the hand-written kernels are ungrouped
    elif forced is not None:
        applies = conv_lib.winograd_applies(spec.kernel, spec.stride, spec.dilation)
        impl = "im2col" if forced == "winograd" and not applies else forced
    elif choice.kernels == "xla":
        impl = "xla"
    else:
        impl = choose_impl(
            _backend(choice, backend),
            "conv",
            kernel=spec.kernel,
            stride=spec.stride,
            dilation=spec.dilation,
            in_channels=shape[2],
            forward_only=_forward_only(choice),
        )
    dtype = choice.layer_precision(name)
    return LayerPlan(
        name,
        spec,
        tuple(shape),
        padding=padding,
        conv=impl,
        dtype=dtype,
        product_dtype=product_dtype(dtype, _backend(choice, backend)),
        out_dtype=dtype,
    )


def _pool_plan(spec: PoolSpec, name, shape, choice, backend) -> LayerPlan:
    padding = shapes.resolve_padding(spec.padding, shape[:2], spec.window, spec.stride)
    if choice.pool is not None:
        impl = choice.pool
    elif choice.kernels == "xla":
        impl = "xla"
    else:
        impl = choose_impl(
            _backend(choice, backend),
            "pool",
            kind=spec.pool,
            window=spec.window,
            pool_stride=spec.stride,
            padded=any(any(side) for side in padding),
            forward_only=_forward_only(choice),
        )
    return LayerPlan(name, spec, tuple(shape), padding=padding, pool=impl)


def _pair(conv: LayerPlan, pool: LayerPlan, choice, backend):
    """Crop and fusion of a conv directly followed by a pool: (conv plan, pool plan)."""
    crop = choice.crop
    if crop is None:  # on with the hand-written kernels
        crop = choice.kernels != "xla" and _backend(choice, backend) == "cpu"
        # a forward pass with XLA's conv and pool: the crop's slice only keeps XLA
        # from fusing the two
        both_xla = conv.conv == "xla" and pool.pool == "xla"
        crop = crop and not (_forward_only(choice) and both_xla)
    if crop:
        plan = border_crop(
            conv.input_shape[:2],
            kernel=conv.spec.kernel,
            stride=conv.spec.stride,
            dilation=conv.spec.dilation,
            padding=conv.padding,
            pool_window=pool.spec.window,
            pool_stride=pool.spec.stride,
            pool_padding=pool.padding,
        )
        if not plan.is_noop:
            conv = dataclasses.replace(conv, crop=plan, padding=plan.conv_padding)
            pool = dataclasses.replace(pool, padding=plan.pool_padding)
    relu_max = conv.spec.activation == "relu" and pool.spec.pool == "max"
    if choice.fuse_relu_pool and relu_max:
        conv = dataclasses.replace(conv, fuse_relu_pool=True)
        pool = dataclasses.replace(pool, fuse_relu_pool=True)
    return conv, pool


def _plan_sequence(specs, prefix, rows, choice, backend) -> tuple[LayerPlan, ...]:
    plans = [
        _plan_layer(spec, f"{prefix}{i}", rows, choice, backend)
        for i, spec in enumerate(specs)
    ]
    for i in range(len(plans) - 1):
        if isinstance(specs[i], ConvSpec) and isinstance(specs[i + 1], PoolSpec):
            plans[i], plans[i + 1] = _pair(plans[i], plans[i + 1], choice, backend)
    return tuple(plans)


def _plan_layer(spec, index, rows, choice, backend) -> LayerPlan:
    info = rows[index]
    name, shape = info.name, info.input_shape
    if isinstance(spec, ConvSpec):
        return _conv_plan(spec, name, shape, choice, backend)
    if isinstance(spec, PoolSpec):
        return _pool_plan(spec, name, shape, choice, backend)
    if isinstance(spec, ResidualSpec):
        body = _plan_sequence(spec.layers, f"{index}.", rows, choice, backend)
        proj = None
        if info.projection is not None:
            proj_name = f"{name}/proj" if name else "proj"
            proj = _conv_plan(info.projection, proj_name, shape, choice, backend)
        return LayerPlan(name, spec, tuple(shape), layers=body, proj=proj)
    if isinstance(spec, BranchesSpec):
        branches = tuple(
            _plan_sequence(branch, f"{index}.b{b}.", rows, choice, backend)
            for b, branch in enumerate(spec.branches)
        )
        return LayerPlan(name, spec, tuple(shape), branches=branches)
    if isinstance(spec, DenseSpec):
        dtype = choice.layer_precision(name)
        return LayerPlan(
            name,
            spec,
            tuple(shape),
            dtype=dtype,
            product_dtype=product_dtype(dtype, _backend(choice, backend)),
            out_dtype=dtype,
        )
    return LayerPlan(name, spec, tuple(shape))


def _rolls_steps(plans: Sequence[LayerPlan], backend: str) -> bool:
    convs = [p for plan in plans for p in plan.walk() if p.conv is not None]
    return not (backend == "cpu" and any(p.conv == "xla" for p in convs))


# --------------------------------------------------------------------------- entry points
@functools.lru_cache(maxsize=1024)
def layer_plan(
    spec: LayerSpec,
    input_shape: Shape,
    choice: KernelChoice = KernelChoice(),
    backend: str = "cpu",
) -> LayerPlan:
    """The plan of one layer on its own (no neighbour to crop or fuse with).

    Args:
      spec: the layer's spec (a residual block's: its body and projection too).
      input_shape: its input without the batch axis.
      choice, backend: as in `model_plan`.

    Raises:
      SpecError: the layer cannot take `input_shape`.
    """
    rows = {r.index: r for r in shapes.infer_layers((spec,), tuple(input_shape))}
    return _plan_layer(spec, "0", rows, choice, backend)


@functools.lru_cache(maxsize=256)
def model_plan(
    spec: ModelSpec,
    input_shape: Shape,
    choice: KernelChoice = KernelChoice(),
    backend: str = "cpu",
) -> ModelPlan:
    """The kernel plan of a model built from `spec`, for inputs of `input_shape`.

    Args:
      spec: the spec the model was built from.
      input_shape: (H, W, C) of the actual input; any size the spec can take.
      choice: the model's KernelChoice.
      backend: "cpu", "gpu", "tpu", ... (jax.default_backend() for the real thing).

    Raises:
      SpecError: the model cannot take `input_shape`: wrong channels, too small for a
        layer, or a size at which a layer's parameters would need another shape.
    """
    shape = tuple(input_shape)
    built = shapes.infer(spec)
    if len(shape) != 3 or shape[2] != spec.input_shape[2]:
        raise SpecError(_input_message(spec, shape))
    try:
        actual = shapes.infer(dataclasses.replace(spec, input_shape=shape))
    except SpecError as e:
        raise SpecError(
            f"model input {shapes.format_shape(shape)} does not fit this model (built "
            f"for input {shapes.format_shape(spec.input_shape)}): {e}"
        ) from None
    _check_parameter_shapes(built, actual)
    rows = {r.index: r for r in actual.layers}
    layers = _plan_sequence(spec.layers, "", rows, choice, backend)
    if layers[-1].out_dtype is not None:  # logits leave in float32, whatever operands
        layers = (*layers[:-1], dataclasses.replace(layers[-1], out_dtype="float32"))
    return ModelPlan(shape, backend, choice, layers, _rolls_steps(layers, backend))


def input_plan(
    spec: ModelSpec,
    x_shape: Sequence[int],
    choice: KernelChoice = KernelChoice(),
    backend: str = "cpu",
) -> ModelPlan:
    """`model_plan` for a batch of shape `x_shape` ([batch, H, W, C]), checked first.

    A forward-only pass ("auto" kernels) of one image on CPU plans XLA's kernels
    everywhere; overrides (`conv`, `pool`, `conv_layers`, `crop`) still apply.

    Raises:
      SpecError: `x_shape` is not a batch of images the model can take.
    """
    if len(x_shape) != 4 or x_shape[3] != spec.input_shape[2]:
        raise SpecError(_input_message(spec, tuple(x_shape)))
    single = isinstance(x_shape[0], int) and x_shape[0] == 1  # not a symbolic batch
    if single and _forward_only(choice) and _backend(choice, backend) == "cpu":
        choice = dataclasses.replace(choice, kernels="xla")
    return model_plan(spec, tuple(int(d) for d in x_shape[1:]), choice, backend)


def _input_message(spec: ModelSpec, shape: Shape) -> str:
    c = spec.input_shape[2]
    message = f"model input must be [batch, H, W, {c}] float images; got shape {shape}"
    if len(shape) == 3 and shape[2] == c:
        return message + " (unbatched: add a batch axis, x[None])"
    if len(shape) == 3 and c == 1 and tuple(shape[1:]) == spec.input_shape[:2]:
        return message + " (no channel axis: add one, x[..., None])"
    if len(shape) in (3, 4) and shape[-1] != c:
        return (
            f"{message}: {shape[-1]} channels, but the model was built for {c} "
            f"(input {shapes.format_shape(spec.input_shape)})"
        )
    return message


def _check_parameter_shapes(built: shapes.Summary, actual: shapes.Summary) -> None:
    """Raises a SpecError naming the first layer whose parameters would change shape."""
    at = f"at input {shapes.format_shape(actual.spec.input_shape)}"
    was = f"(input {shapes.format_shape(built.spec.input_shape)})"
    rows = {r.index: r for r in actual.layers}
    for old, new in zip(built.layers, actual.layers, strict=True):
        same_skip = (old.projection is None) == (new.projection is None)
        if old.params == new.params and same_skip:
            continue
        label = f"layer {new.index} ({new.spec.describe()})"
        if not same_skip:
            needs = "needs a 1x1 projection" if new.projection else "is an identity"
            built_with = "without one" if new.projection else "with a projection"
            raise SpecError(
                f"{label}: the block maps {shapes.format_shape(new.input_shape)} to "
                f"{shapes.format_shape(new.output_shape)} {at}, so its skip path "
                f"{needs}, but it was built {built_with} {was}"
            )
        head, _, pos = new.index.rpartition(".")
        before = rows.get(f"{head}.{int(pos) - 1}" if head else str(int(pos) - 1))
        source = (
            "flatten gives"
            if before is not None and isinstance(before.spec, FlattenSpec)
            else "its input has"
        )
        size = shapes.format_shape(new.input_shape)
        features = " features" if len(new.input_shape) == 1 else ""
        raise SpecError(
            f"{label}: {source} {size}{features} {at} but the layer was built for "
            f"{shapes.format_shape(old.input_shape)}{features} {was}; build the model "
            "for this input size"
        )
