"""What bfloat16 backward products would be worth on this CPU, per conv layer.

  python benchmarks/precision_backward.py     # writes results/precision_backward.{json,md}

In jaxcnn's bfloat16 policy a conv's output is float32 (float32 accumulation), so the
cotangent that reaches it in `jax.grad` is float32. JAX derives reverse mode by
transposing the kernels' JVP, and the transpose of a product with a float32 output takes
that float32 cotangent, so the backward products run on float32 operands (bfloat16 ones
widened) although the hand-written backward passes cast the cotangent to bfloat16. This
measures, for every conv layer of keras_mnist and vgg_cifar at batch 128 (the layer's
planned kernel: im2col or Winograd F(2,3) in bfloat16, F(4,3) in float32), the time of
one forward + backward:

- fp32: `jax.grad` of the float32 layer (what float32 training runs);
- bf16 (jax.grad): `jax.grad` of the bfloat16 layer (what bfloat16 training runs);
- bf16 (hand bwd): the kernel's forward then its hand-written backward pass called
  directly, so every backward product takes bfloat16 operands with float32 accumulation
  (what closing the gap would give).

Variants alternate within each round; the table holds the median over rounds of each
variant's best-of-5 time, and the ratios to fp32.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import machine_info  # noqa: E402

from jaxcnn import cputune, models  # noqa: E402
from jaxcnn.kernels import conv as conv_lib  # noqa: E402
from jaxcnn.kernels import plan as plan_lib  # noqa: E402

cputune.apply()  # the jaxcnn command's process settings, before JAX runs

BATCH = 128
ROUNDS = 5
MODELS = ("keras_mnist", "vgg_cifar")


def conv_layers(model: str, precision: str):
    """(name, plan) of each conv layer of `model` at its input shape, in `precision`."""
    spec = models.preset(model)
    choice = plan_lib.KernelChoice(precision=precision)
    plan = plan_lib.model_plan(spec, spec.input_shape, choice, "cpu")
    return [(p.name, p) for p in plan.walk() if p.conv is not None]


def _kernel(plan, x, w):
    """The planned kernel's forward pass: y, and the hand-written backward (g -> dx, dw)."""
    stride = conv_lib.windows.pair(plan.spec.stride)
    if plan.conv == "winograd":
        out_hw, _ = conv_lib._winograd_geometry(x.shape[1:3], plan.padding, 1)
        m = conv_lib.winograd_tile(out_hw, x.dtype)
        y, res = conv_lib._conv_winograd_fwd(x, w, plan.padding, m)
        return y, lambda g: conv_lib._conv_winograd_bwd(plan.padding, m, res, g)
    dilation = conv_lib.windows.pair(plan.spec.dilation)
    y, res = conv_lib._conv_im2col_fwd(x, w, stride, plan.padding, dilation)
    return y, lambda g: conv_lib._conv_im2col_bwd(
        stride, plan.padding, dilation, res, g
    )


def variants(plan32, plan16):
    def grad_of(plan, dtype):
        def loss(x, w):
            y = conv_lib.conv2d(
                x.astype(dtype),
                w.astype(dtype),
                stride=plan.spec.stride,
                padding=plan.padding,
                dilation=plan.spec.dilation,
                impl=plan.conv,
            )
            return jnp.sum(y.astype(jnp.float32) * g_fixed(y.shape))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    def hand(x, w):
        y, bwd = _kernel(plan16, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
        return bwd(g_fixed(y.shape).astype(jnp.float32))

    return {
        "fp32": grad_of(plan32, jnp.float32),
        "bf16 (jax.grad)": grad_of(plan16, jnp.bfloat16),
        "bf16 (hand bwd)": jax.jit(hand),
    }


def g_fixed(shape):
    return jnp.cos(jnp.arange(np.prod(shape), dtype=jnp.float32)).reshape(shape)


def best_of(fn, args, n=5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def measure_layer(plan32, plan16) -> dict:
    shape = (BATCH, *plan32.input_shape)
    cin = plan32.input_shape[-1]
    kh, kw = conv_lib.windows.pair(plan32.spec.kernel)
    key = jax.random.key(0)
    x = jax.nn.relu(jax.random.normal(key, shape, jnp.float32))
    w = jax.random.normal(key, (kh, kw, cin, plan32.spec.filters)) / np.sqrt(
        kh * kw * cin
    )
    fns = variants(plan32, plan16)
    times = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            times[name].append(best_of(fn, (x, w)))
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {
        "input": list(shape),
        "filters": plan32.spec.filters,
        "impl_fp32": plan32.conv,
        "impl_bf16": plan16.conv,
        "ms": ms,
        "ratio_to_fp32": {name: ms["fp32"] / v for name, v in ms.items()},
    }


def main() -> None:
    rows = []
    for model in MODELS:
        for (name, p32), (_, p16) in zip(
            conv_layers(model, "float32"), conv_layers(model, "bfloat16"), strict=True
        ):
            row = {"model": model, "layer": name, **measure_layer(p32, p16)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{machine_info.cpu()}, load average at the end "
        + ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "rows": rows,
    }
    results = HERE / "results"
    (results / "precision_backward.json").write_text(json.dumps(out, indent=1))
    names = list(rows[0]["ms"])
    lines = [
        "# bfloat16 backward products, per conv layer (fwd + bwd, batch 128)",
        "",
        f"{out['date']}, `python benchmarks/precision_backward.py`, {out['machine']}. "
        f"Median over {ROUNDS} rounds of the best of 5 (variants alternating); "
        "speed = fp32 time / variant time.",
        "",
        "| model | layer | input | kernel fp32 / bf16 | "
        + " | ".join(f"{n} ms (speed)" for n in names)
        + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r['ms'][n]:.2f} ({r['ratio_to_fp32'][n]:.2f}x)" for n in names]
        lines.append(
            f"| {r['model']} | {r['layer']} | {'x'.join(map(str, r['input']))} -> "
            f"{r['filters']} | {r['impl_fp32']} / {r['impl_bf16']} | "
            + " | ".join(cells)
            + " |"
        )
    for model in MODELS:
        tot = {n: sum(r["ms"][n] for r in rows if r["model"] == model) for n in names}
        lines.append(
            f"| {model} | all convs | | | "
            + " | ".join(f"{tot[n]:.1f} ({tot['fp32'] / tot[n]:.2f}x)" for n in names)
            + " |"
        )
    (results / "precision_backward.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
