"""In-process A/B of the train step: the CPU kernels of a git revision vs the working tree.

  python benchmarks/kernel_ad_ab.py --base db88b52 --models keras_mnist vgg_cifar

The base revision's jaxcnn/kernels/conv.py and pool.py are loaded beside the current
ones and their im2col, Winograd and max-pool functions patched in while the base
`jaxcnn.train.Steps` is traced and compiled; the current kernels compile a second Steps.
Timing windows then alternate between the two in rounds (kernels="auto", batch 128,
Adam, k steps per call, synthetic data as bench_jax.py), so drifts of the shared
machine hit both alike; each round gives a paired throughput ratio current / base.
The load average is recorded per window as the noise indicator.

Writes benchmarks/results/<--name>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import bench_common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcnn import cputune, models, optim, train  # noqa: E402
from jaxcnn.kernels import conv, pool  # noqa: E402
from jaxcnn.spec import RunConfig  # noqa: E402

cputune.apply()  # the jaxcnn command's process settings, before JAX runs

PATCHED = {conv: ("_conv_im2col", "_conv_winograd"), pool: ("_max_pool_fast",)}


def load_base(rev: str) -> dict:
    """{module: {name: base function}} from the base revision's kernel files."""
    out = {}
    for module, names in PATCHED.items():
        path = "jaxcnn/kernels/" + module.__name__.rsplit(".", 1)[1] + ".py"
        source = subprocess.run(
            ["git", "show", f"{rev}:{path}"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        spec = importlib.util.spec_from_loader(f"base_{module.__name__}", loader=None)
        base = importlib.util.module_from_spec(spec)
        exec(compile(source, f"{rev}:{path}", "exec"), base.__dict__)
        out[module] = {name: getattr(base, name) for name in names}
    return out


def make(model_name: str, k: int, batch: int, patch: dict | None):
    """A compiled Steps and its runner; `patch` swaps kernel functions while compiling."""
    saved = {m: {n: getattr(m, n) for n in names} for m, names in PATCHED.items()}
    if patch:
        for module, funcs in patch.items():
            for name, fn in funcs.items():
                setattr(module, name, fn)
    try:
        spec = models.preset(model_name)
        config = RunConfig().with_overrides({"train.batch_size": batch})
        model = models.build_model(spec, seed=0, kernels="auto")
        tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=100, epochs=1)
        steps = train.Steps(model, nnx.Optimizer(model, tx, wrt=nnx.Param), config, k)
        rng = np.random.default_rng(0)
        n = 8 * batch
        images = rng.uniform(size=(n, *spec.input_shape)).astype(np.float32)
        labels = rng.integers(0, spec.num_classes, n).astype(np.int32)
        order = rng.permutation(n).reshape(-1, batch)
        state = {"step": 0}

        def run(calls: int) -> None:
            sums = None
            for _ in range(calls):
                first = state["step"] % len(order)
                rows = order[np.arange(first, first + k) % len(order)]
                sums = steps.train(images, labels, rows, state["step"], k, sums)
                state["step"] += k
            jax.block_until_ready(sums)

        run(1)  # compile while patched
        return run
    finally:
        for module, funcs in saved.items():
            for name, fn in funcs.items():
                setattr(module, name, fn)


def measure(model_name, args, base):
    runners = {
        "base": make(model_name, args.k, args.batch, base),
        "current": make(model_name, args.k, args.batch, None),
    }
    for run in runners.values():  # warm-up: calibrate calls per window
        run(1)
    t0 = time.perf_counter()
    runners["current"](2)
    calls = max(2, round(args.window_s / ((time.perf_counter() - t0) / 2)))
    rounds = []
    for r in range(args.rounds):
        order = ("base", "current") if r % 2 == 0 else ("current", "base")
        row = {}
        for name in order:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            runners[name](calls)
            dt = time.perf_counter() - t0
            row[name] = dict(ips=calls * args.k * args.batch / dt, load1=load)
        rounds.append(row)
        print(model_name, r, {k: v for k, v in row.items()}, flush=True)
    return dict(calls_per_window=calls, rounds=rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision of the base kernels")
    p.add_argument("--models", nargs="+", default=["keras_mnist", "vgg_cifar"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--name", default="kernel_ad_ab")
    args = p.parse_args()
    base = load_base(args.base)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = dict(
        started=datetime.datetime.now().isoformat(timespec="seconds"),
        base=args.base,
        current=head + ("+dirty" if _dirty() else ""),
        cpu=platform.processor() or _cpu(),
        args=vars(args),
        models={m: measure(m, args, base) for m in args.models},
    )
    out = HERE / "results" / args.name
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


def _dirty() -> bool:
    status = subprocess.run(
        ["git", "status", "--porcelain", "jaxcnn"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return bool(status.stdout.strip())


def _cpu() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def _markdown(result) -> str:
    a = result["args"]
    lines = [
        f"# Train step A/B: kernels of {result['base']} (base) vs {result['current']}",
        "",
        f"Started {result['started']}; CPU {result['cpu']}; kernels='auto', batch "
        f"{a['batch']}, k={a['k']} steps per call, {a['rounds']} rounds of alternating "
        f"~{a['window_s']} s windows in one process (`benchmarks/kernel_ad_ab.py`).",
        "",
        "| model | base images/s (median) | current images/s (median) | paired ratio "
        "current/base: median (min-max) | 1-min load average over the windows |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        rows = m["rounds"]
        pair = bench_common.paired(
            [r["current"]["ips"] for r in rows], [r["base"]["ips"] for r in rows]
        )
        loads = [r[k]["load1"] for r in rows for k in ("base", "current")]
        lines.append(
            f"| {name} | {statistics.median(r['base']['ips'] for r in rows):,.0f} "
            f"| {statistics.median(r['current']['ips'] for r in rows):,.0f} "
            f"| {pair['median']:.3f} ({pair['min']:.3f}-{pair['max']:.3f}) "
            f"| {min(loads):.1f}-{max(loads):.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
