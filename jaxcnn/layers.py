"""Flax NNX building blocks built from layer specs: conv, pooling, residual block, the model.

Every block is built from a `shapes.Summary` row, so the static shapes in `shapes.py` and
the real ones agree by construction (padding comes from `shapes.resolve_padding`).
Module attributes are named `<type>_<index>`, so parameter paths read `conv_0/kernel`,
`dense_7/bias`, `residual_3/conv_1/kernel`, `residual_3/proj/kernel`.

Images are NHWC float32: [batch, H, W, C].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

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

Kernels = Literal["auto", "xla", "fast"]
KERNELS = ("auto", "xla", "fast")
POOL_EPS = 1e-6  # keeps log / reciprocal finite in geometric and harmonic pooling


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
def resolve_impl(kernels: Kernels, op: Literal["conv", "pool"], **conv) -> str:
    """The kernels.py implementation for `kernels` on the default backend.

    "xla" is flax/XLA everywhere; "fast" forces the hand-written kernels (the CPU
    choice: "winograd" or "im2col" convs, "fast" max-pool) on any backend; "auto" asks
    kernels.choose_impl for the default backend (fast on CPU, XLA on GPU/TPU). `conv`
    is the conv's geometry (groups, kernel, stride, dilation, in_channels), see
    kernels.choose_impl.
    """
    if kernels == "xla":
        return "xla"
    backend = "cpu" if kernels == "fast" else jax.default_backend()
    return ops.choose_impl(backend, op, **conv)


def conv2d(
    layer: nnx.Conv, x: jax.Array, kernels: Kernels = "auto", padding=None
) -> jax.Array:
    """The single convolution call site: [batch, H, W, Cin] -> [batch, Ho, Wo, filters].

    Runs `layer.impl` (set at build from `kernels`, see `resolve_impl`): "xla" is
    flax's nnx.Conv, "im2col" / "winograd" kernels.conv2d with the layer's own kernel and
    bias (same parameters either way). `padding` overrides the layer's (border crop).
    """
    impl = getattr(layer, "impl", None) or resolve_impl(
        kernels, "conv", groups=layer.feature_group_count
    )
    if impl == "xla" and padding is None:
        return nnx.Conv.__call__(layer, x)
    y = ops.conv2d(
        x,
        layer.kernel[...],
        stride=layer.strides,
        padding=layer.padding if padding is None else padding,
        dilation=layer.kernel_dilation,
        groups=layer.feature_group_count,
        impl=impl,
    )
    return y if layer.bias is None else y + layer.bias[...].reshape(1, 1, 1, -1)


def conv_kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """nnx.Conv's default kernel init, drawn as the [kh * kw * Cin, Cout] matrix.

    The same values bit for bit (lecun_normal's fan-in is the same, and JAX's random
    bits of a shape are those of its flattening), but XLA:CPU compiles the draw of a
    matrix 2x faster than that of a 4-D kernel (per new shape: building vgg_cifar took
    3.3 s, 1.7 s this way; tests/test_layers.py checks the equality).
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
        kernels: Kernels = "auto",
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
        self.activation = spec.activation
        self.kernels = kernels
        self.impl = resolve_impl(  # see set_kernels
            kernels,
            "conv",
            groups=spec.groups,
            kernel=spec.kernel,
            stride=spec.stride,
            dilation=spec.dilation,
            in_channels=input_shape[2],
        )
        self.input_hw = tuple(input_shape[:2])

    def __call__(self, x: jax.Array) -> jax.Array:
        """[batch, H, W, Cin] -> [batch, Ho, Wo, filters]."""
        return activate(conv2d(self, x, self.kernels), self.activation)


class Dense(nnx.Linear):
    """nnx.Linear with a fused activation: [batch, in] -> [batch, units]."""

    def __init__(self, spec: DenseSpec, in_features: int, *, rngs: nnx.Rngs):
        super().__init__(in_features, spec.units, use_bias=spec.use_bias, rngs=rngs)
        self.activation = spec.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return activate(super().__call__(x), self.activation)


# --------------------------------------------------------------------------- pooling
Pads = tuple[tuple[int, int], tuple[int, int]]


def max_pool(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: Pads,
    kernels: Kernels = "auto",
) -> jax.Array:
    """The single max-pool call site; padded cells are -inf, so they never win.

    `kernels` is "auto" | "xla" | "fast" (see `resolve_impl`) or a kernels.py impl.
    """
    impl = kernels if kernels in ("xla", "fast") else resolve_impl(kernels, "pool")
    if impl == "xla":
        return nnx.max_pool(x, window, strides, padding)
    return ops.pool2d(
        x, kind="max", window=window, stride=strides, padding=padding, impl=impl
    )


def _mean_pool(x, window, strides, padding):
    # Keras convention: padded cells are excluded from the count.
    return nnx.avg_pool(x, window, strides, padding, count_include_pad=False)


