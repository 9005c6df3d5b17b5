"""The forward pass in eval mode: the kernel plan against the alternatives, per batch size.

  python benchmarks/eval_batch_kernels.py [--batch 1] [--rounds 5] [--seconds 1.5]
      [--models keras_mnist vgg_cifar resnet_cifar simple_cnn:32,1,max ...]
      [--variants plan xla fast hand] [--name NAME]

A model in eval mode plans a forward pass (jaxcnn/kernels/plan.py, `input_plan`). This
measures that plan against its alternatives, for each model: its eval-mode forward pass
at `--batch` (jax.jit, random weights, random images, `np.asarray` of the logits per
call, as evaluation and serving do) under these kernel variants:

- `plan`: what runs ("auto").
- `xla`: XLA's kernels everywhere (kernels="xla").
- `fast`: the hand-written kernels everywhere, as in training (kernels="fast").
- `hand`: the plan of a forward pass of two or more images, forced at any batch (each
  conv's implementation per layer, the pools', the border crops'): at batch 1, what the
  plan would run without its single-image rule.

The variants alternate window by window, `--rounds` times; per-round ratios to `plan`
and their median are the figures to quote. Also the first call (compile + run) of each.
Models: presets by name, an ImageNet preset at a reduced input size (`resnet18@64`), or
`simple_cnn:FILTERS,STRIDE,POOL` (the family of experiments/grid.py: depth 2, 64 dense
units, 28x28x1). The process runs with jaxcnn.cputune's settings, as `jaxcnn` does.

Writes benchmarks/results/<name>.json and <name>.md with the CPU model.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_common  # noqa: E402
import compile_bench  # noqa: E402
import machine_info  # noqa: E402
import numpy as np  # noqa: E402

MODELS = ("keras_mnist", "vgg_cifar", "resnet_cifar")
VARIANTS = ("plan", "xla", "fast", "hand")


def build(name: str):
    """The model `name` names (a preset, or simple_cnn:FILTERS,STRIDE,POOL), in eval
    mode."""
    from jaxcnn import models

    if name.startswith("simple_cnn:"):
        filters, stride, pool = name.split(":", 1)[1].split(",")
        spec = models.simple_cnn(
            filters=int(filters), stride=int(stride), pool=pool, dense_units=64
        )
    else:  # a preset, or an ImageNet preset at a reduced size: resnet18@64
        preset, size = compile_bench._parse_model(name)
        spec = models.preset(preset)
        if size:
            spec = dataclasses.replace(spec, input_shape=(size, size, 3))
    model = models.build_model(spec, seed=0)
    model.eval()
    return model


def hand_kernels(model) -> dict:
    """set_kernels arguments that force the plan of a forward pass of two or more
    images at any batch (one `pool` and one `crop` override set every pool and every
    conv -> pool pair: a plan whose pools, or whose pairs' crops, differ cannot be
    forced; tests/test_eval_batch_kernels.py checks the models here)."""
    plan = model.kernel_plan(backend="cpu", forward_only=True)
    pools = {p.pool for p in plan.walk() if p.pool}
    if len(pools) > 1:
        raise ValueError(f"{model.spec.name}: the plan's pools differ ({pools})")
    return {
        "conv_layers": {p.name: p.conv for p in plan.walk() if p.conv},
        "pool": pools.pop() if pools else None,
        "crop": any(p.crop is not None for p in plan.walk()),
    }


def variant_kernels(hand: dict, variant: str) -> dict:
    """set_kernels arguments of `variant` (see the module docstring), given the model's
    `hand_kernels`."""
    if variant == "plan":
        return {"kernels": "auto"}
    if variant == "xla":
        return {"kernels": "xla"}
    if variant == "fast":
        return {"kernels": "fast"}
    if variant == "hand":
        return {"kernels": "auto", **hand}
    raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")


def forward(model, kernels: dict):
    """A jitted forward pass of `model` (eval mode) with `kernels` set on it, logits
    to numpy."""
    import jax
    from flax import nnx

    from jaxcnn import models

    models.set_kernels(model, **kernels)
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: np.asarray(run(state, x))


def rate(call, images: list, seconds: float) -> float:
    """Images per second of `call` over `images`, cycled for about `seconds`."""
    done, t0 = 0, time.perf_counter()
    while True:
        for x in images:
            call(x)
            done += len(x)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def measure(name: str, variants, batch: int, rounds: int, seconds: float) -> dict:
    model = build(name)
    rng = np.random.default_rng(0)
    images = [
        rng.random((batch, *model.spec.input_shape), np.float32)
        for _ in range(max(1, 16 // batch))
    ]
    hand = hand_kernels(model)  # before any variant changes the model's kernels
    calls, first = {}, {}
    for variant in variants:
        calls[variant] = forward(model, variant_kernels(hand, variant))
        t0 = time.perf_counter()
        calls[variant](images[0])
        first[variant] = time.perf_counter() - t0
    rates = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            rates[variant].append(rate(calls[variant], images, seconds))
    convs = list(hand["conv_layers"].values())
    return {
        "model": name,
        "first_call_s": first,
        "images_per_s": rates,
        "vs plan": {
            v: bench_common.paired(rates[v], rates["plan"])
            for v in variants
            if v != "plan" and "plan" in variants
        },
        "hand convs": {impl: convs.count(impl) for impl in sorted(set(convs))},
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--name", default=None, help="default eval_batch<BATCH>_kernels")
    args = p.parse_args(argv)
    from jaxcnn import cputune

    cputune.apply()
    if "plan" not in args.variants:
        p.error("--variants must include plan (the ratios are to it)")
    rows = [
        measure(name, args.variants, args.batch, args.rounds, args.seconds)
        for name in args.models
    ]
    cpu, commit = machine_info.cpu(), machine_info.git_commit()
    others = [v for v in args.variants if v != "plan"]
    lines = [
        f"# The forward pass in eval mode at batch {args.batch}: the plan and the "
        "alternatives",
        "",
        f"CPU: {cpu}; commit {commit}; jax.jit, random weights and images; "
        f"{args.rounds} rounds of {args.seconds} s per variant, alternating. "
        "Images/s: the best round; ratios: per-round variant / plan, median (min-max).",
        "",
        "| model | plan img/s | "
        + " | ".join(f"{v} / plan" for v in others)
        + " | first call s ("
        + " / ".join(args.variants)
        + ") | hand-written plan's convs |",
        "|---|---|" + "---|" * len(others) + "---|---|",
    ]
    for r in rows:
        ratios = [
            f"{r['vs plan'][v]['median']:.2f} ({r['vs plan'][v]['min']:.2f}-"
            f"{r['vs plan'][v]['max']:.2f})"
            for v in others
        ]
        first = " / ".join(f"{r['first_call_s'][v]:.2f}" for v in args.variants)
        convs = ", ".join(f"{k} {v}" for k, v in r["hand convs"].items())
        lines.append(
            f"| {r['model']} | {max(r['images_per_s']['plan']):,.0f} | "
            + " | ".join(ratios)
            + f" | {first} | {convs} |"
        )
    record = {"cpu": cpu, "commit": commit, "args": vars(args), "rows": rows}
    machine_info.write_result(args.name or f"eval_batch{args.batch}_kernels", record, lines)


if __name__ == "__main__":
    main()
