"""Measured matmul peak of this machine, numpy (BLAS) and JAX (its default device), GFLOP/s.

  python benchmarks/bench_peak.py [N]        # N x N matrices, default 2048

Prints one JSON line. The best of several timed repetitions of an n x n matmul: fp32
(numpy, JAX at its default precision, and JAX at Precision.HIGHEST: on a GPU the
default may run fp32 products in TF32) and JAX with bf16 operands accumulated in fp32
(`preferred_element_type=float32`, what jaxcnn's bfloat16 precision runs).
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

N = 2048
REPS = 10


def best_seconds(fn) -> float:
    fn()
    best = float("inf")
    for _ in range(REPS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    np_s = best_seconds(lambda: a @ b)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.matmul)
    jax_s = best_seconds(lambda: mm(ja, jb).block_until_ready())
    exact = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    highest_s = best_seconds(lambda: exact(ja, jb).block_until_ready())
    ha, hb = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    mixed = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    bf16_s = best_seconds(lambda: mixed(ha, hb).block_until_ready())
    print(
        json.dumps(
            {
                "n": n,
                "backend": jax.default_backend(),
                "numpy_gflops": flops / np_s / 1e9,
                "jax_gflops": flops / jax_s / 1e9,
                "jax_fp32_highest_gflops": flops / highest_s / 1e9,
                "jax_bf16_gflops": flops / bf16_s / 1e9,
            }
        )
    )


if __name__ == "__main__":
    main()
