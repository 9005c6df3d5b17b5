"""One image at a time: XLA's kernels against the eval plan's hand-written ones.

  python benchmarks/batch1_kernels.py [--rounds 5] [--seconds 1.5] [--name batch1_kernels]

A model in eval mode plans a forward pass of a single image on CPU with XLA's
convolutions and pools (jaxcnn/kernels/plan.py, `input_plan`). This measures that
choice: for each preset, its eval-mode forward pass at batch 1 (compiled with jax.jit,
random weights, random images, `np.asarray` of the logits per call, as a server does)
under the plan ("xla", what runs) and under the kernels the eval plan gives a batch of
two or more ("eval plan": each conv's implementation forced per layer, max pools
"fast", border crops on). The two variants alternate window by window, `--rounds`
times; the per-round ratios and their median are the figure to quote. Also the first
call (compile + run) of each.

Writes benchmarks/results/<name>.json and <name>.md with the CPU model.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_common  # noqa: E402
import machine_info  # noqa: E402
import numpy as np  # noqa: E402

PRESETS = ("keras_mnist", "vgg_cifar", "resnet_cifar")


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


def eval_plan_kernels(model) -> dict:
    """set_kernels arguments that force, at batch 1, the plan a bigger batch gets (a
    model with avg pools keeps XLA's pools: one `pool` override sets every pool)."""
    from jaxcnn.spec import PoolSpec

    plan = model.kernel_plan(backend="cpu", forward_only=True)
    pools = {p.pool for p in plan.walk() if p.pool}
    max_only = all(
        p.spec.pool == "max" for p in plan.walk() if isinstance(p.spec, PoolSpec)
    )
    return {
        "conv_layers": {p.name: p.conv for p in plan.walk() if p.conv},
        "pool": "fast" if max_only and "fast" in pools else None,
        "crop": True,
    }


def rate(call, images: list, seconds: float) -> float:
    """Images per second of `call` over `images`, cycled for about `seconds`."""
    done, t0 = 0, time.perf_counter()
    while True:
        for x in images:
            call(x)
        done += len(images)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def measure(name: str, rounds: int, seconds: float) -> dict:
    from jaxcnn import models

    model = models.build_model(models.preset(name), seed=0)
    model.eval()
    rng = np.random.default_rng(0)
    images = [
        rng.random((1, *model.spec.input_shape), np.float32) for _ in range(16)
    ]
    variants = {"xla": {"kernels": "auto"}, "eval plan": eval_plan_kernels(model)}
    calls, first = {}, {}
    for variant, kernels in variants.items():
        calls[variant] = forward(model, kernels)
        t0 = time.perf_counter()
        calls[variant](images[0])
        first[variant] = time.perf_counter() - t0
    rates = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            rates[variant].append(rate(calls[variant], images, seconds))
    convs = variants["eval plan"]["conv_layers"]
    return {
        "model": name,
        "first_call_s": first,
        "images_per_s": rates,
        "xla / eval plan": bench_common.paired(rates["xla"], rates["eval plan"]),
        "eval plan convs": {i: list(convs.values()).count(i) for i in set(convs.values())},
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--name", default="batch1_kernels")
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = p.parse_args(argv)
    rows = [measure(name, args.rounds, args.seconds) for name in args.presets]
    cpu, commit = machine_info.cpu(), machine_info.git_commit()
    lines = [
        "# One image at a time: XLA's kernels against the eval plan's",
        "",
        f"CPU: {cpu}; commit {commit}; eval-mode forward pass at batch 1, jax.jit, "
        f"{args.rounds} rounds of {args.seconds} s per variant, alternating.",
        "",
        "| model | xla img/s | eval plan img/s | xla / eval plan (median, min-max) "
        "| first call s (xla / eval plan) | eval plan's convs |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio, rates = r["xla / eval plan"], r["images_per_s"]
        convs = ", ".join(f"{k} {v}" for k, v in sorted(r["eval plan convs"].items()))
        lines.append(
            f"| {r['model']} | {max(rates['xla']):,.0f} | "
            f"{max(rates['eval plan']):,.0f} | {ratio['median']:.2f} "
            f"({ratio['min']:.2f}-{ratio['max']:.2f}) | "
            f"{r['first_call_s']['xla']:.2f} / {r['first_call_s']['eval plan']:.2f} "
            f"| {convs} |"
        )
    record = {"cpu": cpu, "commit": commit, "args": vars(args), "rows": rows}
    machine_info.write_result(args.name, record, lines)


if __name__ == "__main__":
    main()
