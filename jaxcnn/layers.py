"""Flax NNX building blocks built from layer specs: conv, pooling, residual block, the model.

Every block is built from a `shapes.Summary` row, so the static shapes in `shapes.py` and
the real ones agree by construction (padding comes from `shapes.resolve_padding`).
Module attributes are named `<type>_<index>`, so parameter paths read `conv_0/kernel`,
`dense_7/bias`, `residual_3/conv_1/kernel`, `residual_3/proj/kernel`.

Images are NHWC float32: [batch, H, W, C].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn import filters, shapes
from jaxcnn import kernels as ops
from jaxcnn.spec import (
    ActivationSpec,
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


# --------------------------------------------------------------------------- conv
def _own_plan(module: nnx.Module, x: jax.Array) -> ops.LayerPlan:
    """The plan of a layer called on its own: default kernels, no neighbours."""
    return ops.layer_plan(
        module.spec, tuple(x.shape[1:]), ops.KernelChoice(), jax.default_backend()
    )


def conv2d(layer: nnx.Conv, x: jax.Array, plan: ops.LayerPlan) -> jax.Array:
    """The single convolution call site: [batch, H, W, Cin] -> [batch, Ho, Wo, filters].

    Runs kernels.conv2d as `plan` says (implementation, padding at this input shape)
    with the layer's own kernel and bias.
    """
    spec = plan.spec
    y = ops.conv2d(
        x,
        layer.kernel[...],
        stride=spec.stride,
        padding=plan.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        impl=plan.conv,
    )
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
        ReLU + pool fusion the ReLU is left to the pool.
        """
        plan = _own_plan(self, x) if plan is None else plan
        if plan.crop is not None:
            x = x[:, : plan.crop.in_keep[0], : plan.crop.in_keep[1], :]
        y = conv2d(self, x, plan)
        return y if plan.fuse_relu_pool else activate(y, self.activation)


class Dense(nnx.Linear):
    """nnx.Linear with a fused activation: [batch, in] -> [batch, units]."""

    def __init__(self, spec: DenseSpec, in_features: int, *, rngs: nnx.Rngs):
        super().__init__(in_features, spec.units, use_bias=spec.use_bias, rngs=rngs)
        self.activation = spec.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return activate(super().__call__(x), self.activation)


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
        return x.reshape(x.shape[0], -1)


class Activation(nnx.Module):
    def __init__(self, spec: ActivationSpec):
        self.activation = spec.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return activate(x, self.activation)


def make_norm(spec: NormSpec, channels: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """nnx.BatchNorm / LayerNorm / GroupNorm over the last (channel) axis.

    Batch norm normalises over batch, H and W (running stats with `spec.momentum`);
    layer norm over the channels of each position; group norm over H, W and the
    channels of each of `spec.groups` groups.
    """
    if spec.norm == "batch":
        return nnx.BatchNorm(channels, momentum=spec.momentum, rngs=rngs)
    if spec.norm == "layer":
        return nnx.LayerNorm(channels, rngs=rngs)
    return nnx.GroupNorm(channels, num_groups=spec.groups, rngs=rngs)


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

    def _run(self, x: jax.Array, plans: tuple[ops.LayerPlan, ...]) -> jax.Array:
        for (_, layer), plan in zip(self.named_layers(), plans, strict=True):
            planned = isinstance(layer, Conv | Pool | Residual)
            x = layer(x, plan) if planned else layer(x)
        return x


class Residual(Sequential):
    """y = activation(layers(x) + skip(x)); skip is identity or the 1x1 conv `proj`."""

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
        self.activation = spec.activation

    def __call__(self, x: jax.Array, plan: ops.LayerPlan | None = None) -> jax.Array:
        plan = _own_plan(self, x) if plan is None else plan
        skip = x if plan.proj is None else self.proj(x, plan.proj)
        return activate(self._run(x, plan.layers) + skip, self.activation)


class CNN(Sequential):
    """The network of a ModelSpec: [batch, H, W, C] float32 -> logits [batch, num_classes].

    Takes any input size the spec can take (`shapes.infer` with the input shape
    replaced): the kernel plan is derived at trace time from the actual shape.

    Owns `rngs`: stream `params` from the seed and `dropout` from a key derived from it,
    so the dropout RNG state is part of `nnx.state(model)` and is checkpointed. Starts in
    training mode (dropout active, batch norm using batch statistics); call
    `model.eval()` for inference and `model.train()` to switch back. `kernel_choice`
    (kernels.KernelChoice) is the one kernel setting; `models.set_kernels` replaces it.
    """

    def __init__(
        self,
        spec: ModelSpec,
        summary: shapes.Summary,
        *,
        seed: int = 0,
        kernels: ops.KernelChoice | None = None,
    ):
        self.spec = spec
        self.kernel_choice = ops.KernelChoice() if kernels is None else kernels
        self.rngs = nnx.Rngs(
            params=seed, dropout=jax.random.fold_in(jax.random.key(seed), 1)
        )
        self._add_layers(spec.layers, "", summary, rngs=self.rngs)

    def kernel_plan(
        self, input_shape: Sequence[int] | None = None, *, backend: str | None = None
    ) -> ops.ModelPlan:
        """The kernel plan for inputs of `input_shape` (H, W, C; default: the spec's).

        Args:
          input_shape: (H, W, C) without the batch axis.
          backend: "cpu", "gpu", "tpu", ...; default jax.default_backend().

        Raises:
          SpecError: the model cannot take inputs of that shape.
        """
        shape = self.spec.input_shape if input_shape is None else input_shape
        return ops.model_plan(
            self.spec,
            tuple(shape),
            self.kernel_choice,
            backend or jax.default_backend(),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """[batch, H, W, C] -> logits [batch, num_classes].

        Raises:
          SpecError: `x` is not a batch of images the model can take (static shapes,
            checked at trace time).
        """
        plan = ops.input_plan(
            self.spec, x.shape, self.kernel_choice, jax.default_backend()
        )
        return self._run(x, plan.layers)
