"""JAX worker: `jaxcnn.train.Steps`, the compiled train step `jaxcnn train` runs.

  python benchmarks/bench_jax.py MODEL VARIANT

A jaxcnn preset, Adam 1e-3 through `optim.make_optimizer`, a resident synthetic set of
NUM_BATCHES batches gathered on device by index, k train steps per call: the same
`Steps.train` call `fit` makes for a resident dataset.

VARIANT is `kernels=<auto|xla|fast>,k=<steps per call>[,lever=<name>][,tune=<t>][,loop=<l>]
[,precision=<float32|bfloat16>]`.
Levers force each kernel choice of a model built with kernels="fast" (see LEVERS), to
measure what each one is worth. `tune` is JAXCNN_CPU_TUNING for the worker (on, off,
malloc, flags: the process settings of jaxcnn.cputune, which this worker applies).
`lsr=keep` leaves LLVM's loop strength reduction on (cputune turns it off on CPU).
`loop` runs the k steps as one rolled `lax.fori_loop` (`fori`) or unrolled in Python
(`unroll`); `auto` (the default) chooses as jaxcnn.train does. `precision` is the
run's `train.precision` (jaxcnn.precision). `mode=forward` times the forward pass
instead: `Steps.evaluate` on one batch per call (the eval step `jaxcnn train` and
`jaxcnn eval` run: the model in eval mode, loss and predicted classes back on the host).
"""

from __future__ import annotations

import os
import sys
import time

T_START = time.perf_counter()
LSR_KEEP = "--xla_backend_extra_options=-disable-lsr=false"

if __name__ == "__main__":
    for _part in sys.argv[2].split(","):
        if _part.startswith("tune="):  # before cputune.apply() below reads it
            os.environ["JAXCNN_CPU_TUNING"] = _part.split("=", 1)[1]
        if _part == "lsr=keep":  # LLVM's default, which cputune's flag would change
            os.environ["XLA_FLAGS"] = " ".join(
                [os.environ.get("XLA_FLAGS", ""), LSR_KEEP]
            ).strip()

import bench_common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import jaxcnn  # noqa: E402
from jaxcnn import cputune, data, models, optim, train  # noqa: E402
from jaxcnn.spec import RunConfig  # noqa: E402
from jaxcnn.train import sharding  # noqa: E402

cputune.apply()  # the jaxcnn command's process settings, before JAX runs

# lever -> (conv impl, pool impl, fuse relu into max-pool, crop dead border)
LEVERS = {
    "baseline": ("xla", "xla", False, False),
    "fast_pool": ("xla", "fast", False, False),
    "fused_pool": ("xla", "fast", True, False),
    "crop": ("xla", "fast", True, True),
    "im2col": ("im2col", "fast", True, True),
    # im2col everywhere but the first conv (few input channels: a skinny matmul)
    "im2col_first_xla": ("im2col", "fast", True, True),
    "im2col_nofuse": ("im2col", "fast", False, True),
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
        precision="float32",
        mode="train",
    )
    for part in text.split(","):
        key, value = part.split("=")
        out[key] = int(value) if key == "k" else value
    return out


def cache_compression() -> str:
    """What JAX compresses persistent-cache entries with: zstandard if it imports."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return "zlib"
    return "zstd"


def make_steps(model_name: str, v: dict) -> tuple[train.Steps, object]:
    """The run's compiled steps for a preset, as `fit` builds them, and its spec."""
    spec = models.preset(model_name)
    config = RunConfig().with_overrides(
        {
            "train.kernels": v["kernels"],
            "train.batch_size": bench_common.batch_for(model_name),
            "train.precision": v["precision"],
        }
    )
    model = models.build_run_model(spec, config.train, seed=0)
    if v["lever"]:
        conv, pool, fuse, crop = LEVERS[v["lever"]]
        first_xla = {"conv_0": "xla"} if v["lever"] == "im2col_first_xla" else None
        jaxcnn.set_kernels(
            model,
            conv=conv,
            pool=pool,
            fuse_relu_pool=fuse,
            crop=crop,
            conv_layers=first_xla,
        )
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=100, epochs=1)
    steps = train.Steps(model, nnx.Optimizer(model, tx, wrt=nnx.Param), config, v["k"])
    if v["loop"] != "auto":
        steps.rolled = v["loop"] == "fori"
    return steps, spec


def make_runner(model_name: str, variant: str):
    v = parse_variant(variant)
    k = v["k"]
    steps, spec = make_steps(model_name, v)
    rng = np.random.default_rng(0)
    batch = bench_common.batch_for(model_name)
    n = bench_common.NUM_BATCHES * batch
    images = rng.uniform(size=(n, *spec.input_shape)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, n).astype(np.int32)
    if v["mode"] == "forward":
        return forward_runner(steps, images, labels, batch)
    images, labels = sharding.put((images, labels), steps.layout.replicated)
    order = rng.permutation(n).reshape(-1, batch)
    state = {"step": 0}

    def rows(count: int):
        first = state["step"] % len(order)
        index = np.arange(first, first + count) % len(order)
        return sharding.put(steps.padded(order[index]), steps.layout.by_step_batch)

    def run_calls(calls: int, count: int = k) -> None:
        sums = None
        for _ in range(calls):
            sums = steps.train(images, labels, rows(count), state["step"], count, sums)
            state["step"] += count
        jax.block_until_ready(sums)

    # The first call: compilation and the steps fit's first call runs (count(first=True)).
    first_steps = steps.count(k, first=True)
    t0 = time.perf_counter()
    run_calls(1, first_steps)
    first = time.perf_counter() - t0
    info = {
        "steps_per_call": k,
        "mode": "train",
        "first_call_steps": first_steps,
        "rolled": steps.rolled,
        "since_start_s": time.perf_counter() - T_START,
        "backend": jax.default_backend(),
        "precision": v["precision"],
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
        "cache_compression": cache_compression(),
        **steps.memory(),
    }
    return run_calls, k * batch, first, info


def forward_runner(steps: train.Steps, images, labels, batch: int):
    """`Steps.evaluate` on one of the resident batches per call (numpy in, as `fit`'s
    and `jaxcnn eval`'s batches arrive)."""
    batches = [
        data.Batch(images[i : i + batch], labels[i : i + batch], np.ones(batch, "f4"))
        for i in range(0, len(images), batch)
    ]
    state = {"i": 0}

    def run_calls(calls: int) -> None:
        chosen = [batches[(state["i"] + j) % len(batches)] for j in range(calls)]
        state["i"] += calls
        steps.evaluate(chosen)  # returns host values: synchronous

    t0 = time.perf_counter()
    run_calls(1)
    first = time.perf_counter() - t0
    info = {
        "steps_per_call": 1,
        "mode": "forward",
        "since_start_s": time.perf_counter() - T_START,
        "backend": jax.default_backend(),
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
    }
    return run_calls, batch, first, info


if __name__ == "__main__":
    cache = os.environ.get("JAXCNN_BENCH_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    bench_common.serve(lambda: make_runner(sys.argv[1], sys.argv[2]))
