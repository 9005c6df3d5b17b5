"""Convolution kernels: XLA's, im2col and Winograd F(m, 3), the latter two hand-written.

Pure functions on NHWC inputs and HWIO kernels with explicit padding
``((top, bottom), (left, right))`` ("same"/"valid" are resolved in `jaxcnn.shapes`).

- ``"xla"`` is `lax.conv_general_dilated`, the right choice on GPU/TPU.
- ``"im2col"`` makes a convolution shifted slices + one matmul, with a matmul-only
  gradient (XLA:CPU's backward convolution is slow).
- ``"winograd"`` runs a 3x3 stride-1 convolution as batched matmuls between elementwise
  tile transforms, forward and both gradients, with 2.25-4x fewer multiplies.

Every JAX transformation works on all three: grad, vjp, jvp, jacfwd, jacrev, linearize,
Hessian-vector products (jvp of grad) and vmap. The hand-written ones are
`jax.custom_jvp` functions whose tangent is the transpose of their hand-written
backward pass (`windows.jvp_from_vjp`), so reverse mode runs that backward pass.

All compute the convolution and its exact derivatives (not the derivatives of their
rounding errors), and differ from XLA's only by float rounding: im2col sums the same
products in another order (errors of a few ulps of the sum of |x * w| over the
receptive field); Winograd rounds like direct convolution for F(2, 3) and about 10x
coarser for F(4, 3) (~5e-6 of the layer's largest output in float32). Exactly: an
output whose receptive field holds only zeros (zero padding, MNIST backgrounds, ReLU
zeros) is exactly 0 in all three, so a following ReLU or max-pool tie decides as the
reference does. What rounding can change: a ReLU whose input is within rounding of 0,
or a max-pool window whose top values are within rounding of each other, may decide
the other way (as between any two float implementations; XLA's own convolution breaks
ties of identical receptive fields unlike im2col), which moves that one position's
share of the gradient. Which implementation a layer uses is decided in
`jaxcnn.kernels.plan`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.kernels import windows
from jaxcnn.kernels.windows import Pads

ConvImpl = Literal["xla", "im2col", "winograd"]
CONV_IMPLS = ("xla", "im2col", "winograd")

_DIMS = ("NHWC", "HWIO", "NHWC")


def _acc(dtype):
    """The accumulation dtype of operands of `dtype`: float32 for bfloat16/float16."""
    return jnp.promote_types(dtype, jnp.float32)


def _conv_xla(x, w, stride, padding, dilation, groups, out_dtype=None):
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=_DIMS,
        feature_group_count=groups,
        preferred_element_type=out_dtype or _acc(x.dtype),
    )


def _patches(x, kernel, stride, padding, dilation):
    """im2col: [N, H, W, C] -> [N, Ho, Wo, kh*kw*C], features ordered (i, j, c)."""
    _, h, w, _ = x.shape
    ho = windows.out_size(h, kernel[0], stride[0], dilation[0], padding[0])
    wo = windows.out_size(w, kernel[1], stride[1], dilation[1], padding[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    taps = windows.taps(xp, kernel, stride, dilation, (ho, wo))
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_im2col(x, w, stride, padding, dilation):
    return _conv_im2col_fwd(x, w, stride, padding, dilation)[0]


def _conv_im2col_fwd(x, w, stride, padding, dilation):
    kh, kw, cin, cout = w.shape
    p = _patches(x, (kh, kw), stride, padding, dilation)
    y = jnp.dot(p, w.reshape(kh * kw * cin, cout), preferred_element_type=_acc(x.dtype))
    return y, (p, w, x.shape[1:3])


def _conv_im2col_bwd(stride, padding, dilation, res, g):
    p, w, in_hw = res
    kh, kw, cin, cout = w.shape
    k, acc = kh * kw * cin, _acc(p.dtype)
    g = g.astype(p.dtype)  # matmuls on the operands' dtype, accumulated in `acc`
    # dW = patches^T dY, one matmul over every output pixel of the batch.
    dw = jnp.dot(p.reshape(-1, k).T, g.reshape(-1, cout), preferred_element_type=acc)
    dw = dw.reshape(w.shape)
    # dX: dP = dY W^T, then each tap's slice of dP goes back where it was read from.
    dp = jnp.dot(g, w.reshape(k, cout).T, preferred_element_type=acc)
    taps = [dp[..., t * cin : (t + 1) * cin] for t in range(kh * kw)]
    dx = windows.untap(taps, (kh, kw), stride, dilation, in_hw, padding)
    return dx.astype(p.dtype), dw.astype(w.dtype)


@functools.partial(_conv_im2col.defjvp, symbolic_zeros=True)
def _conv_im2col_jvp(stride, padding, dilation, primals, tangents):
    y, res = _conv_im2col_fwd(*primals, stride, padding, dilation)
    vjp = functools.partial(_conv_im2col_bwd, stride, padding, dilation, res)
    return y, windows.jvp_from_vjp(vjp, y, tangents)


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
# F(4, 3)'s transforms scale values by up to 25 and cancel, so it rounds about 10x
# coarser than a direct convolution (F(2, 3) rounds like direct): enough to flip a ReLU
# mask or a max-pool argmax where values nearly tie, not enough to change training.
# Winograd needs >= WINOGRAD_MIN_CHANNELS input channels to beat im2col on CPU: below
# that the tile transforms cost more than the multiplies they save (benchmarks/README.md).
WINOGRAD_MIN_CHANNELS = 16


def winograd_applies(kernel, stride, dilation, groups=1, dtype=jnp.float32) -> bool:
    """Whether a conv can run as Winograd: 3x3, stride 1, undilated, ungrouped, and
    float32, float64 or bfloat16 (bfloat16: the transforms run in float32, only the
    batched matmuls take bfloat16 operands; float16 is left to im2col).
    """
    return (
        windows.pair(kernel) == (3, 3)
        and windows.pair(stride) == (1, 1)
        and windows.pair(dilation) == (1, 1)
        and groups == 1
        and jnp.dtype(dtype) in (jnp.float32, jnp.float64, jnp.bfloat16)
    )


def winograd_tile(out_hw: Sequence[int], dtype=jnp.float32) -> int:
    """The output tile m (2 or 4) with the fewest multiplies for an output of out_hw.

    bfloat16 operands always take F(2, 3): rounded to bfloat16 after F(4, 3)'s
    transforms, they err several times more than a bfloat16 im2col; after F(2, 3)'s,
    about as much (benchmarks/results/precision_error.md).
    """
    if jnp.dtype(dtype) == jnp.bfloat16:
        return 2

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
    out = tuple(windows.out_size(in_hw[a], 3, 1, 1, padding[a]) for a in range(2))
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
    f = mm.shape[-1]
    mm = mm.reshape(a, a, n, th, tw, f)  # [col, row, ...]
    y = _mix(at, _mix(at, mm, 1), 0)  # [m(col), m(row), N, th, tw, F]
    y = y.transpose(2, 3, 1, 4, 0, 5).reshape(n, th * m, tw * m, f)
    return y[:, :ho, :wo]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_winograd(x, w, padding, m):
    return _conv_winograd_fwd(x, w, padding, m)[0]


def _conv_winograd_fwd(x, w, padding, m):
    # The transforms (which scale values by up to 25) run in the accumulation dtype,
    # the batched matmuls on the operands' dtype.
    acc = _acc(x.dtype)
    v, u = _winograd_inputs(x.astype(acc), w.astype(acc), padding, m)
    v, u = v.astype(x.dtype), u.astype(w.dtype)
    mm = jnp.einsum("tpc,tcf->tpf", v, u, preferred_element_type=acc)
    geometry = _winograd_geometry(x.shape[1:3], padding, m)
    y = _winograd_outputs(mm, x.shape[0], geometry, m)
    # The transforms mix a tile's inputs and cancel only up to rounding: an output whose
    # receptive field is all zeros would come out as +-1e-7-ish noise, not the exact 0
    # that decides a ReLU (and max-pool ties) downstream.
    y = jnp.where(_support(x, padding, y.shape[1:3]), y, jnp.zeros((), y.dtype))
    return y, (v, u, x.shape)


def _support(x, padding, out_hw):
    """[N, Ho, Wo, 1]: whether an output's 3x3 receptive field holds a nonzero input."""
    nonzero = jnp.any(x != 0, axis=-1, keepdims=True)
    nonzero = jnp.pad(nonzero, ((0, 0), padding[0], padding[1], (0, 0)))
    return functools.reduce(
        jnp.logical_or, windows.taps(nonzero, (3, 3), (1, 1), (1, 1), out_hw)
    )


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
    acc = _acc(v.dtype)
    dm = dm.reshape(a * a, n * th * tw, f).astype(v.dtype)
    du = jnp.einsum("tpc,tpf->tcf", v, dm, preferred_element_type=acc)
    du = du.reshape(a, a, cin, f)  # [col, row, ...]
    gt = _transpose(g)
    dw = jnp.swapaxes(_mix(gt, _mix(gt, du, 1), 0), 0, 1)  # [row, col, Cin, Cout]
    dv = jnp.einsum("tpf,tcf->tpc", dm, u, preferred_element_type=acc)
    dv = dv.reshape(a, a, n, th, tw, cin)
    btt = _transpose(bt)
    drows = _untiles(_mix(btt, dv, 0), 3, m)  # [a(row), N, th, Wq', C]
    dxq = _untiles(_mix(btt, drows, 0), 1, m)  # [N, Hq', Wq', C]
    (pt, _), (pl, _) = padding
    return dxq[:, pt : pt + h, pl : pl + wd].astype(v.dtype), dw.astype(u.dtype)


