"""Mixed precision: which dtype each part of a model computes in.

A model's precision is part of its kernel choice (`kernels.KernelChoice.precision`,
`build_model(precision=...)`, `train.precision` in a run config), with per-layer
overrides (`precision_layers`, `train.fp32_layers`). Under "bfloat16":

- parameters, their gradients and the optimiser state stay float32; a conv or dense
  layer casts its kernel and its input to bfloat16, and its matmuls accumulate in
  float32; bias and activation are float32 until the layer hands its output on;
- the product's result (`kernels.plan.product_dtype`) is bfloat16 on GPU/TPU (the
  hardware accumulates in float32 and rounds once), so reverse mode, which transposes
  a product with a cotangent of its result's dtype, runs the backward convolutions
  and matmuls on bfloat16 operands too; on CPU it is float32
  (`preferred_element_type`: XLA:CPU's bfloat16-output products are slower), so there
  the backward products take the float32 cotangent with the bfloat16 operand widened
  (bfloat16 backward products would gain 2-5 % on this CPU:
  benchmarks/results/precision_backward.md);
- activations between layers are bfloat16 (a layer's output in its precision): half
  the memory traffic of float32, and max pooling of bfloat16 values is exact;
- the logits leave the last layer in float32; loss, softmax, metrics and the batch
  statistics of normalisation layers are float32 (flax normalises in float32);
- Winograd runs its tile transforms in float32 and only its batched matmuls in
  bfloat16, with F(2, 3) tiles (`kernels.winograd_tile`); pooling other than max runs
  in float32 (`kernels.pool2d`).

Checkpoints hold the float32 parameters only, so a run restores and evaluates in
either precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcnn.spec import Precision

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype(precision: Precision) -> jnp.dtype:
    """The JAX dtype of a precision name ("float32", "bfloat16")."""
    return jnp.dtype(DTYPES[precision])


def cast(x: jax.Array, precision: Precision | None) -> jax.Array:
    """`x` in the dtype of `precision` (unchanged for None)."""
    return x if precision is None else x.astype(dtype(precision))


def accumulation(dtype) -> jnp.dtype:
    """The dtype matmuls of `dtype` operands accumulate in: float32 for bfloat16,
    the dtype itself for float32 and float64."""
    return jnp.promote_types(dtype, jnp.float32)


def widen(x: jax.Array) -> jax.Array:
    """`x` in its accumulation dtype (bfloat16 -> float32; wider dtypes unchanged)."""
    return x.astype(accumulation(x.dtype))
