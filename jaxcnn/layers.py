"""Flax NNX building blocks built from layer specs: conv, pooling, residual and branch
blocks, the model.

Every block is built from a `shapes.Summary` row, so the static shapes in `shapes.py` and
the real ones agree by construction (padding comes from `shapes.resolve_padding`).
Module attributes are named `<type>_<index>`, so parameter paths read `conv_0/kernel`,
`dense_7/bias`, `residual_3/conv_1/kernel`, `residual_3/proj/kernel`,
`residual_3/proj_norm/scale`, `branches_4/b1/conv_0/kernel`.

Images are NHWC float32: [batch, H, W, C]. Conv and dense layers compute in the
precision their plan says (jaxcnn.precision); the logits are float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn import filters, shapes
from jaxcnn import kernels as ops
from jaxcnn import precision as precision_lib
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


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # exact erf form, as Keras and PyTorch


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,  # min(max(x, 0), 6), MobileNet's
    "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01
    "elu": jax.nn.elu,
    "gelu": _gelu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}


def activate(x: jax.Array, name: str) -> jax.Array:
    """Applies the activation called `name` (one of spec.ACTIVATIONS)."""
    return ACTIVATIONS[name](x)


def _explicitly_sharded(x: jax.Array) -> bool:
    """Whether `x` is sharded over a mesh axis of type Explicit (jax.make_mesh's
    axis_types), whose sharding every reshape must then state."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None) or ()
    mesh = getattr(sharding, "mesh", None)
    explicit = {
        name
        for name, kind in zip(
            getattr(mesh, "axis_names", ()),
            getattr(mesh, "axis_types", ()),
            strict=True,
        )
        if kind == jax.sharding.AxisType.Explicit
    }
    used = {
        n
        for entry in spec
        if entry
        for n in (entry if isinstance(entry, tuple) else (entry,))
    }
    return bool(explicit & used)


# --------------------------------------------------------------------------- conv
def _own_plan(module: nnx.Module, x: jax.Array) -> ops.LayerPlan:
    """The plan of a layer called on its own: default kernels, no neighbours."""
    return ops.layer_plan(
        module.spec, tuple(x.shape[1:]), ops.KernelChoice(), jax.default_backend()
    )


def conv2d(layer: nnx.Conv, x: jax.Array, plan: ops.LayerPlan) -> jax.Array:
    """The single convolution call site: [batch, H, W, Cin] -> [batch, Ho, Wo, filters].

    Runs kernels.conv2d as `plan` says (implementation, padding at this input shape,
    operand and product dtypes) with the layer's own kernel and bias. The output (the
    bias added) is float32.
    """
    spec = plan.spec
    y = ops.conv2d(
        precision_lib.cast(x, plan.dtype),
        precision_lib.cast(layer.kernel[...], plan.dtype),
        stride=spec.stride,
        padding=plan.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        impl=plan.conv,
        out_dtype=precision_lib.dtype(plan.product_dtype)
        if plan.product_dtype
        else None,
    )
    y = precision_lib.widen(y)
    return y if layer.bias is None else y + layer.bias[...].reshape(1, 1, 1, -1)


def conv_kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """nnx.Conv's default kernel init, drawn as the [kh * kw * Cin, Cout] matrix.

    The same values bit for bit (lecun_normal's fan-in is the same, and JAX's random
    bits of a shape are those of its flattening; tests/test_layers.py checks it), but
    XLA:CPU compiles the draw of a matrix faster than that of a 4-D kernel.
    """
    matrix = (math.prod(shape[:-1]), shape[-1])
    return nnx.nn.linear.default_kernel_init(key, matrix, dtype).reshape(shape)


