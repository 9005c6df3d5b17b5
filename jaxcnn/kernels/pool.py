"""Pooling: the one implementation of every pooling kind, and a fused ReLU + max-pool.

Pure functions on NHWC arrays with explicit padding ``((top, bottom), (left, right))``,
floor mode. Each takes an ``impl``:

- ``"xla"``: flax's reduce_window pools (`nnx.max_pool`, `nnx.pool`, `nnx.avg_pool`),
  differentiated by JAX; the right choice on GPU/TPU.
- ``"fast"``: max pooling with a hand-written backward pass, an elementwise
  first-maximum mask against the pooled output (XLA:CPU's reduce_window max gradient is
  slow), with XLA's tie rule; the other kinds sum with a reshape where windows tile the
  input (stride == window) and as "xla" elsewhere.

Max pooling is exact in both: the same values, and the same jvp and vjp bit for bit,
ties included (the first maximum in row-major order takes the derivative, as XLA's
select-and-scatter does). The fast one is a `jax.custom_jvp` whose tangent is the
transpose of its backward pass (`windows.jvp_from_vjp`), so every JAX transformation
works and reverse mode runs that backward pass. Second order at an exact tie: the
fast pool differentiates the first-maximum choice; XLA's forward-over-reverse rule of
reduce_window max does not follow it there. The other kinds are plain JAX in both
impls and agree up to float rounding (sums in another order). Which one a layer uses is
decided in `jaxcnn.kernels.plan`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxcnn.kernels import windows
from jaxcnn.kernels.windows import Pads

PoolImpl = Literal["xla", "fast"]
POOL_IMPLS = ("xla", "fast")
PoolKind = Literal["max", "avg", "sum", "lp", "geometric", "harmonic"]


def _first_max_masks(taps, y):
    """Row-major first-occurrence masks of `y` among the window taps.

    This is the tie rule of XLA's select-and-scatter (the `ge` selector keeps the first
    maximum it meets), so the gradient matches `jax.grad` of `lax.reduce_window` max.
    """
    masks, taken = [], None
    for tap in taps:
        hit = tap == y
        if taken is None:
            masks.append(hit)
            taken = hit
        else:
            masks.append(hit & ~taken)
            taken = taken | hit
    return masks


def _max_pool_fwd_value(x, window, stride, padding, relu):
    n, h, w, c = x.shape
    ho = windows.out_size(h, window[0], stride[0], 1, padding[0])
    wo = windows.out_size(w, window[1], stride[1], 1, padding[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-jnp.inf)
    (kh, kw) = window
    if tuple(window) == tuple(stride):
        # Windows tile the input: a reshape and one reduction, which XLA materialises
        # once (the max of shifted slices is an elementwise fusion that XLA recomputes
        # inside every consumer, e.g. in each of the next conv's im2col taps).
        y = xp[:, : ho * kh, : wo * kw].reshape(n, ho, kh, wo, kw, c).max(axis=(2, 4))
    else:
        y = functools.reduce(
            jnp.maximum, windows.taps(xp, window, stride, (1, 1), (ho, wo))
        )
    if relu:
        y = jnp.maximum(y, 0)
    return y


def _max_pool_grad(x, y, g, window, stride, padding, relu):
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-jnp.inf)
    taps = windows.taps(xp, window, stride, (1, 1), y.shape[1:3])
    if relu:
        # relu(x) ties at 0 are all "max"; jax's relu has zero gradient at 0, so a
        # window whose max is 0 passes no gradient: mask the taps that are <= 0.
        masks = _first_max_masks([jnp.maximum(t, 0) for t in taps], y)
        masks = [m & (t > 0) for m, t in zip(masks, taps, strict=True)]
    else:
        masks = _first_max_masks(taps, y)
    zero = jnp.zeros((), g.dtype)
    parts = [jnp.where(m, g, zero) for m in masks]
    (kh, kw), (sh, sw) = window, stride
    ho, wo = y.shape[1:3]
    if (kh, kw) == (sh, sw):
        # Windows tile the (padded) input: interleave the parts, no scatter-add; then
        # drop the padding and restore the floor-mode remainder as zeros.
        n, _, _, c = g.shape
        stacked = jnp.stack(parts, axis=0).reshape(kh, kw, n, ho, wo, c)
        tiled = stacked.transpose(2, 3, 0, 4, 1, 5).reshape(n, ho * sh, wo * sw, c)
        (pt, pb), (pl, pr) = padding
        cfg = (
            (0, 0, 0),
            (-pt, h + pt - ho * sh, 0),
            (-pl, w + pl - wo * sw, 0),
            (0, 0, 0),
        )
        return lax.pad(tiled, zero, cfg)
    return windows.untap(parts, window, stride, (1, 1), (h, w), padding)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_fast(x, window, stride, padding, relu):
    return _max_pool_fwd_value(x, window, stride, padding, relu)


@functools.partial(_max_pool_fast.defjvp, symbolic_zeros=True)
def _max_pool_fast_jvp(window, stride, padding, relu, primals, tangents):
    (x,) = primals
    y = _max_pool_fwd_value(x, window, stride, padding, relu)

    def vjp(g):
        return (_max_pool_grad(x, y, g, window, stride, padding, relu),)

    return y, windows.jvp_from_vjp(vjp, y, tangents)


def _window_sum(x, window, stride, padding, impl):
    """Sum over each window (zero padding adds nothing), NHWC."""
    if impl == "fast" and window == stride:
        # Pad, drop the floor-mode remainder, reshape: a reduction XLA fuses and
        # differentiates into a broadcast (no reduce_window / pad-scatter).
        _, h, w, c = x.shape
        ho = windows.out_size(h, window[0], stride[0], 1, padding[0])
        wo = windows.out_size(w, window[1], stride[1], 1, padding[1])
        xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
        xp = xp[:, : ho * window[0], : wo * window[1], :]
        xp = xp.reshape(x.shape[0], ho, window[0], wo, window[1], c)
        return xp.sum(axis=(2, 4))
    return nnx.pool(x, 0.0, lax.add, window, stride, padding)


def _window_mean(x, window, stride, padding, impl):
    """Mean over the real (unpadded) cells of each window, as Keras' average pooling."""
    if impl == "fast" and window == stride:
        total = _window_sum(x, window, stride, padding, impl)
        if padding == ((0, 0), (0, 0)):
            return total / (window[0] * window[1])
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return total / _window_sum(ones, window, stride, padding, impl)
    return nnx.avg_pool(x, window, stride, padding, count_include_pad=False)