def _safe_pow(x: jax.Array, power: float) -> jax.Array:
    """x**power for x >= 0, with a zero (not NaN) gradient where x == 0."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1.0) ** power, 0.0)


def pool2d(
    x: jax.Array,
    kind: str,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: Pads,
    p: float = 2.0,
    kernels: Kernels = "auto",
) -> jax.Array:
    """Windowed pooling over H and W: [batch, H, W, C] -> [batch, Ho, Wo, C].

    Kinds, with n = number of real (unpadded) cells in the window:
      max: maximum; padding never wins.
      avg: sum / n (padding excluded from the count, as in Keras).
      sum: sum (zero padding adds nothing).
      lp: (sum |x|^p / n)^(1/p); p=1 is the mean absolute value, large p approaches max.
      geometric: exp(mean(log(max(x, 0) + eps))). Domain: x >= 0; negative inputs are
        clamped to 0 first, so put it after relu/sigmoid-like activations.
      harmonic: n / sum(1 / (max(x, 0) + eps)). Domain and clamping as geometric.
    eps = POOL_EPS = 1e-6 keeps the log and reciprocal finite at 0.
    """
    if kind == "max":
        return max_pool(x, window, strides, padding, kernels)
    if kind == "avg":
        return _mean_pool(x, window, strides, padding)
    if kind == "sum":
        return nnx.pool(x, 0.0, lax.add, window, strides, padding)
    if kind == "lp":
        return _safe_pow(
            _mean_pool(_safe_pow(jnp.abs(x), p), window, strides, padding), 1 / p
        )
    clamped = jnp.maximum(x, 0.0) + POOL_EPS
    if kind == "geometric":
        return jnp.exp(_mean_pool(jnp.log(clamped), window, strides, padding))
    if kind == "harmonic":
        return 1.0 / _mean_pool(1.0 / clamped, window, strides, padding)
    raise ValueError(f"unknown pool kind {kind!r}")


class Pool(nnx.Module):
    """A pooling layer from a PoolSpec (see `pool2d` for the kinds)."""

    def __init__(
        self,
        spec: PoolSpec,
        input_shape: tuple[int, int, int],
        *,
        kernels: Kernels = "auto",
    ):
        self.kind = spec.pool
        self.window = tuple(spec.window)
        self.strides = tuple(spec.stride)
        self.padding = shapes.resolve_padding(
            spec.padding, input_shape[:2], spec.window, spec.stride
        )
        self.p = spec.p
        self.kernels = resolve_impl(kernels, "pool")  # "xla" | "fast", see set_kernels

    def __call__(self, x: jax.Array) -> jax.Array:
        return pool2d(
            x, self.kind, self.window, self.strides, self.padding, self.p, self.kernels
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
    spec: LayerSpec,
    index: str,
    summary: shapes.Summary,
    *,
    kernels: Kernels,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The NNX module for the layer at `index` ("3", "3.1") of `summary`."""
    info = summary.row(index)
    shape = info.input_shape
    if isinstance(spec, ConvSpec):
        return Conv(spec, shape, kernels=kernels, rngs=rngs)
    if isinstance(spec, PoolSpec):
        return Pool(spec, shape, kernels=kernels)
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
        return Residual(spec, index, summary, kernels=kernels, rngs=rngs)
    raise TypeError(f"unsupported layer spec {type(spec).__name__}")


class Sequential(nnx.Module):
    """Layers applied in order; each is an attribute named `<type>_<position>`.

    A conv directly followed by a pool may run as one unit (`conv_pool`): the conv skips
    the output rows/cols the pool never reads (`crop`, on with fast kernels) and a ReLU +
    max-pool pair may use one fused custom VJP (`fuse_relu_pool`, on by default only
    for fast pools after XLA convs). Either way logits and gradients are unchanged.
    """

    def _add_layers(self, specs, index_prefix, summary, *, kernels, rngs) -> None:
        names = []
        for i, spec in enumerate(specs):
            name = f"{spec.type}_{i}"
            layer = make_layer(
                spec, f"{index_prefix}{i}", summary, kernels=kernels, rngs=rngs
            )
            setattr(self, name, layer)
            names.append(name)
        self.layer_names = tuple(names)
        self.crop = resolve_impl(kernels, "pool") == "fast"
        # The fused ReLU+max-pool VJP measured 1.26x faster next to XLA convs but 0-4%
        # slower next to im2col convs (benchmarks/README.md): only fuse with XLA convs.
        self.fuse_relu_pool = self.crop and resolve_impl(kernels, "conv") == "xla"
        self.pairs = tuple(
            (i, _border_crop(getattr(self, a), getattr(self, b)))
            for i, (a, b) in enumerate(zip(names, names[1:], strict=False))
            if isinstance(getattr(self, a), Conv) and isinstance(getattr(self, b), Pool)
        )

    def named_layers(self) -> list[tuple[str, nnx.Module]]:
        """(attribute name, module) in call order."""
        return [(name, getattr(self, name)) for name in self.layer_names]

    def __call__(self, x: jax.Array) -> jax.Array:
        pairs = dict(self.pairs) if (self.crop or self.fuse_relu_pool) else {}
        i = 0
        while i < len(self.layer_names):
            layer = getattr(self, self.layer_names[i])
            if i in pairs:
                pool = getattr(self, self.layer_names[i + 1])
                x = conv_pool(layer, pool, x, pairs[i], self.crop, self.fuse_relu_pool)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