class Conv(nnx.Conv):
    """nnx.Conv with explicit padding resolved by shapes.py and a fused activation."""

    def __init__(
        self,
        spec: ConvSpec,
        input_shape: tuple[int, int, int],
        *,
        rngs: nnx.Rngs,
    ):
        padding = shapes.resolve_padding(
            spec.padding, input_shape[:2], spec.kernel, spec.stride, spec.dilation
        )
        super().__init__(
            input_shape[2],
            spec.filters,
            spec.kernel,
            spec.stride,
            padding=padding,
            kernel_dilation=spec.dilation,
            feature_group_count=spec.groups,
            use_bias=spec.use_bias,
            kernel_init=conv_kernel_init,
            rngs=rngs,
        )
        if spec.init != "default":
            # A classic kernel in every (input channel, filter) slice, divided by the
            # input channels per group (filters.conv_kernel); the bias stays zero. The
            # random init above still ran, so later layers draw the same keys either way.
            kernel = filters.conv_kernel(
                spec.init, input_shape[2] // spec.groups, spec.filters
            )
            self.kernel.set_value(jnp.asarray(kernel))
        self.spec = spec
        self.activation = spec.activation

    def __call__(self, x: jax.Array, plan: ops.LayerPlan | None = None) -> jax.Array:
        """[batch, H, W, Cin] -> [batch, Ho, Wo, filters], as `plan` says.

        With a crop, only the input rows/cols the next pool reads are convolved; with
        ReLU + pool fusion the ReLU is left to the pool. The output is in the plan's
        `out_dtype`.
        """
        plan = _own_plan(self, x) if plan is None else plan
        if plan.crop is not None:
            x = x[:, : plan.crop.in_keep[0], : plan.crop.in_keep[1], :]
        y = conv2d(self, x, plan)
        y = y if plan.fuse_relu_pool else activate(y, self.activation)
        return precision_lib.cast(y, plan.out_dtype)


class Dense(nnx.Linear):
    """nnx.Linear with a fused activation: [batch, in] -> [batch, units]."""

    def __init__(self, spec: DenseSpec, in_features: int, *, rngs: nnx.Rngs):
        super().__init__(in_features, spec.units, use_bias=spec.use_bias, rngs=rngs)
        self.activation = spec.activation

    def __call__(self, x: jax.Array, plan: ops.LayerPlan | None = None) -> jax.Array:
        """[batch, in] -> [batch, units]; operand, product and output dtypes as `plan`
        says (None: as they come), accumulation, bias and activation in float32."""
        dtype, product, out_dtype = (
            (None, None, None)
            if plan is None
            else (plan.dtype, plan.product_dtype, plan.out_dtype)
        )
        x = precision_lib.cast(x, dtype)
        kernel = precision_lib.cast(self.kernel[...], dtype)
        acc = precision_lib.accumulation(x.dtype)
        product = acc if product is None else precision_lib.dtype(product)
        y = precision_lib.widen(jnp.dot(x, kernel, preferred_element_type=product))
        if self.bias is not None:
            y = y + self.bias[...].reshape((1,) * (y.ndim - 1) + (-1,))
        return precision_lib.cast(activate(y, self.activation), out_dtype)


# --------------------------------------------------------------------------- pooling
class Pool(nnx.Module):
    """A pooling layer from a PoolSpec (kernels.pool2d has the kinds)."""

    def __init__(self, spec: PoolSpec):
        self.spec = spec

    def __call__(self, x: jax.Array, plan: ops.LayerPlan | None = None) -> jax.Array:
        """[batch, H, W, C] -> [batch, Ho, Wo, C], as `plan` says (padding, impl, the
        ReLU of a fused conv)."""
        plan = _own_plan(self, x) if plan is None else plan
        spec = self.spec
        if plan.fuse_relu_pool:
            return ops.relu_max_pool(
                x,
                window=spec.window,
                stride=spec.stride,
                padding=plan.padding,
                impl=plan.pool,
            )
        if spec.count_padding:  # the window sum over the whole window's size
            total = ops.pool2d(
                x,
                kind="sum",
                window=spec.window,
                stride=spec.stride,
                padding=plan.padding,
                impl=plan.pool,
            )
            return total / (spec.window[0] * spec.window[1])
        return ops.pool2d(
            x,
            kind=spec.pool,
            window=spec.window,
            stride=spec.stride,
            padding=plan.padding,
            impl=plan.pool,
            p=spec.p,
        )


class GlobalPool(nnx.Module):
    """[batch, H, W, C] -> [batch, C] by max or mean over H and W."""

    def __init__(self, spec: GlobalPoolSpec):
        self.kind = spec.pool

    def __call__(self, x: jax.Array) -> jax.Array:
        reduce = jnp.max if self.kind == "max" else jnp.mean
        return reduce(x, axis=(1, 2))


