"""Convolution and pooling kernels with hand-written gradients, and their selection.

Everything is a pure function on NHWC arrays (kernels HWIO) with explicit padding
``((top, bottom), (left, right))``; "same"/"valid" are resolved in `jaxcnn.shapes`.

Each op has an ``impl`` argument:

- ``"xla"`` is the jax.lax reference (`lax.conv_general_dilated`, `lax.reduce_window`),
  the right choice on GPU/TPU (cuDNN and friends).
- ``"im2col"``, ``"winograd"`` (conv) and ``"fast"`` (pool) are written for XLA:CPU, whose
  backward convolution and `reduce_window` max gradient are slow: im2col makes a
  convolution shifted slices + one matmul with a matmul-only gradient; Winograd F(m, 3)
  (3x3, stride 1) does a 3x3 convolution with 2.25-4x fewer multiplies, as batched matmuls
  between elementwise tile transforms, in the forward and both gradients; the max-pool
  gradient is an elementwise mask against the pooled output. All give the same values and
  gradients as the reference (up to float rounding), ties in max pooling included.

`choose_impl` picks one per layer and backend; `border_crop` finds the rows/columns of a
convolution output that a following floor-mode pool never reads, so that they need not be
computed at all.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
ConvImpl = Literal["xla", "im2col", "winograd"]
PoolImpl = Literal["xla", "fast"]
PoolKind = Literal["max", "avg", "sum", "lp", "geometric", "harmonic"]

_DIMS = ("NHWC", "HWIO", "NHWC")
# keeps log / reciprocal finite in geometric and harmonic pooling (as layers.POOL_EPS)
POSITIVE_EPS = 1e-6


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _pads(padding) -> Pads:
    (t, b), (le, r) = padding
    return ((int(t), int(b)), (int(le), int(r)))


def out_size(size: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]):
    """Output length of a floor-mode window op along one axis."""
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def _taps(xp, kernel, stride, dilation, out_hw):
    """The kh*kw shifted, strided views of a padded NHWC array, row-major.

    Args:
      xp: [N, Hp, Wp, C] padded input.

    Returns:
      list of kh*kw arrays [N, Ho, Wo, C]; tap (i, j) is at index i * kw + j.
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    n, _, _, c = xp.shape
    return [
        lax.slice(
            xp,
            (0, i * dh, j * dw, 0),
            (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _untap(taps, kernel, stride, dilation, in_hw, padding):
    """Transpose of `_taps` followed by un-padding: scatters tap gradients back.

    Each tap [N, Ho, Wo, C] is placed at its offset (interior padding undoes the stride;
    negative edge padding drops the zero-padding rows) and the results are summed.

    Returns:
      [N, H, W, C], the gradient wrt the unpadded input.
    """
    kw, (sh, sw), (dh, dw), (h, w) = kernel[1], stride, dilation, in_hw
    (pt, pb), (pl, pr) = padding
    hp, wp = h + pt + pb, w + pl + pr
    zero = jnp.zeros((), taps[0].dtype)
    total = None
    for idx, tap in enumerate(taps):
        i, j = divmod(idx, kw)
        _, ho, wo, _ = tap.shape
        top, left = i * dh, j * dw
        bottom = hp - top - ((ho - 1) * sh + 1)
        right = wp - left - ((wo - 1) * sw + 1)
        cfg = (
            (0, 0, 0),
            (top - pt, bottom - pb, sh - 1),
            (left - pl, right - pr, sw - 1),
            (0, 0, 0),
        )
        part = lax.pad(tap, zero, cfg)
        total = part if total is None else total + part
    return total


# --------------------------------------------------------------------------- conv
def _conv_xla(x, w, stride, padding, dilation, groups):
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=_DIMS,
        feature_group_count=groups,
    )


def _patches(x, kernel, stride, padding, dilation):
    """im2col: [N, H, W, C] -> [N, Ho, Wo, kh*kw*C], features ordered (i, j, c)."""
    _, h, w, _ = x.shape
    ho = out_size(h, kernel[0], stride[0], dilation[0], padding[0])
    wo = out_size(w, kernel[1], stride[1], dilation[1], padding[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    taps = _taps(xp, kernel, stride, dilation, (ho, wo))
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_im2col(x, w, stride, padding, dilation):
    kh, kw, cin, cout = w.shape
    p = _patches(x, (kh, kw), stride, padding, dilation)
    return jnp.dot(p, w.reshape(kh * kw * cin, cout), preferred_element_type=x.dtype)


def _conv_im2col_fwd(x, w, stride, padding, dilation):
    kh, kw, cin, cout = w.shape
    p = _patches(x, (kh, kw), stride, padding, dilation)
    y = jnp.dot(p, w.reshape(kh * kw * cin, cout), preferred_element_type=x.dtype)
    return y, (p, w, x.shape[1:3])


def _conv_im2col_bwd(stride, padding, dilation, res, g):
    p, w, in_hw = res
    kh, kw, cin, cout = w.shape
    k = kh * kw * cin
    # dW = patches^T dY, one matmul over every output pixel of the batch.
    dw = jnp.dot(p.reshape(-1, k).T, g.reshape(-1, cout)).reshape(w.shape)
    # dX: dP = dY W^T, then each tap's slice of dP goes back where it was read from.
    dp = jnp.dot(g, w.reshape(k, cout).T)
    taps = [dp[..., t * cin : (t + 1) * cin] for t in range(kh * kw)]
    dx = _untap(taps, (kh, kw), stride, dilation, in_hw, padding)
    return dx.astype(p.dtype), dw.astype(w.dtype)


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


# Winograd minimal filtering F(m, 3) (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2015). A 3x3 correlation of an (m+2)-long input tile d with a kernel g
# is A^T [(G g) * (B^T d)]: (m+2) multiplies for m outputs instead of 3m. In 2-D, with
# the transforms applied along rows and columns, an image is cut into (m+2)x(m+2) tiles
# at stride m, and the (m+2)^2 elementwise products over channels become (m+2)^2 batched
# matmuls [tiles, Cin] x [Cin, Cout]: 2.25x (m=2) or 4x (m=4) fewer multiplies than
# direct or im2col. Rows: (B^T, G, A^T).
_WINOGRAD = {
    2: (
        ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1)),
    ),
    4: (
        (
            (4, 0, -5, 0, 1, 0),
            (0, -4, -4, 1, 1, 0),
            (0, 4, -4, -1, 1, 0),
            (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0),
            (0, 4, 0, -5, 0, 1),
        ),
        (
            (1 / 4, 0, 0),
            (-1 / 6, -1 / 6, -1 / 6),
            (-1 / 6, 1 / 6, -1 / 6),
            (1 / 24, 1 / 12, 1 / 6),
            (1 / 24, -1 / 12, 1 / 6),
            (0, 0, 1),
        ),
        (
            (1, 1, 1, 1, 1, 0),
            (0, 1, -1, 2, -2, 0),
            (0, 1, 1, 4, 4, 0),
            (0, 1, -1, 8, -8, 1),
        ),
    ),
}
# Rounding: F(4, 3) in float32 is off by ~5e-6 of the largest output or gradient entry,
# 10x a direct convolution's ~5e-7 (its transforms scale by up to 25 and cancel); F(2, 3)
# is as exact as direct. Enough to flip a ReLU mask or a max-pool argmax where values
# nearly tie, never enough to change training (benchmarks/README.md, "Fourth session").
# Below this many input channels the tile transforms cost more than the multiplies they
# save (one vgg_cifar-sized layer, forward + backward: 3 channels 28-34 ms vs im2col's
# 12-15, 8 channels even, 16 channels 22-23 vs 37-39).
WINOGRAD_MIN_CHANNELS = 16


def winograd_applies(kernel, stride, dilation, groups=1, dtype=jnp.float32) -> bool:
    """Whether a conv can run as Winograd: 3x3, stride 1, undilated, ungrouped, f32/f64.

    Lower precisions are left to im2col: the F(4, 3) transforms scale values by up to 25.
    """
    return (
        _pair(kernel) == (3, 3)
        and _pair(stride) == (1, 1)
        and _pair(dilation) == (1, 1)
        and groups == 1
        and jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
    )


def winograd_tile(out_hw: Sequence[int]) -> int:
    """The output tile m (2 or 4) with the fewest multiplies for an output of out_hw."""

    def multiplies(m):
        return -(-out_hw[0] // m) * -(-out_hw[1] // m) * (m + 2) ** 2

    return min((4, 2), key=multiplies)  # ties go to 4 (fewer, larger matmuls)


def _mix(mat, x, axis):
    """Applies a small constant matrix along `axis`: out[i] = sum_k mat[i][k] * x[k].

    One sum of slices per output row, zero coefficients skipped, rows stacked.
    """
    parts = [lax.index_in_dim(x, k, axis, keepdims=False) for k in range(x.shape[axis])]
    rows = []
    for row in mat:
        terms = [
            p if c == 1 else -p if c == -1 else p * c
            for c, p in zip(row, parts, strict=True)
            if c
        ]
        rows.append(functools.reduce(jnp.add, terms))
    return jnp.stack(rows, axis=axis)


def _tiles(x, axis, m, tiles):
    """[..., L, ...] -> [a, ..., tiles, ...]: the a = m + 2 overlapping positions.

    Position k of tile i along `axis` is x[m * i + k]; the positions lead the result.
    """
    last = m * (tiles - 1) + 1
    return jnp.stack([lax.slice_in_dim(x, k, k + last, m, axis) for k in range(m + 2)])


def _untiles(t, axis, m):
    """Transpose of `_tiles`: [a, ..., tiles, ...] -> [..., m * (tiles + 1), ...].

    Positions 0..m-1 of tile i land in block i, positions m..a-1 at the start of block
    i + 1 (the overlap with the next tile, a - m = 2 <= m); the overlaps are summed.
    """
    a = t.shape[0]
    own = jnp.moveaxis(t[:m], 0, axis + 1)  # [..., tiles, m, ...]
    cfg = [(0, 0, 0)] * own.ndim
    cfg[axis] = (0, 1, 0)
    own = lax.pad(own, jnp.zeros((), t.dtype), cfg)
    cfg[axis], cfg[axis + 1] = (1, 0, 0), (0, 2 * m - a, 0)
    spill = lax.pad(jnp.moveaxis(t[m:], 0, axis + 1), jnp.zeros((), t.dtype), cfg)
    both = own + spill  # [..., tiles + 1, m, ...]
    shape = list(both.shape)
    shape[axis : axis + 2] = [shape[axis] * m]
    return both.reshape(shape)


def _winograd_geometry(in_hw, padding, m):
    """Output size and tiles per axis: ((ho, wo), (th, tw))."""
    out = tuple(out_size(in_hw[a], 3, 1, 1, padding[a]) for a in range(2))
    return out, tuple(-(-o // m) for o in out)


def _winograd_inputs(x, w, padding, m):
    """V = B^T d B for every tile, [a*a, N*th*tw, Cin]; U = G g G^T, [a*a, Cin, Cout]."""
    bt, g, _ = _WINOGRAD[m]
    a = m + 2
    n, h, wd, cin = x.shape
    (ho, wo), (th, tw) = _winograd_geometry((h, wd), padding, m)
    (pt, pb), (pl, pr) = padding
    pads = ((0, 0), (pt, pb + m * th - ho), (pl, pr + m * tw - wo), (0, 0))
    xq = jnp.pad(x, pads)  # exactly th x tw tiles
    rows = _mix(bt, _tiles(xq, 1, m, th), 0)  # [a, N, th, Wq, C]
    v = _mix(bt, _tiles(rows, 3, m, tw), 0)  # [a(col), a(row), N, th, tw, C]
    v = v.reshape(a * a, n * th * tw, cin)
    # G along the kernel's columns, then its rows: [a(col), a(row), Cin, Cout], like V
    u = _mix(g, jnp.swapaxes(_mix(g, w, 1), 0, 1), 1)
    return v, u.reshape(a * a, cin, w.shape[-1])


def _winograd_outputs(mm, n, geometry, m):
    """Y = A^T M A per tile, tiles put back in place: [N, ho, wo, Cout]."""
    _, _, at = _WINOGRAD[m]
    a = m + 2
    (ho, wo), (th, tw) = geometry
    mm = mm.reshape(a, a, n, th, tw, -1)  # [col, row, ...]
    y = _mix(at, _mix(at, mm, 1), 0)  # [m(col), m(row), N, th, tw, F]
    y = y.transpose(2, 3, 1, 4, 0, 5).reshape(n, th * m, tw * m, -1)
    return y[:, :ho, :wo]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_winograd(x, w, padding, m):
    return _conv_winograd_fwd(x, w, padding, m)[0]


def _conv_winograd_fwd(x, w, padding, m):
    v, u = _winograd_inputs(x, w, padding, m)
    geometry = _winograd_geometry(x.shape[1:3], padding, m)
    y = _winograd_outputs(jnp.einsum("tpc,tcf->tpf", v, u), x.shape[0], geometry, m)
    return y, (v, u, x.shape)


def _conv_winograd_bwd(padding, m, res, gy):
    """Transposes of the three stages: output transform, batched matmul, input transform."""
    v, u, (n, h, wd, cin) = res
    bt, g, at = _WINOGRAD[m]
    a = m + 2
    (ho, wo), (th, tw) = _winograd_geometry((h, wd), padding, m)
    f = gy.shape[-1]
    gq = jnp.pad(gy, ((0, 0), (0, m * th - ho), (0, m * tw - wo), (0, 0)))
    dy = gq.reshape(n, th, m, tw, m, f).transpose(4, 2, 0, 1, 3, 5)  # [col, row, ...]
    dm = _mix(_transpose(at), _mix(_transpose(at), dy, 0), 1)
    dm = dm.reshape(a * a, n * th * tw, f)
    du = jnp.einsum("tpc,tpf->tcf", v, dm).reshape(a, a, cin, f)  # [col, row, ...]
    gt = _transpose(g)
    dw = jnp.swapaxes(_mix(gt, _mix(gt, du, 1), 0), 0, 1)  # [row, col, Cin, Cout]
    dv = jnp.einsum("tpf,tcf->tpc", dm, u).reshape(a, a, n, th, tw, cin)
    btt = _transpose(bt)
    drows = _untiles(_mix(btt, dv, 0), 3, m)  # [a(row), N, th, Wq', C]
    dxq = _untiles(_mix(btt, drows, 0), 1, m)  # [N, Hq', Wq', C]
    (pt, _), (pl, _) = padding
    return dxq[:, pt : pt + h, pl : pl + wd], dw


def _transpose(mat):
    return tuple(zip(*mat, strict=True))


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    stride: int | Sequence[int] = 1,
    padding: Pads = ((0, 0), (0, 0)),
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: ConvImpl = "xla",
) -> jax.Array:
    """2-D cross-correlation (no bias), NHWC x HWIO.

    Args:
      x: [N, H, W, Cin] input.
      w: [kh, kw, Cin // groups, Cout] kernel.
      stride: (sh, sw) or an int.
      padding: explicit zero padding ((top, bottom), (left, right)).
      dilation: kernel (rhs) dilation, (dh, dw) or an int.
      groups: feature groups. The hand-written impls fall back to "xla" when groups > 1.
      impl: "xla" (lax.conv_general_dilated), "im2col" (shifted slices + one matmul,
        custom VJP with a matmul-only backward) or "winograd" (F(m, 3), see
        `winograd_applies`; a conv it does not apply to runs as "im2col").

    Returns:
      [N, Ho, Wo, Cout], Ho = floor((H + pt + pb - dh*(kh-1) - 1) / sh) + 1.
    """
    stride, dilation, padding = _pair(stride), _pair(dilation), _pads(padding)
    if impl == "xla" or groups != 1:
        return _conv_xla(x, w, stride, padding, dilation, groups)
    if impl == "winograd" and winograd_applies(
        w.shape[:2], stride, dilation, 1, x.dtype
    ):
        out_hw, _ = _winograd_geometry(x.shape[1:3], padding, 1)
        return _conv_winograd(x, w, padding, winograd_tile(out_hw))
    if impl in ("im2col", "winograd"):
        return _conv_im2col(x, w, stride, padding, dilation)
    raise ValueError(f"conv2d impl must be 'xla', 'im2col' or 'winograd', got {impl!r}")


# --------------------------------------------------------------------------- pool
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
    ho = out_size(h, window[0], stride[0], 1, padding[0])
    wo = out_size(w, window[1], stride[1], 1, padding[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-jnp.inf)
    (kh, kw) = window
    if tuple(window) == tuple(stride):
        # Windows tile the input: a reshape and one reduction, which XLA materialises
        # once. The max of shifted slices is an elementwise fusion that XLA recomputes
        # inside every consumer, e.g. 9 times in the next conv's im2col taps (keras_mnist
        # 8,972 -> 9,773 images/s at 4 steps per call).
        y = xp[:, : ho * kh, : wo * kw].reshape(n, ho, kh, wo, kw, c).max(axis=(2, 4))
    else:
        y = functools.reduce(jnp.maximum, _taps(xp, window, stride, (1, 1), (ho, wo)))
    if relu:
        y = jnp.maximum(y, 0)
    return y


def _max_pool_grad(x, y, g, window, stride, padding, relu):
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-jnp.inf)
    taps = _taps(xp, window, stride, (1, 1), y.shape[1:3])
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
    return _untap(parts, window, stride, (1, 1), (h, w), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_fast(x, window, stride, padding, relu):
    return _max_pool_fwd_value(x, window, stride, padding, relu)


def _max_pool_fast_fwd(x, window, stride, padding, relu):
    y = _max_pool_fwd_value(x, window, stride, padding, relu)
    return y, (x, y)


def _max_pool_fast_bwd(window, stride, padding, relu, res, g):
    x, y = res
    return (_max_pool_grad(x, y, g, window, stride, padding, relu),)


_max_pool_fast.defvjp(_max_pool_fast_fwd, _max_pool_fast_bwd)


def _reduce_window(x, init, op, window, stride, padding):
    return lax.reduce_window(
        x, init, op, (1, *window, 1), (1, *stride, 1), ((0, 0), *padding, (0, 0))
    )


def _window_sum(x, window, stride, padding, impl):
    """Sum over each window (zero padding), NHWC."""
    if impl == "fast" and window == stride:
        # Pad, drop the floor-mode remainder, reshape: a reduction XLA fuses and
        # differentiates into a broadcast (no reduce_window / pad-scatter).
        _, h, w, c = x.shape
        ho = out_size(h, window[0], stride[0], 1, padding[0])
        wo = out_size(w, window[1], stride[1], 1, padding[1])
        xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
        xp = xp[:, : ho * window[0], : wo * window[1], :]
        xp = xp.reshape(x.shape[0], ho, window[0], wo, window[1], c)
        return xp.sum(axis=(2, 4))
    # a Python scalar init: a traced one breaks jit(vjp(reduce_window)) (jax 0.10)
    return _reduce_window(x, 0.0, lax.add, window, stride, padding)


def _window_mean(x, window, stride, padding, impl):
    """Mean over the real (unpadded) cells of each window, as Keras' average pooling."""
    total = _window_sum(x, window, stride, padding, impl)
    if padding == ((0, 0), (0, 0)):
        return total / (window[0] * window[1])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / _window_sum(ones, window, stride, padding, impl)  # constant-folded


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
      geometric: exp(mean(log(max(x, 0) + eps))); domain x >= 0 (negatives clamp to 0).
      harmonic: n / sum(1 / (max(x, 0) + eps)); domain and clamping as geometric.
    eps = POSITIVE_EPS keeps the log and reciprocal finite at 0.

    Args:
      x: [N, H, W, C].
      kind: one of the kinds above.
      window: (kh, kw) or an int.
      stride: (sh, sw), an int, or None for the window.
      padding: explicit ((top, bottom), (left, right)).
      impl: "xla" (lax.reduce_window, differentiated by JAX) or "fast": max gets a
        custom VJP (first-maximum mask, the same tie rule as XLA; overlapping windows and
        padding handled by a scatter-add of the masked taps); the other kinds sum with a
        reshape when stride == window, else reduce_window.
      p: the exponent of "lp".

    Returns:
      [N, Ho, Wo, C].
    """
    window = _pair(window)
    stride = window if stride is None else _pair(stride)
    padding = _pads(padding)
    if impl not in ("xla", "fast"):
        raise ValueError(f"pool2d impl must be 'xla' or 'fast', got {impl!r}")
    if kind == "max":
        if impl == "fast":
            return _max_pool_fast(x, window, stride, padding, False)
        return _reduce_window(x, -jnp.inf, lax.max, window, stride, padding)
    args = (window, stride, padding, impl)
    if kind == "sum":
        return _window_sum(x, *args)
    if kind == "avg":
        return _window_mean(x, *args)
    if kind == "lp":
        return _safe_pow(_window_mean(_safe_pow(jnp.abs(x), p), *args), 1 / p)
    clamped = jnp.maximum(x, 0.0) + POSITIVE_EPS
    if kind == "geometric":
        return jnp.exp(_window_mean(jnp.log(clamped), *args))
    if kind == "harmonic":
        return 1.0 / _window_mean(1.0 / clamped, *args)
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
    """max_pool(relu(x)) with one custom VJP (no ReLU mask stored or applied separately).

    Equal in value and gradient to ``pool2d(jax.nn.relu(x), kind="max", ...)``.

    Args:
      x: [N, H, W, C] pre-activation (e.g. a convolution output plus bias).
      window, stride, padding: as in `pool2d`.
      impl: "fast" (fused custom VJP) or "xla" (relu then reduce_window).

    Returns:
      [N, Ho, Wo, C].
    """
    window = _pair(window)
    stride = window if stride is None else _pair(stride)
    padding = _pads(padding)
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
    no gradient, and saves their FLOPs (17% for the Keras MNIST convnet).

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


# --------------------------------------------------------------------------- choice
def choose_impl(
    backend: str,
    op: Literal["conv", "pool"],
    *,
    kind: PoolKind = "max",
    groups: int = 1,
    kernel: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    in_channels: int = 0,
) -> str:
    """The implementation to use for one layer on one backend.

    On CPU the hand-written kernels measured faster (see benchmarks/README.md): "winograd"
    for 3x3 stride-1 convolutions with at least WINOGRAD_MIN_CHANNELS input channels,
    "im2col" for the other ungrouped ones, and "fast" pooling. On GPU/TPU, XLA's native
    convolution (cuDNN) and reduce_window stay the default.

    Args:
      backend: jax.default_backend() or a device platform: "cpu", "gpu", "cuda",
        "rocm", "tpu", ...
      op: "conv" or "pool".
      kind: the pool kind (pool only).
      groups, kernel, stride, dilation, in_channels: the conv's (conv only); grouped
        convs stay on XLA.

    Returns:
      "xla" | "im2col" | "winograd" for convs, "xla" | "fast" for pools.
    """
    cpu = backend == "cpu"
    if op == "conv":
        if not cpu or groups != 1:
            return "xla"
        if in_channels >= WINOGRAD_MIN_CHANNELS and winograd_applies(
            kernel, stride, dilation
        ):
            return "winograd"
        return "im2col"
    if op == "pool":
        return "fast" if cpu else "xla"
    raise ValueError(f"choose_impl op must be 'conv' or 'pool', got {op!r}")
