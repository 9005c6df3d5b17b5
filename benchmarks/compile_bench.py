"""Where the first call's time goes: tracing, lowering, XLA's HLO passes, code generation.

  python benchmarks/compile_bench.py [--models M ...] [--variants V ...] [--out FILE]
  python benchmarks/compile_bench.py --tiny --out FILE    # keras_mnist, auto, batch 8
  python benchmarks/compile_bench.py --only eval --eval-batch 1000 \
      --variants auto fast xla --out benchmarks/results/eval_kernels.md

For each preset and kernel variant, one fresh worker process builds the run's compiled
steps as `jaxcnn train` does (`jaxcnn.train.Steps`, the optimiser of
`optim.make_optimizer` with its numbers traced, the process settings of
`jaxcnn.cputune`), with the persistent compilation cache off, and times the first call
of the train step (k steps per call) and of the eval step, split into
`jax.jit(f).trace` (Python tracing), `.lower()` (StableHLO) and `.compile()` (XLA), then
the first run of the compiled call. XLA:CPU's own scoped timers (`TF_CPP_VMODULE=
cpu_compiler=1`) split `.compile()` further into its HLO optimisation passes ("Running
HLO passes") and code generation ("Compiling ... for CPU using JIT": IR emission and
LLVM); XLA logs no finer split of the latter.

With `--only eval` the train call is not compiled, and the eval call also reports its
steady run time (median of five calls after the first).

Variants: `auto` (the kernel plan: Winograd / im2col convs, fast pooling, rolled k-step
loop on CPU; in eval mode XLA's convs and pooling except Winograd from 64 input
channels), `fast` (the hand-written kernels in every mode), `xla` (XLA's convs and
pooling; unrolled loop), `im2col` (every conv im2col, the rest as auto), `winograd`
(every 3x3 stride-1 conv Winograd), `pool_xla` (auto with XLA's pooling), `unrolled`
(auto with the k steps unrolled).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = ("auto", "fast", "xla", "im2col", "winograd", "pool_xla", "unrolled")
DEFAULT_MODELS = ("keras_mnist", "vgg_cifar", "resnet_cifar", "resnet18@64")
DEFAULT_VARIANTS = ("auto", "xla", "im2col")
# XLA:CPU's scoped timers, e.g. "Running HLO passes on [jit_train_steps] for CPU
# time: 1.2 s (1204511 us)"
_TIMER = re.compile(
    r"(Running HLO passes on|Compiling) \[(?P<module>[^\]]+)\] for CPU"
    r"(?: using JIT)? time: .*?\((?P<us>\d+) us\)"
)


def _parse_model(text: str) -> tuple[str, int | None]:
    """ "resnet18@64" -> ("resnet18", 64): an ImageNet preset at a reduced input size."""
    name, _, size = text.partition("@")
    return name, int(size) if size else None


def worker(
    model_text: str, variant: str, batch: int, k: int, eval_batch: int, only: str
) -> dict:
    """Times the first train and eval calls in this (fresh) process (`only`: "eval"
    times the eval call alone, and its steady run time)."""
    import dataclasses

    import numpy as np
    from flax import nnx

    import jaxcnn
    from jaxcnn import cputune, data, models, optim, train
    from jaxcnn.spec import RunConfig
    from jaxcnn.train import sharding

    cputune.apply()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    name, size = _parse_model(model_text)
    spec = models.preset(name)
    if size:
        spec = dataclasses.replace(spec, input_shape=(size, size, spec.input_shape[2]))
    config = RunConfig().with_overrides(
        {"train.kernels": variant if variant in ("xla", "fast") else "auto"}
    )
    model = models.build_run_model(spec, config.train, seed=0)
    force = {
        "im2col": dict(conv="im2col"),
        "winograd": dict(conv="winograd"),
        "pool_xla": dict(pool="xla"),
    }.get(variant)
    if force:
        jaxcnn.set_kernels(model, **force)
    build = lambda values=None: optim.make_optimizer(  # noqa: E731
        config.optim, steps_per_epoch=100, epochs=1, values=values
    )
    steps = train.Steps(
        model,
        nnx.Optimizer(model, build()[0], wrt=nnx.Param),
        config,
        k,
        tx_from=lambda values: build(values)[0],
        values=optim.traced_values(config.optim),
    )
    if variant == "unrolled":
        steps.rolled = False
    rng = np.random.default_rng(0)
    n = max(4 * batch, eval_batch)
    images = rng.uniform(size=(n, *spec.input_shape)).astype(np.float32)
    labels = rng.integers(0, spec.num_classes, n).astype(np.int32)
    resident = sharding.put((images, labels), steps.layout.replicated)
    order = rng.permutation(n)[: k * batch].reshape(k, batch)
    indices = sharding.put(order, steps.layout.by_step_batch)

    def split(fn, args, donate):
        start = time.perf_counter()
        traced = steps.jit(fn, donate).trace(*args)
        traced_at = time.perf_counter()
        lowered = traced.lower()
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compiled_at = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        return (
            out,
            compiled,
            {
                "trace_s": traced_at - start,
                "lower_s": lowered_at - traced_at,
                "compile_s": compiled_at - lowered_at,
                "first_run_s": time.perf_counter() - compiled_at,
            },
        )

    train_times = None
    if only != "eval":
        fn, args = steps.train_call(*resident, indices, 0, k)
        (steps.state, _), _, train_times = split(fn, args, (0,))
    batch_arrays = data.Batch(
        images[:eval_batch], labels[:eval_batch], np.ones(eval_batch, np.float32)
    )
    fn, args = steps.eval_call(batch_arrays)
    _, compiled, eval_times = split(fn, args, ())
    if only == "eval":
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            runs.append(time.perf_counter() - start)
        eval_times["steady_run_s"] = float(np.median(runs))
    eval_plan = model.kernel_plan(forward_only=True).walk()
    return {
        "model": model_text,
        "variant": variant,
        "rolled": steps.rolled,
        "convs": dict(
            collections.Counter(p.conv for p in model.kernel_plan().walk() if p.conv)
        ),
        "eval_convs": dict(collections.Counter(p.conv for p in eval_plan if p.conv)),
        "train": train_times,
        "eval": eval_times,
    }


def run_worker(
    model: str, variant: str, batch: int, k: int, eval_batch: int, only: str
) -> dict:
    """One worker process; its XLA timers parsed from its stderr."""
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "0",
        "TF_CPP_VMODULE": "cpu_compiler=1",
        "JAX_ENABLE_COMPILATION_CACHE": "false",
    }
    done = subprocess.run(
        [sys.executable, __file__, "--worker", model, variant]
        + [str(batch), str(k), str(eval_batch), only],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {model} {variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    modules = {"train": "jit_train_steps", "eval": "jit_eval_step"}
    for step, module in modules.items():
        if result[step] is None:
            continue
        times = {"Running HLO passes on": 0.0, "Compiling": 0.0}
        for match in _TIMER.finditer(done.stderr):
            if match["module"] == module:
                times[match[1]] += int(match["us"]) / 1e6
        result[step]["hlo_passes_s"] = times["Running HLO passes on"]
        result[step]["codegen_s"] = times["Compiling"]
    return result


def cpu_description() -> str:
    sys.path.insert(0, str(HERE))
    import machine_info

    model_number = "?"
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model":
                model_number = value.strip()
                break
    except OSError:
        pass
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in lscpu.splitlines()
            if line.startswith("Model name")
        ),
        "?",
    )
    return f"{name}; {machine_info.cpu()}, model {model_number}"


def table(results: list[dict]) -> str:
    steady = any("steady_run_s" in r["eval"] for r in results)
    head = (
        "| model | variant | step | trace s | lower s | compile s | of which HLO "
        "passes s | of which codegen s | first run s | total s |"
        + (" steady run s | convs |" if steady else "")
        + "\n|---|---|---|---|---|---|---|---|---|---|"
        + ("---|---|" if steady else "")
        + "\n"
    )
    rows = []
    for r in results:
        for step in ("train", "eval"):
            t = r[step]
            if t is None:
                continue
            total = t["trace_s"] + t["lower_s"] + t["compile_s"] + t["first_run_s"]
            label = r["variant"] + (
                " (rolled)" if step == "train" and r["rolled"] else ""
            )
            rows.append(
                f"| {r['model']} | {label} | {step} | {t['trace_s']:.2f} | "
                f"{t['lower_s']:.2f} | {t['compile_s']:.2f} | {t['hlo_passes_s']:.2f} | "
                f"{t['codegen_s']:.2f} | {t['first_run_s']:.2f} | {total:.2f} |"
                + (f" {t['steady_run_s']:.3f} | {_convs(r, step)} |" if steady else "")
            )
    return head + "\n".join(rows) + "\n"


def _convs(result: dict, step: str) -> str:
    """'im2col 1, winograd 1': the convs of the step's plan by implementation."""
    counts = result["eval_convs" if step == "eval" else "convs"]
    return ", ".join(f"{impl} {n}" for impl, n in sorted(counts.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--k", type=int, default=4, help="train steps per call")
    parser.add_argument(
        "--eval-batch", type=int, default=None, help="eval batch (default --batch)"
    )
    parser.add_argument(
        "--only", choices=("both", "eval"), default="both", help="steps to time"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="keras_mnist, auto, batch 8"
    )
    parser.add_argument("--note", default="", help="a line for the report")
    parser.add_argument(
        "--out", type=pathlib.Path, default=HERE / "results" / "compile_breakdown.md"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.variants, args.batch, args.k = ["keras_mnist"], ["auto"], 8, 2
    sys.path.insert(0, str(HERE))
    import machine_info

    results = []
    for model in args.models:
        for variant in args.variants:
            print(f"{model} {variant} ...", file=sys.stderr, flush=True)
            results.append(
                run_worker(
                    model,
                    variant,
                    args.batch,
                    args.k,
                    args.eval_batch or args.batch,
                    args.only,
                )
            )
    report = (
        "# First-call breakdown: tracing, lowering, XLA compile, first run\n\n"
        f"CPU: {cpu_description()}  \ncommit {machine_info.git_commit()}; batch "
        f"{args.batch} (eval {args.eval_batch or args.batch}), {args.k} train steps per call (rolled where marked), Adam; "
        "persistent compilation cache off; one fresh process per row. `compile` is "
        "`.compile()`; XLA:CPU's timers split it into its HLO passes and code "
        "generation (IR emission and LLVM, which XLA does not time apart); the rest "
        "of `compile` is the runtime's own work around them. `first run` is the first "
        "execution of the compiled call.\n"
        + (f"\n{args.note}\n" if args.note else "")
        + "\n"
        + table(results)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model, variant, batch, k, eval_batch, only = sys.argv[2:8]
        result = worker(model, variant, int(batch), int(k), int(eval_batch), only)
        print(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