class Flatten(nnx.Module):
    """[batch, ...] -> [batch, features] (row-major, H then W then C)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # also for a batch of 0


class Activation(nnx.Module):
    def __init__(self, spec: ActivationSpec):
        self.activation = spec.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return activate(x, self.activation)


def make_norm(spec: NormSpec, channels: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """nnx.BatchNorm / LayerNorm / GroupNorm over the last (channel) axis.

    Batch norm normalises over batch, H and W (running stats with `spec.momentum`);
    layer norm over the channels of each position; group norm over H, W and the
    channels of each of `spec.groups` groups. All add `spec.epsilon` to the variance,
    computed as the mean of squared deviations (two passes, as Keras and PyTorch): flax's
    one-pass E[x^2] - E[x]^2 cancels in float32 when the mean is large against the spread.
    A per-channel scale is learned only where `spec.scale` (Keras's scale=False: none).
    """
    common = dict(
        epsilon=spec.epsilon,
        use_scale=spec.scale,
        use_fast_variance=False,
        rngs=rngs,
    )
    if spec.norm == "batch":
        return nnx.BatchNorm(channels, momentum=spec.momentum, **common)
    if spec.norm == "layer":
        return nnx.LayerNorm(channels, **common)
    return nnx.GroupNorm(channels, num_groups=spec.groups, **common)


# --------------------------------------------------------------------------- blocks
def make_layer(
    spec: LayerSpec, index: str, summary: shapes.Summary, *, rngs: nnx.Rngs
) -> nnx.Module:
    """The NNX module for the layer at `index` ("3", "3.1") of `summary`."""
    info = summary.row(index)
    shape = info.input_shape
    if isinstance(spec, ConvSpec):
        return Conv(spec, shape, rngs=rngs)
    if isinstance(spec, PoolSpec):
        return Pool(spec)
    if isinstance(spec, GlobalPoolSpec):
        return GlobalPool(spec)
    if isinstance(spec, FlattenSpec):
        return Flatten()
    if isinstance(spec, DenseSpec):
        return Dense(spec, shape[0], rngs=rngs)
    if isinstance(spec, NormSpec):
        return make_norm(spec, shape[-1], rngs=rngs)
    if isinstance(spec, DropoutSpec):
        return nnx.Dropout(spec.rate, rngs=rngs)
    if isinstance(spec, ActivationSpec):
        return Activation(spec)
    if isinstance(spec, ResidualSpec):
        return Residual(spec, index, summary, rngs=rngs)
    if isinstance(spec, BranchesSpec):
        return Branches(spec, index, summary, rngs=rngs)
    raise TypeError(f"unsupported layer spec {type(spec).__name__}")


class Sequential(nnx.Module):
    """Layers applied in order; each is an attribute named `<type>_<position>`.

    Conv, pool and residual layers run as their kernels.LayerPlan says; a conv directly
    followed by a pool may crop its input to what the pool reads, or hand its ReLU to
    a max pool (kernels.plan). Either way logits and gradients are unchanged.
    """

    def _add_layers(self, specs, index_prefix, summary, *, rngs) -> None:
        names = []
        for i, spec in enumerate(specs):
            name = f"{spec.type}_{i}"
            layer = make_layer(spec, f"{index_prefix}{i}", summary, rngs=rngs)
            setattr(self, name, layer)
            names.append(name)
        self.layer_names = tuple(names)

    def named_layers(self) -> list[tuple[str, nnx.Module]]:
        """(attribute name, module) in call order."""
        return [(name, getattr(self, name)) for name in self.layer_names]

    def _run(
        self,
        x: jax.Array,
        plans: Sequence[ops.LayerPlan],
        rngs: nnx.Rngs | None = None,
        keep: Collection[str] = (),
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Runs the first len(plans) layers: (output, {name: output of each in keep}).

        `rngs`, when given, draws the dropout masks instead of the layers' own streams.
        """
        kept = {}
        for name, plan in zip(self.layer_names[: len(plans)], plans, strict=True):
            layer = getattr(self, name)
            if isinstance(layer, Residual | Branches):
                x = layer(x, plan, rngs=rngs)
            elif isinstance(layer, Conv | Pool | Dense):
                x = layer(x, plan)
            elif isinstance(layer, nnx.Dropout):
                x = layer(x, rngs=rngs)
            else:  # hands on the dtype it got (flax norms return float32)
                x = layer(x).astype(x.dtype)
            if name in keep:
                kept[name] = x
        return x, kept


class Residual(Sequential):
    """y = activation(layers(x) + skip(x)); skip is identity or the 1x1 conv `proj`
    (followed by the batch norm `proj_norm` when the spec has projection_norm)."""

    def __init__(
        self,
        spec: ResidualSpec,
        index: str,
        summary: shapes.Summary,
        *,
        rngs: nnx.Rngs,
    ):
        self.spec = spec
        self._add_layers(spec.layers, f"{index}.", summary, rngs=rngs)
        info = summary.row(index)
        self.proj = (
            Conv(info.projection, info.input_shape, rngs=rngs)
            if info.projection is not None
            else None
        )
        self.proj_norm = (
            make_norm(NormSpec(), info.output_shape[-1], rngs=rngs)
            if spec.projection_norm
            else None
        )
        self.activation = spec.activation

    def __call__(
        self,
        x: jax.Array,
        plan: ops.LayerPlan | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        plan = _own_plan(self, x) if plan is None else plan
        skip = x if plan.proj is None else self.proj(x, plan.proj)
        if self.proj_norm is not None:
            skip = self.proj_norm(skip).astype(skip.dtype)
        body, _ = self._run(x, plan.layers, rngs)
        return activate(body + skip, self.activation)


class Branch(Sequential):
    """One branch of a branch block: its layers in order (none: the identity)."""

    def __init__(self, specs, index_prefix: str, summary, *, rngs: nnx.Rngs):
        self._add_layers(specs, index_prefix, summary, rngs=rngs)


class Branches(nnx.Module):
    """y = activation(join(b0(x), b1(x), ...)); branches are attributes `b0`, `b1`, ...

    `concat` stacks the branch outputs along channels in order; `add` sums them.
    """

    def __init__(
        self,
        spec: BranchesSpec,
        index: str,
        summary: shapes.Summary,
        *,
        rngs: nnx.Rngs,
    ):
        self.spec = spec
        self.branch_names = tuple(f"b{b}" for b in range(len(spec.branches)))
        for b, branch in enumerate(spec.branches):
            setattr(self, f"b{b}", Branch(branch, f"{index}.b{b}.", summary, rngs=rngs))
        self.join = spec.join
        self.activation = spec.activation

    def __call__(
        self,
        x: jax.Array,
        plan: ops.LayerPlan | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """[batch, H, W, C] -> [batch, Ho, Wo, sum of branch channels] (concat) or the
        common branch shape (add)."""
        plan = _own_plan(self, x) if plan is None else plan
        outs = [
            getattr(self, name)._run(x, plans, rngs)[0]
            for name, plans in zip(self.branch_names, plan.branches, strict=True)
        ]
        dtype = jnp.result_type(*outs)
        outs = [y.astype(dtype) for y in outs]
        y = (
            jnp.concatenate(outs, axis=-1)
            if self.join == "concat"
            else sum(outs[1:], outs[0])
        )
        return activate(y, self.activation)


class CNN(Sequential):
    """The network of a ModelSpec: [batch, H, W, C] float32 -> logits [batch, num_classes].

    Takes any input size the spec can take (`shapes.infer` with the input shape
    replaced): the kernel plan is derived at trace time from the actual shape.

    Owns `rngs`, its `params` and `dropout` streams (models.build_model makes them), so
    the dropout RNG state is part of `nnx.state(model)` and is checkpointed. Starts in
    training mode (dropout active, batch norm using batch statistics); call
    `model.eval()` for inference and `model.train()` to switch back. `kernel_choice`
    (kernels.KernelChoice) is the one kernel setting; `models.set_kernels` replaces it.
    In eval mode (`deterministic`, which `model.eval()` sets) the call plans with
    `forward_only`: no backward pass runs, so on CPU a 3x3 conv with few input
    channels runs XLA's convolution rather than Winograd (kernels.plan).

    With `upto` (a top-level layer name), only the layers up to and including that one
    are built (a backbone): same attribute names, so the same parameter paths as the
    whole network, and the call returns that layer's output.
    """

    def __init__(
        self,
        spec: ModelSpec,
        summary: shapes.Summary,
        *,
        rngs: nnx.Rngs,
        kernels: ops.KernelChoice | None = None,
        upto: str | None = None,
    ):
        self.spec = spec
        self.kernel_choice = ops.KernelChoice() if kernels is None else kernels
        self.deterministic = False  # eval mode; nnx's eval() / train() set it
        self.rngs = rngs
        self.upto = upto
        names = [f"{layer.type}_{i}" for i, layer in enumerate(spec.layers)]
        count = len(names) if upto is None else names.index(upto) + 1
        self._add_layers(spec.layers[:count], "", summary, rngs=rngs)

    def kernel_plan(
        self,
        input_shape: Sequence[int] | None = None,
        *,
        backend: str | None = None,
        forward_only: bool = False,
    ) -> ops.ModelPlan:
        """The kernel plan for inputs of `input_shape` (H, W, C; default: the spec's).

        Args:
          input_shape: (H, W, C) without the batch axis.
          backend: "cpu", "gpu", "tpu", ...; default jax.default_backend().
          forward_only: the plan of a call in eval mode (no backward pass); default
            the training plan.

        Raises:
          SpecError: the model cannot take inputs of that shape.
        """
        shape = self.spec.input_shape if input_shape is None else input_shape
        return ops.model_plan(
            self.spec,
            tuple(shape),
            dataclasses.replace(self.kernel_choice, forward_only=forward_only),
            backend or jax.default_backend(),
        )

    def _plans(self, x: jax.Array, ends: Collection[str]) -> list[ops.LayerPlan]:
        """The plans of the built layers for input `x`, whole at each layer in `ends`.

        A layer whose output is read (a backbone's last layer, a requested feature) must
        not crop or fuse its ReLU into the pool after it: those two layers get the
        plans they have without pairing.
        """
        choice = self.kernel_choice
        if self.deterministic:
            choice = dataclasses.replace(choice, forward_only=True)
        if _explicitly_sharded(x):
            # the hand-written kernels' tile reshapes cannot say how an explicitly
            # sharded batch splits; XLA's kernels carry the sharding through
            choice = ops.KernelChoice(
                "xla",
                precision=choice.precision,
                precision_layers=choice.precision_layers,
            )
        plan = ops.input_plan(self.spec, x.shape, choice, jax.default_backend())
        plans = list(plan.layers[: len(self.layer_names)])
        for i, layer in enumerate(plans):
            if layer.name in ends and (layer.crop is not None or layer.fuse_relu_pool):
                choice = dataclasses.replace(choice, crop=False, fuse_relu_pool=False)
                loose = ops.model_plan(
                    self.spec, plan.input_shape, choice, plan.backend
                ).layers
                plans[i] = loose[i]
                if i + 1 < len(plans):
                    plans[i + 1] = loose[i + 1]
        return plans

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        """[batch, H, W, C] -> float32 logits [batch, num_classes] (a backbone: its last
        output, bfloat16 activations widened to float32).

        Args:
          x: a batch of images.
          rngs: draws this call's dropout masks (as Flax's own modules take it); None
            uses the model's own `dropout` stream. Eval mode ignores it.

        Raises:
          SpecError: `x` is not a batch of images the model can take (static shapes,
            checked at trace time).
        """
        self._check_batch(x)
        plans = self._plans(x, self.layer_names[-1:])
        return precision_lib.widen(self._run(x, plans, rngs)[0])

    def _check_batch(self, x: jax.Array) -> None:
        """Refuses what the layers would compute silently wrong (static checks).

        Raises:
          SpecError: integer images (unscaled pixels), float64 images, or an empty
            batch while a batch norm is in training mode (its statistics would be NaN).
        """
        dtype = jax.dtypes.canonicalize_dtype(x.dtype)  # float64 only under x64
        if not jnp.issubdtype(dtype, jnp.floating):
            raise SpecError(
                f"model input must be float images in [0, 1]; got {dtype} values of "
                f"shape {tuple(x.shape)}: scale them first, e.g. x / 255 for uint8 pixels"
            )
        if dtype.itemsize > 4:
            raise SpecError(
                f"model input is {dtype}, but jaxcnn computes in float32 (or bfloat16, "
                "train.precision) with float32 parameters: cast it, x.astype(jnp.float32)"
            )
        if x.shape[0] == 0 and any(
            isinstance(m, nnx.BatchNorm) and not m.use_running_average
            for _, m in nnx.iter_modules(self)
        ):
            raise SpecError(
                "a batch of 0 images in training mode: batch norm has no statistics "
                "to compute (its running averages would become NaN); call "
                "model.eval() first, or skip empty batches"
            )

    def features(
        self, x: jax.Array, names: Sequence[str], rngs: nnx.Rngs | None = None
    ) -> dict[str, jax.Array]:
        """The outputs of the top-level layers `names` for the batch `x`.

        Runs the layers up to the last one named, in the model's current mode and with
        its kernel choice, exactly as the call does (train mode draws dropout masks and
        moves batch-norm statistics).

        Returns:
          {name: [batch, ...] output of that layer}, float32 (bfloat16 activations
          widened).

        Raises:
          SpecError: a name that is no top-level layer of the model, or no names.
        """
        unknown = [n for n in names if n not in self.layer_names]
        if unknown or not names:
            what = f"no layer {unknown[0]!r}" if unknown else "no layers asked for"
            raise SpecError(
                f"features: {what}; the model's layers are {', '.join(self.layer_names)}"
            )
        self._check_batch(x)
        last = max(self.layer_names.index(n) for n in names)
        plans = self._plans(x, {*names, self.layer_names[-1]})[: last + 1]
        _, kept = self._run(x, plans, rngs, keep=names)
        return {name: precision_lib.widen(kept[name]) for name in names}