def _border_crop(conv: Conv, pool: Pool) -> ops.BorderCrop:
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    return ops.border_crop(
        conv.input_hw,
        kernel=conv.kernel_size,
        stride=pair(conv.strides),
        dilation=pair(conv.kernel_dilation),
        padding=conv.padding,
        pool_window=pool.window,
        pool_stride=pool.strides,
        pool_padding=pool.padding,
    )


def conv_pool(
    conv: Conv,
    pool: Pool,
    x: jax.Array,
    plan: ops.BorderCrop,
    crop: bool = True,
    fuse_relu_pool: bool = True,
) -> jax.Array:
    """pool(conv(x)) computing only what the pool reads; same values and gradients.

    Args:
      conv, pool: adjacent layers.
      x: [batch, H, W, Cin] conv input.
      plan: the static crop (kernels.border_crop) of this pair.
      crop: skip the conv rows/cols the pool never reads.
      fuse_relu_pool: ReLU + max-pool as one custom VJP (kernels.relu_max_pool).

    Returns:
      [batch, Ho, Wo, filters], the pool output.
    """
    conv_pads, pool_pads = conv.padding, pool.padding
    if crop and not plan.is_noop:
        x = x[:, : plan.in_keep[0], : plan.in_keep[1], :]
        conv_pads, pool_pads = plan.conv_padding, plan.pool_padding
    y = conv2d(conv, x, conv.kernels, padding=conv_pads)
    if fuse_relu_pool and conv.activation == "relu" and pool.kind == "max":
        return ops.relu_max_pool(
            y,
            window=pool.window,
            stride=pool.strides,
            padding=pool_pads,
            impl="fast" if pool.kernels == "fast" else "xla",
        )
    y = activate(y, conv.activation)
    return pool2d(
        y, pool.kind, pool.window, pool.strides, pool_pads, pool.p, pool.kernels
    )


def runs_xla_convolution(model: nnx.Module) -> bool:
    """Whether some convolution of `model` runs as XLA's lax.conv (impl "xla", or grouped).

    jaxcnn.train.rolls_steps asks: such a convolution is slow in a loop body on CPU.
    """
    return any(
        isinstance(m, Conv) and (m.impl == "xla" or m.feature_group_count != 1)
        for _, m in model.iter_modules()
    )


def set_kernels(
    model: nnx.Module,
    *,
    conv: ops.ConvImpl | None = None,
    pool: Literal["xla", "fast"] | None = None,
    fuse_relu_pool: bool | None = None,
    crop: bool | None = None,
) -> None:
    """Forces kernel choices on every layer of a built model (None leaves one as is).

    The parameters are untouched; a jitted function of the model recompiles.
    """
    for _, module in model.iter_modules():
        if isinstance(module, Conv) and conv is not None:
            module.impl = conv
        if isinstance(module, Pool) and pool is not None:
            module.kernels = pool
        if isinstance(module, Sequential):
            if fuse_relu_pool is not None:
                module.fuse_relu_pool = fuse_relu_pool
            if crop is not None:
                module.crop = crop


class Residual(Sequential):
    """y = activation(layers(x) + skip(x)); skip is identity or the 1x1 conv `proj`."""

    def __init__(
        self,
        spec: ResidualSpec,
        index: str,
        summary: shapes.Summary,
        *,
        kernels: Kernels = "auto",
        rngs: nnx.Rngs,
    ):
        self._add_layers(spec.layers, f"{index}.", summary, kernels=kernels, rngs=rngs)
        info = summary.row(index)
        self.proj = (
            Conv(info.projection, info.input_shape, kernels=kernels, rngs=rngs)
            if info.projection is not None
            else None
        )
        self.activation = spec.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        skip = x if self.proj is None else self.proj(x)
        return activate(super().__call__(x) + skip, self.activation)


class CNN(Sequential):
    """The network of a ModelSpec: [batch, H, W, C] float32 -> logits [batch, num_classes].

    Owns `rngs`: stream `params` from the seed and `dropout` from a key derived from it,
    so the dropout RNG state is part of `nnx.state(model)` and is checkpointed. Starts in
    training mode (dropout active, batch norm using batch statistics); call
    `model.eval()` for inference and `model.train()` to switch back.
    """

    def __init__(
        self,
        spec: ModelSpec,
        summary: shapes.Summary,
        *,
        seed: int = 0,
        kernels: Kernels = "auto",
    ):
        self.spec = spec
        self.kernels = kernels
        self.rngs = nnx.Rngs(
            params=seed, dropout=jax.random.fold_in(jax.random.key(seed), 1)
        )
        self._add_layers(spec.layers, "", summary, kernels=kernels, rngs=self.rngs)
