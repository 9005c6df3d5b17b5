"""JAX worker: a jaxcnn model (jaxcnn.models.build_model), Adam, k train steps per call.

  python benchmarks/bench_jax.py MODEL VARIANT

VARIANT is `kernels=<auto|xla|fast>,k=<steps per call>[,lever=<name>][,tune=<t>][,loop=<l>]`.
Levers force each kernel choice of a model built with kernels="fast" (see LEVERS), to
measure what each one is worth. `tune` is JAXCNN_CPU_TUNING for the worker (on, off,
malloc, flags: the process settings of jaxcnn.cputune, applied by `import jaxcnn`).
`count=static` compiles the rolled loop for k steps (jaxcnn.train traces the count).
`lsr=keep` leaves LLVM's loop strength reduction on (cputune turns it off on CPU).
`loop` runs the k steps as one rolled `lax.fori_loop` (`fori`) or unrolled in Python
(`unroll`); `auto` (the default) chooses as jaxcnn.train does: rolled for k > 1 unless
a convolution runs XLA's lax.conv on CPU (slow in a loop body, jax-ml/jax#12868).
"""

from __future__ import annotations

import os
import sys
import time

T_START = time.perf_counter()
LSR_KEEP = "--xla_backend_extra_options=-disable-lsr=false"

if __name__ == "__main__":
    for _part in sys.argv[2].split(","):
        if _part.startswith("tune="):  # before `import jaxcnn` below applies it
            os.environ["JAXCNN_CPU_TUNING"] = _part.split("=", 1)[1]
        if _part == "lsr=keep":  # LLVM's default, which cputune's flag would change
            os.environ["XLA_FLAGS"] = " ".join(
                [os.environ.get("XLA_FLAGS", ""), LSR_KEEP]
            ).strip()

import bench_common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcnn import models, train  # noqa: E402

# lever -> (conv impl, pool impl, fuse relu into max-pool, crop dead border)
LEVERS = {
    "baseline": ("xla", "xla", False, False),
    "fast_pool": ("xla", "fast", False, False),
    "fused_pool": ("xla", "fast", True, False),
    "crop": ("xla", "fast", True, True),
    "im2col": ("im2col", "fast", True, True),
    # im2col everywhere but the first conv (few input channels: a skinny matmul)
    "im2col_first_xla": ("im2col", "fast", True, True),
    "im2col_nofuse": ("im2col", "fast", False, True),  # kernels="auto" before Winograd
    # Winograd for every conv it applies to (3x3 stride 1), the first layer included
    "winograd": ("winograd", "fast", False, True),
}


def parse_variant(text: str) -> dict:
    out = dict(
        kernels="auto",
        k=1,
        lever=None,
        tune="on",
        loop="auto",
        lsr="off",
        count="traced",
    )
    for part in text.split(","):
        key, value = part.split("=")
        out[key] = int(value) if key == "k" else value
    return out


def apply_lever(model: nnx.Module, lever: str) -> None:
    """Forces every conv / pool / fusion choice of `model` (see models.set_kernels)."""
    conv, pool, fuse, crop = LEVERS[lever]
    models.set_kernels(
        model,
        conv=conv,
        pool=pool,
        fuse_relu_pool=fuse,
        crop=crop,
        conv_layers={"conv_0": "xla"} if lever == "im2col_first_xla" else None,
    )


def cache_compression() -> str:
    """What JAX compresses persistent-cache entries with: zstandard if it imports."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return "zlib"
    return "zstd"


def make_runner(model_name: str, variant: str):
    v = parse_variant(variant)
    k = v["k"]
    spec = models.preset(model_name)
    model = models.build_model(spec, seed=0, kernels=v["kernels"])
    if v["lever"]:
        apply_lever(model, v["lever"])
    rolled = train.rolls_steps(model) if v["loop"] == "auto" else v["loop"] == "fori"
    traced = rolled and v["count"] == "traced"
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    rng = np.random.default_rng(0)
    h, w, c = spec.input_shape
    n = bench_common.NUM_BATCHES
    xs = jnp.asarray(rng.uniform(size=(n, bench_common.BATCH, h, w, c)), jnp.float32)
    ys = jnp.asarray(
        rng.integers(0, spec.num_classes, (n, bench_common.BATCH)), jnp.int32
    )

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def one_step(i, carry):
        params, opt_state, start, _ = carry
        j = (start + i) % n
        x = jax.lax.dynamic_index_in_dim(xs, j, keepdims=False)
        y = jax.lax.dynamic_index_in_dim(ys, j, keepdims=False)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, start, loss

    def k_steps(params, opt_state, start, count):
        carry = (params, opt_state, start, jnp.float32(0))
        # as jaxcnn.train.Steps: rolled, the step count is traced (one executable)
        carry = train.run_steps(one_step, count if traced else k, carry, rolled)
        return carry[0], carry[1], carry[3]

    step = jax.jit(k_steps, donate_argnums=(0, 1))
    state = {"params": params, "opt": opt_state, "start": 0}

    def run_calls(calls: int, count: int = k) -> None:
        for _ in range(calls):
            start = jnp.int32(state["start"] % n)
            state["params"], state["opt"], loss = step(
                state["params"], state["opt"], start, jnp.int32(count)
            )
            state["start"] += count
        loss.block_until_ready()

    # The first call: compilation and one step when rolled (jaxcnn.train's first call
    # of a run), all k steps otherwise.
    t0 = time.perf_counter()
    run_calls(1, 1 if traced else k)
    first = time.perf_counter() - t0
    info = {
        "steps_per_call": k,
        "first_call_steps": 1 if traced else k,
        "since_start_s": time.perf_counter() - T_START,
        "backend": jax.default_backend(),
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
        "cache_compression": cache_compression(),
    }
    return run_calls, k * bench_common.BATCH, first, info


if __name__ == "__main__":
    cache = os.environ.get("JAXCNN_BENCH_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    bench_common.serve(lambda: make_runner(sys.argv[1], sys.argv[2]))