def _transpose(mat):
    return tuple(zip(*mat, strict=True))


@functools.partial(_conv_winograd.defjvp, symbolic_zeros=True)
def _conv_winograd_jvp(padding, m, primals, tangents):
    y, res = _conv_winograd_fwd(*primals, padding, m)
    vjp = functools.partial(_conv_winograd_bwd, padding, m, res)
    return y, windows.jvp_from_vjp(vjp, y, tangents)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    stride: int | Sequence[int] = 1,
    padding: Pads = ((0, 0), (0, 0)),
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: ConvImpl = "xla",
    out_dtype=None,
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
        matmul-only backward pass) or "winograd" (F(m, 3), see
        `winograd_applies`; a conv it does not apply to runs as "im2col").
      out_dtype: the output dtype; None: the accumulation dtype (float32 for
        bfloat16 operands). XLA's convolution hands out `out_dtype` directly (its
        backward convolutions then take cotangents of that dtype); the hand-written
        kernels accumulate in float32 and round to it.

    Returns:
      [N, Ho, Wo, Cout], Ho = floor((H + pt + pb - dh*(kh-1) - 1) / sh) + 1.
    """
    stride, dilation, padding = (
        windows.pair(stride),
        windows.pair(dilation),
        windows.pads(padding),
    )
    if impl == "xla" or groups != 1:
        return _conv_xla(x, w, stride, padding, dilation, groups, out_dtype)
    if impl == "winograd" and winograd_applies(
        w.shape[:2], stride, dilation, 1, x.dtype
    ):
        out_hw, _ = _winograd_geometry(x.shape[1:3], padding, 1)
        y = _conv_winograd(x, w, padding, winograd_tile(out_hw, x.dtype))
    elif impl in ("im2col", "winograd"):
        y = _conv_im2col(x, w, stride, padding, dilation)
    else:
        raise ValueError(
            f"conv2d impl must be 'xla', 'im2col' or 'winograd', got {impl!r}"
        )
    return y if out_dtype is None else y.astype(out_dtype)
