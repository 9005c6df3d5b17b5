"""Rounding error of every conv kernel per precision, against a float64 reference.

  python benchmarks/precision_error.py            # writes results/precision_error.{json,md}

For each kernel (XLA's, im2col, Winograd F(2,3) and F(4,3)) and operand dtype, the
forward output and both gradients (a random cotangent) of a 3x3 "same" convolution are
compared with float64 ones of the same inputs. Two references: the float64 conv of the
float32 inputs (total error: rounding the inputs to bfloat16 included) and of the inputs
rounded to the operand dtype (the kernel's own arithmetic). Winograd in bfloat16 runs its
tile transforms in float32 and its batched matmuls on bfloat16 operands; the row
"transforms in bf16" rounds the transforms too (not what jaxcnn runs), for comparison.
Error = ||y - ref|| / ||ref|| (relative L2), max = max |y - ref| / rms(ref).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from jaxcnn import cputune  # noqa: E402
from jaxcnn.kernels import conv as conv_lib  # noqa: E402

cputune.apply()  # the jaxcnn command's process settings, before JAX runs

PAD = ((1, 1), (1, 1))
# (batch, H, W, Cin, Cout): keras_mnist's conv_2, a VGG-CIFAR middle layer
SHAPES = ((16, 13, 13, 32, 64), (8, 16, 16, 128, 128))


def _winograd_bf16_transforms(x, w, m):
    """Winograd with its transforms in bfloat16 too (for comparison only)."""
    v, u = conv_lib._winograd_inputs(x, w, PAD, m)
    mm = jnp.einsum("tpc,tcf->tpf", v, u, preferred_element_type=jnp.float32)
    geometry = conv_lib._winograd_geometry(x.shape[1:3], PAD, m)
    return conv_lib._winograd_outputs(mm, x.shape[0], geometry, m)


def variants():
    def kernel(impl, m=None):
        if m is None:
            return lambda x, w: conv_lib.conv2d(x, w, padding=PAD, impl=impl)
        return lambda x, w: conv_lib._conv_winograd(x, w, PAD, m)

    rows = [("xla", None, kernel("xla")), ("im2col", None, kernel("im2col"))]
    rows += [(f"winograd F({m},3)", m, kernel("winograd", m)) for m in (2, 4)]
    return rows


def rel(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    rms = np.sqrt(np.mean(ref**2))
    return (
        float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
        float(np.max(np.abs(y - ref)) / rms),
    )


def forward_backward(fn, x, w, g):
    y, vjp = jax.vjp(fn, x, w)
    dx, dw = vjp(g.astype(y.dtype))
    return y, dx, dw


def measure(shape, seed=0):
    n, h, wd, cin, cout = shape
    rng = np.random.default_rng(seed)
    x32 = rng.uniform(size=(n, h, wd, cin)).astype(np.float32)  # post-ReLU-like
    w32 = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    g32 = rng.normal(size=(n, h, wd, cout)).astype(np.float32)

    def ref(x, w):
        return forward_backward(
            lambda a, b: conv_lib.conv2d(a, b, padding=PAD, impl="xla"),
            jnp.asarray(x, jnp.float64),
            jnp.asarray(w, jnp.float64),
            jnp.asarray(g32, jnp.float64),
        )

    exact = ref(x32, w32)
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16):
        x, w = jnp.asarray(x32, dtype), jnp.asarray(w32, dtype)
        rounded = ref(np.asarray(x, np.float32), np.asarray(w, np.float32))
        cases = variants()
        if dtype == jnp.bfloat16:
            cases += [
                (f"winograd F({m},3), transforms in bf16", m, None) for m in (2, 4)
            ]
        for name, m, fn in cases:
            if fn is None:
                y = _winograd_bf16_transforms(x, w, m)
                outs = (y,)
            else:
                outs = forward_backward(fn, x, w, jnp.asarray(g32))
            row = {"shape": list(shape), "dtype": jnp.dtype(dtype).name, "kernel": name}
            for label, got, want, want_r in zip(
                ("y", "dx", "dw"), outs, exact, rounded, strict=False
            ):
                row[f"{label}_total"], row[f"{label}_total_max"] = rel(got, want)
                row[f"{label}_own"], _ = rel(got, want_r)
            rows.append(row)
    return rows


def markdown(rows) -> str:
    lines = [
        "# Conv rounding error per precision (float64 reference)",
        "",
        f"{datetime.date.today()}, `python benchmarks/precision_error.py`. "
        "Relative L2 error; 'total' against the float64 conv of the float32 inputs, "
        "'own' against that of the inputs rounded to the operand dtype; max = "
        "max |error| / rms(reference). x ~ U[0, 1), w ~ N(0, 1/(9 Cin)), cotangent "
        "~ N(0, 1).",
        "",
        "| shape N,H,W,Cin,Cout | operands | kernel | y total | y own | y max "
        "| dx total | dx own | dw total | dw own |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            ",".join(map(str, r["shape"])),
            r["dtype"],
            r["kernel"],
            *(
                f"{r[k]:.1e}" if k in r else "-"
                for k in (
                    "y_total",
                    "y_own",
                    "y_total_max",
                    "dx_total",
                    "dx_own",
                    "dw_total",
                    "dw_own",
                )
            ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = [row for shape in SHAPES for row in measure(shape)]
    out = HERE / "results"
    (out / "precision_error.json").write_text(json.dumps(rows, indent=1))
    (out / "precision_error.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
