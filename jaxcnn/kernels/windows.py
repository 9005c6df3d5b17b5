"""What convolution and pooling kernels share: window geometry (output sizes, shifted taps
and their transpose) and the JVP of a kernel from its hand-written VJP.

Arrays are NHWC; padding is explicit, ``((top, bottom), (left, right))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import custom_derivatives, lax

Pads = tuple[tuple[int, int], tuple[int, int]]


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """An int or an (h, w) pair as an (h, w) tuple of ints."""
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def pads(padding) -> Pads:
    """((top, bottom), (left, right)) as a tuple of int tuples."""
    (t, b), (le, r) = padding
    return ((int(t), int(b)), (int(le), int(r)))


def out_size(size: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]):
    """Output length of a floor-mode window op along one axis."""
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def taps(xp, kernel, stride, dilation, out_hw):
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


def untap(parts, kernel, stride, dilation, in_hw, padding):
    """Transpose of `taps` followed by un-padding: scatters tap gradients back.

    Each tap [N, Ho, Wo, C] is placed at its offset (interior padding undoes the stride;
    negative edge padding drops the zero-padding rows) and the results are summed.

    Returns:
      [N, H, W, C], the gradient wrt the unpadded input.
    """
    kw, (sh, sw), (dh, dw), (h, w) = kernel[1], stride, dilation, in_hw
    (pt, pb), (pl, pr) = padding
    hp, wp = h + pt + pb, w + pl + pr
    zero = jnp.zeros((), parts[0].dtype)
    total = None
    for idx, tap in enumerate(parts):
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


def jvp_from_vjp(
    vjp: Callable[[jax.Array], tuple[jax.Array, ...]],
    y: jax.Array,
    tangents: Sequence[jax.Array | custom_derivatives.SymbolicZero],
) -> jax.Array:
    """The tangent sum_i J_i t_i of an output `y`, as the transpose of its VJP.

    For a `jax.custom_jvp` rule (with ``symbolic_zeros=True``) of a kernel whose
    backward pass is written by hand: `vjp` maps a cotangent of `y` to the cotangents of
    the inputs (linear in it, the primal values closed over), and its transpose is the
    JVP. JAX derives reverse mode by transposing this tangent once more, which gives
    back `vjp`'s own operations: the hand-written backward pass runs in `jax.grad`,
    and forward mode, `jax.linearize` and higher orders work as for any JAX function.
    Inputs whose tangent is a symbolic zero are left out of the transpose.
    """
    live = [
        i
        for i, t in enumerate(tangents)
        if not isinstance(t, custom_derivatives.SymbolicZero)
    ]
    if not live:
        return jnp.zeros_like(y)

    def selected(g):
        cotangents = vjp(g)
        return tuple(cotangents[i] for i in live)

    (ty,) = jax.linear_transpose(selected, y)(tuple(tangents[i] for i in live))
    return ty