def _zero_or(kind, x, args):
    """Geometric or harmonic mean of max(x, 0) per window, 0 where the window holds a
    value <= 0; no gradient flows through those windows (log and 1/x see only x > 0)."""
    positive = x > 0
    safe = jnp.where(positive, x, jnp.ones((), x.dtype))
    zeros = _window_sum(jnp.where(positive, 0.0, 1.0).astype(x.dtype), *args)
    if kind == "geometric":
        mean = jnp.exp(_window_mean(jnp.log(safe), *args))
    else:
        mean = 1.0 / _window_mean(1.0 / safe, *args)
    return jnp.where(zeros > 0, jnp.zeros((), x.dtype), mean)


def _safe_pow(x: jax.Array, power: float) -> jax.Array:
    """x**power for x >= 0, with a zero (not NaN) gradient where x == 0."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1.0) ** power, 0.0)


def pool2d(
    x: jax.Array,
    *,
    kind: PoolKind = "max",
    window: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None,
    padding: Pads = ((0, 0), (0, 0)),
    impl: PoolImpl = "xla",
    p: float = 2.0,
) -> jax.Array:
    """2-D pooling over windows of an NHWC array (floor mode).

    Kinds, with n = number of real (unpadded) cells in the window:
      max: maximum; padding (-inf) never wins.
      avg: sum / n (padding excluded from the count, as in Keras).
      sum: sum (zero padding adds nothing).
      lp: (sum |x|^p / n)^(1/p); p=1 is the mean absolute value, large p approaches max.
      geometric: (prod x)^(1/n) = exp(mean(log x)).
      harmonic: n / sum(1 / x).
    Geometric and harmonic pooling are defined for x >= 0 (put them after relu- or
    sigmoid-like activations): negative inputs are clamped to 0, and a window holding a
    0 pools to exactly 0 (the limit of both means). Their gradient is 0 for every input
    of such a window, the one-sided derivative from the clamped side (as relu'(0) = 0 in
    JAX), so gradients stay finite.

    Args:
      x: [N, H, W, C]. bfloat16 input: max pooling runs in bfloat16 (exact), the other
        kinds in float32; the output has the input's dtype.
      kind: one of the kinds above.
      window: (kh, kw) or an int.
      stride: (sh, sw), an int, or None for the window.
      padding: explicit ((top, bottom), (left, right)).
      impl: "xla" or "fast" (see the module docstring).
      p: the exponent of "lp".

    Returns:
      [N, Ho, Wo, C].
    """
    window = windows.pair(window)
    stride = window if stride is None else windows.pair(stride)
    padding = windows.pads(padding)
    if impl not in POOL_IMPLS:
        raise ValueError(f"pool2d impl must be 'xla' or 'fast', got {impl!r}")
    if kind == "max":
        if impl == "fast":
            return _max_pool_fast(x, window, stride, padding, False)
        return nnx.max_pool(x, window, stride, padding)
    if x.dtype == jnp.bfloat16:  # sums, powers and logs in float32, handed back as x
        wide = x.astype(jnp.float32)
        return pool2d(
            wide,
            kind=kind,
            window=window,
            stride=stride,
            padding=padding,
            impl=impl,
            p=p,
        ).astype(x.dtype)
    args = (window, stride, padding, impl)
    if kind == "sum":
        return _window_sum(x, *args)
    if kind == "avg":
        return _window_mean(x, *args)
    if kind == "lp":
        return _safe_pow(_window_mean(_safe_pow(jnp.abs(x), p), *args), 1 / p)
    if kind in ("geometric", "harmonic"):
        return _zero_or(kind, x, args)
    raise ValueError(
        f"pool2d kind must be one of max, avg, sum, lp, geometric, harmonic; got {kind!r}"
    )


def relu_max_pool(
    x: jax.Array,
    *,
    window: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None,
    padding: Pads = ((0, 0), (0, 0)),
    impl: PoolImpl = "fast",
) -> jax.Array:
    """max_pool(relu(x)) with one hand-written backward pass (no separate ReLU mask).

    Equal in value and gradient to ``pool2d(jax.nn.relu(x), kind="max", ...)``.

    Args:
      x: [N, H, W, C] pre-activation (e.g. a convolution output plus bias).
      window, stride, padding: as in `pool2d`.
      impl: "fast" (fused backward pass) or "xla" (relu, then `pool2d`).

    Returns:
      [N, Ho, Wo, C].
    """
    window = windows.pair(window)
    stride = window if stride is None else windows.pair(stride)
    padding = windows.pads(padding)
    if impl == "fast":
        return _max_pool_fast(x, window, stride, padding, True)
    return pool2d(
        jax.nn.relu(x),
        kind="max",
        window=window,
        stride=stride,
        padding=padding,
        impl=impl,
    )
