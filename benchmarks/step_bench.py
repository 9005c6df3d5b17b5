"""Train-step throughput of jaxcnn vs PyTorch and Keras/TF, side by side in one run.

  .venv-bench/bin/python benchmarks/step_bench.py                 # full run
  .venv-bench/bin/python benchmarks/step_bench.py --quick         # ~2 min sanity run
  .venv-bench/bin/python benchmarks/step_bench.py --levers        # what each kernel lever is worth
  .venv-bench/bin/python benchmarks/step_bench.py --cache         # persistent compilation cache
  .venv-bench/bin/python benchmarks/step_bench.py --bf16          # fp32 vs bf16, every framework
  .venv-bench/bin/python benchmarks/step_bench.py --models resnet50,vgg16 --batch 32 \
      --only jaxcnn_k1,torch_cl,keras_tf,jaxcnn_fwd,torch_cl_fwd,keras_fwd --rounds 3

Every (framework variant, model) is its own subprocess (no thread-pool or library
conflicts). All of a model's workers are started first; then timing windows alternate
between them in rounds (the idle ones block on a pipe), so slow drifts of the machine
hit every framework alike. Per window the share of the machine that *other* processes
used is measured (/proc/stat busy time minus the worker's own CPU time) and windows above
0.15 cores are flagged. Synthetic data, batch 128 (16 for the ImageNet-size presets,
`--models resnet50,vgg16`; `--batch N` sets every model's), Adam, softmax
cross-entropy; fp32 unless the row says bf16 (jaxcnn `train.precision=bfloat16`, PyTorch bf16 autocast, Keras
`mixed_bfloat16`). Rows ending in `_fwd` time the forward pass alone, in eval mode
(jaxcnn's eval step through `Steps.evaluate`, PyTorch under `inference_mode`, Keras's
`predict_on_batch`), and are compared only with each other. Since the machine's speed
drifts within a run, each jaxcnn row is also compared with each peer round by round (the two windows of one round are
neighbours in time): the median of those paired ratios is the comparison to quote.

Writes <name>.json and <name>.md to benchmarks/results (`--out DIR`: to DIR).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import bench_common  # noqa: E402

CONTENDED = 0.15  # other processes' cores above which a window is flagged
MODELS = ("keras_mnist", "vgg_cifar")
# seconds per timing window; the ImageNet-size presets (--models resnet50,vgg16) take
# seconds per step at their batch of 16 on a 2-core CPU
WINDOWS = {
    "keras_mnist": 3.0,
    "vgg_cifar": 8.0,
    "resnet_cifar": 8.0,
    "resnet50": 20.0,
    "vgg16": 30.0,
}
# name -> (worker script, variant argument)
FRAMEWORKS = {
    "jax_stock": ("bench_jax.py", "kernels=xla,k=1,tune=off"),
    "jaxcnn_k1": ("bench_jax.py", "kernels=auto,k=1"),
    # the same step with XLA's kernels everywhere: is the plan's choice the faster?
    "jaxcnn_xla_k1": ("bench_jax.py", "kernels=xla,k=1"),
    "jaxcnn_bf16_k1": ("bench_jax.py", "kernels=auto,k=1,precision=bfloat16"),
    "jaxcnn_k2": ("bench_jax.py", "kernels=auto,k=2"),
    "jaxcnn_k4": ("bench_jax.py", "kernels=auto,k=4"),
    "jaxcnn_k8": ("bench_jax.py", "kernels=auto,k=8"),
    "jaxcnn_bf16_k4": ("bench_jax.py", "kernels=auto,k=4,precision=bfloat16"),
    "jaxcnn_bf16_k8": ("bench_jax.py", "kernels=auto,k=8,precision=bfloat16"),
    "torch_cl": ("bench_torch.py", "channels_last"),
    "torch_nchw": ("bench_torch.py", "nchw"),
    "torch_cl_bf16": ("bench_torch.py", "channels_last_bf16"),
    "torch_cl_compile": ("bench_torch.py", "channels_last_compile"),
    "torch_cl_bf16_compile": ("bench_torch.py", "channels_last_bf16_compile"),
    "keras_tf": ("bench_keras.py", "train_on_batch"),
    "keras_bf16": ("bench_keras.py", "mixed_bfloat16"),
    # the forward pass alone, in eval mode (FORWARD_SUFFIX)
    "jaxcnn_fwd": ("bench_jax.py", "kernels=auto,k=1,mode=forward"),
    "jaxcnn_xla_fwd": ("bench_jax.py", "kernels=xla,k=1,mode=forward"),
    "torch_cl_fwd": ("bench_torch.py", "channels_last_forward"),
    "keras_fwd": ("bench_keras.py", "predict_on_batch"),
}
FORWARD_SUFFIX = "_fwd"
# --bf16: the precision comparison, fp32 and bf16 of jaxcnn and of each peer
BF16_SET = (
    "jaxcnn_k4",
    "jaxcnn_k8",
    "jaxcnn_bf16_k4",
    "jaxcnn_bf16_k8",
    "torch_cl",
    "torch_cl_bf16",
    "keras_tf",
    "keras_bf16",
)
LEVERS = {
    f"lever_{name}_k{k}": ("bench_jax.py", f"kernels=fast,k={k},lever={name}")
    for name, k in [
        ("baseline", 1),
        ("fast_pool", 1),
        ("fused_pool", 1),
        ("crop", 1),
        ("im2col", 1),
        ("baseline", 8),
        ("crop", 8),
        ("im2col", 2),
        ("im2col", 4),
        ("im2col", 8),
        ("im2col_first_xla", 4),
        ("im2col_nofuse", 4),
        ("winograd", 4),
    ]
}
# jaxcnn.cputune's process settings, one at a time and none (im2col lever otherwise)
LEVERS |= {
    f"lever_im2col_k{k}_tune_{t}": (
        "bench_jax.py",
        f"kernels=fast,k={k},lever=im2col,tune={t}",
    )
    for k in (1, 4)
    for t in ("off", "malloc", "flags")
}
# the k steps of a call as one rolled lax.fori_loop (jaxcnn.train) or unrolled in Python
LEVERS |= {
    f"lever_loop_{loop}_k{k}": ("bench_jax.py", f"kernels=auto,k={k},loop={loop}")
    for k in (4, 8)
    for loop in ("fori", "unroll")
}
# LLVM's loop strength reduction kept (LLVM's default) vs turned off (cputune's flag)
LEVERS |= {
    f"lever_lsr_{lsr}_k{k}": ("bench_jax.py", f"kernels=auto,k={k},lsr={lsr}")
    for k in (1, 4)
    for lsr in ("keep", "off")
}
PEERS = (
    "torch_cl",
    "keras_tf",
    "torch_cl_bf16",
    "keras_bf16",
    "torch_cl_compile",
    "torch_cl_bf16_compile",
    "torch_cl_fwd",
    "keras_fwd",
)


def is_forward(name: str) -> bool:
    """Whether a row times the forward pass alone (compared with forward rows only)."""
    return name.endswith(FORWARD_SUFFIX)


def train_flops_per_image(model: str) -> int:
    """3x the forward multiply-add FLOPs (forward + two backward matmuls per layer)."""
    from jaxcnn import models, shapes

    return 3 * 2 * shapes.summarize(models.preset(model)).total_macs


class Worker:
    def __init__(
        self, python: str, name: str, script: str, model: str, variant: str, env
    ):
        self.name, self.model = name, model
        self.proc = subprocess.Popen(
            [python, str(HERE / script), model, variant],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if not os.environ.get("BENCH_DEBUG") else None,
            text=True,
            cwd=HERE,
            env=env,
        )

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"{self.name}/{self.model}: worker exited ({self.proc.wait()})"
            )
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.recv()

    def close(self) -> dict:
        out = self.ask(cmd="quit")
        self.proc.wait(timeout=60)
        return out


def measure_peak(python: str, n: int | None = None, env=None) -> dict:
    out = subprocess.run(
        [python, str(HERE / "bench_peak.py"), *([str(n)] if n else [])],
        capture_output=True,
        text=True,
        cwd=HERE,
        env=env,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_model(
    python, model, names, table, rounds, window, env, start_together=False
) -> dict:
    """Times `names` on `model` in alternating windows (see the module docstring).

    `start_together`: start every worker before waiting for the first, so they compile
    at once (a machine with many cores; their first-step times then overlap).
    """
    results = {}
    workers = []

    def start(name: str) -> Worker:
        script, variant = table[name]
        return Worker(python, name, script, model, variant, env)

    early = [start(name) for name in names] if start_together else None
    for i, name in enumerate(names):
        w = early[i] if start_together else start(name)
        try:
            ready = w.recv()
        except RuntimeError as e:  # it died before its first step (out of memory, ...)
            ready = {"error": str(e)}
        if "error" in ready:
            print(f"  {name:22s} FAILED: {ready['error']}", flush=True)
            results[name] = {"error": ready["error"]}
            w.proc.wait()
            continue
        print(f"  {name:22s} first step {ready['first_step_s']:.2f} s", flush=True)
        results[name] = {"setup": ready, "windows": []}
        workers.append(w)
    for r in range(rounds):
        order = workers[r % len(workers) :] + workers[: r % len(workers)]
        for w in order:
            try:
                results[w.name]["windows"].append(w.ask(cmd="window", seconds=window))
            except (
                RuntimeError
            ) as e:  # it died (the OOM killer, a crash): the rest go on
                print(f"  {w.name:22s} FAILED in round {r + 1}: {e}", flush=True)
                results[w.name] = {"error": f"{e}, in round {r + 1} of {rounds}"}
                workers.remove(w)
        line = ", ".join(
            f"{w.name} {_rate(results[w.name]['windows'][-1]['images_per_s'])}"
            for w in workers
        )
        print(f"  round {r + 1}/{rounds}: {line}", flush=True)
    for w in workers:
        results[w.name].update(w.close())
    return results


def summarize(results: dict, train_flops: int, peak: dict) -> dict:
    """Per row: the median images/s and its GFLOP/s, from the train FLOPs per image
    (a third of them for forward rows)."""
    for name, res in results.items():
        if "windows" not in res:
            continue
        flops = train_flops // 3 if is_forward(name) else train_flops
        rates = [w["images_per_s"] for w in res["windows"]]
        clean = [
            w["images_per_s"] for w in res["windows"] if w["other_cores"] <= CONTENDED
        ]
        use = clean if clean else rates
        med = statistics.median(use)
        res["summary"] = {
            "images_per_s_median": med,
            "images_per_s_min": min(use),
            "images_per_s_max": max(use),
            "windows": len(rates),
            "contended_windows": len(rates) - len(clean),
            "median_over": "uncontended windows"
            if clean
            else "all windows (all contended)",
            "first_step_s": res["setup"]["first_step_s"],
            "since_start_s": res["setup"]["since_start_s"],
            "peak_rss_mb": res.get("peak_rss_mb"),
            # jaxcnn rows: XLA's memory and cost analysis of the compiled train call
            # (the loop body of a rolled call is one step)
            "xla_temp_mb": _mb(res["setup"].get("temp_bytes")),
            "xla_bytes_per_step_mb": _mb(res["setup"].get("bytes_accessed")),
            "gflops": med * flops / 1e9,
            "fraction_of_numpy_peak": med * flops / 1e9 / peak["numpy_gflops"],
            "fraction_of_jax_peak": med * flops / 1e9 / peak["jax_gflops"],
            "fraction_of_best_peak": med * flops / 1e9 / _best_peak(peak),
            "fraction_of_bf16_peak": med * flops / 1e9 / peak["jax_bf16_gflops"]
            if peak.get("jax_bf16_gflops")
            else None,
        }
    return results


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def paired_ratios(results: dict) -> dict:
    """jaxcnn / peer per round (`bench_common.paired`), for every jaxcnn row and peer
    measured in the run; round r holds one window of each worker."""
    timed = {n: r for n, r in results.items() if r.get("windows")}
    pairs = {}
    for ours in (n for n in timed if n.startswith("jaxcnn")):
        for peer in (
            p for p in PEERS if p in timed and is_forward(p) == is_forward(ours)
        ):
            pairs[f"{ours}/{peer}"] = bench_common.paired(
                [w["images_per_s"] for w in timed[ours]["windows"]],
                [w["images_per_s"] for w in timed[peer]["windows"]],
            )
    return pairs


def _best_peak(peak: dict) -> float:
    return max(peak["numpy_gflops"], peak["jax_gflops"])


def markdown(report: dict) -> str:
    peak = report["matmul_peak"]
    bf16_peak = (
        f" JAX with bf16 operands and fp32 accumulation: {peak['jax_bf16_gflops']:.0f} "
        "GFLOP/s ('of bf16 peak')."
        if peak.get("jax_bf16_gflops")
        else ""
    )
    batch = (
        f"Batch {report['batch']}"
        if report.get("batch")
        else f"Batch {bench_common.BATCH} ({bench_common.IMAGENET_BATCH} for "
        f"{', '.join(bench_common.IMAGENET_MODELS)})"
    )
    lines = [
        f"# Step benchmark: {report['name']}",
        "",
        f"{report['date']}, {report['cpu_model']} ({report['machine']}). {batch}, "
        "Adam, synthetic data "
        "(fp32 unless the row says bf16), "
        f"{report['rounds']} rounds of one timing window per framework, "
        "frameworks alternating. Rows ending in _fwd: the forward pass alone (eval "
        "mode), compared with forward rows only.",
        f"Matmul peak measured in this run: numpy {peak['numpy_gflops']:.0f} GFLOP/s, "
        f"JAX {peak['jax_gflops']:.0f} GFLOP/s (fp32, {peak['n']}x{peak['n']}); "
        f"'of matmul peak' uses the higher of the two.{bf16_peak}",
        "Median/min/max over windows where other processes used <= "
        f"{CONTENDED} cores (all windows if none).",
        "",
    ]
    for model, res in report["models"].items():
        lines += [
            f"## {model} ({res['train_mflops_per_image']:.1f} MFLOP per image per train "
            f"step, {res['train_mflops_per_image'] / 3:.1f} per forward pass, "
            f"{res['window_s']} s windows)",
            "",
            "| framework | images/s median | min-max | vs best peer | first step s "
            "| process start to first step s | peak RSS MB | XLA temp MB "
            "| XLA bytes per step MB | GFLOP/s | of matmul peak "
            "| of bf16 peak | contended windows |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, fw in res["frameworks"].items():
            if "summary" not in fw:
                lines.append(f"| {name} | failed: {fw.get('error', '?')} ||||||||||||")
                continue
            peers = [
                res["frameworks"][p]["summary"]["images_per_s_median"]
                for p in PEERS
                if "summary" in res["frameworks"].get(p, {})
                and is_forward(p) == is_forward(name)
            ]
            best_peer = max(peers) if peers else None
            s = fw["summary"]
            ratio = f"{s['images_per_s_median'] / best_peer:.2f}x" if best_peer else "-"
            lines.append(
                f"| {name} | {_rate(s['images_per_s_median'])} | "
                f"{_rate(s['images_per_s_min'])}-{_rate(s['images_per_s_max'])} | "
                f"{ratio} | "
                f"{s['first_step_s']:.2f} | {s['since_start_s']:.2f} | "
                f"{s['peak_rss_mb']:,.0f} | "
                + " | ".join(
                    "-" if s.get(k) is None else f"{s[k]:,.0f}"
                    for k in ("xla_temp_mb", "xla_bytes_per_step_mb")
                )
                + f" | {s['gflops']:.1f} | "
                f"{100 * s['gflops'] / _best_peak(peak):.0f}% | "
                + (
                    f"{100 * s['fraction_of_bf16_peak']:.0f}% | "
                    if s.get("fraction_of_bf16_peak")
                    else "- | "
                )
                + f"{s['contended_windows']}/{s['windows']} |"
            )
        lines.append("")
        lines += _paired_table(res.get("paired", {}))
    if "cache" in report:
        lines += [
            "## Persistent compilation cache (fresh process, first step)",
            "",
            "| model | variant | entries compressed by | cold first step s "
            "| warm first step s | saving s "
            "| cold start-to-first-step s | warm start-to-first-step s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in report["cache"]:
            lines.append(
                f"| {row['model']} | {row['variant']} | {row.get('compression') or '?'} | "
                f"{row['cold_first_step_s']:.2f} | "
                f"{row['warm_first_step_s']:.2f} | "
                f"{row['cold_first_step_s'] - row['warm_first_step_s']:.2f} | "
                f"{row['cold_since_start_s']:.2f} | {row['warm_since_start_s']:.2f} |"
            )
        lines.append("")
    lines += [
        "Windows per framework (images/s @ cores used by other processes): "
        "see the JSON file.",
        "",
        "Reproduce: `bash benchmarks/setup_env.sh && .venv-bench/bin/python "
        f"benchmarks/step_bench.py {report['argv']}`",
        "",
    ]
    return "\n".join(lines)


def _rate(images_per_s: float) -> str:
    """Images/s with three significant digits below 100 (the ImageNet-size presets
    run a few images a second on a CPU), whole numbers above."""
    if images_per_s >= 100:
        return f"{images_per_s:,.0f}"
    return f"{images_per_s:.3g}"


def _paired_table(pairs: dict) -> list[str]:
    """Markdown: jaxcnn rows x peer columns, median (min-max) of the per-round ratios."""
    if not pairs:
        return []
    ours = list(dict.fromkeys(key.split("/")[0] for key in pairs))
    peers = list(dict.fromkeys(key.split("/")[1] for key in pairs))
    lines = [
        "Paired ratios, jaxcnn / peer within each round: median (min-max) over rounds.",
        "",
        "| jaxcnn \\ peer | " + " | ".join(peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    for name in ours:
        cells = []
        for peer in peers:
            p = pairs.get(f"{name}/{peer}")
            cells.append(
                f"{p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f})" if p else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def cache_runs(python: str, models, variant: str) -> list[dict]:
    rows = []
    for model in models:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, JAXCNN_BENCH_CACHE=cache)
            row = {"model": model, "variant": variant, "compression": None}
            for label in ("cold", "warm"):
                w = Worker(python, label, "bench_jax.py", model, variant, env)
                ready = w.recv()
                w.close()
                row[f"{label}_first_step_s"] = ready["first_step_s"]
                row[f"{label}_since_start_s"] = ready["since_start_s"]
                row["compression"] = ready.get("cache_compression")
            print(f"  cache {model}: {row}", flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short sanity run")
    p.add_argument("--levers", action="store_true", help="JAX kernel levers only")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="fp32 vs bf16: jaxcnn k4/k8 and the PyTorch / Keras peers, both precisions",
    )
    p.add_argument(
        "--cache", action="store_true", help="also measure the compile cache"
    )
    p.add_argument(
        "--cache-only",
        type=int,
        default=0,
        metavar="N",
        help="only the compile cache, N times per model (no throughput windows)",
    )
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--only", default="", help="comma-separated framework names")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--batch", type=int, default=None, help="every model's batch size (all rows)"
    )
    p.add_argument("--window", type=float, default=None, help="seconds per window")
    p.add_argument("--name", default=None, help="results file stem")
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=HERE / "results",
        help="folder of the results files (default benchmarks/results)",
    )
    p.add_argument("--python", default=None, help="interpreter of the workers")
    args = p.parse_args(argv)

    bench_py = REPO / ".venv-bench" / "bin" / "python"
    python = args.python or (str(bench_py) if bench_py.exists() else sys.executable)
    table = LEVERS if args.levers else FRAMEWORKS
    names = [n for n in args.only.split(",") if n] or (
        list(BF16_SET) if args.bf16 else list(table)
    )
    rounds = args.rounds or (2 if args.quick else 5)
    models = args.models.split(",")
    name = args.name or (
        "levers" if args.levers else "step_bench_bf16" if args.bf16 else "step_bench"
    ) + ("_quick" if args.quick else "")
    env = dict(os.environ, PYTHONPATH=str(HERE))
    env.pop("JAXCNN_BENCH_CACHE", None)
    env.pop(bench_common.BATCH_ENV, None)
    if args.batch:
        env[bench_common.BATCH_ENV] = str(args.batch)

    print("matmul peak ...", flush=True)
    peak = measure_peak(python)
    print(f"  {peak}", flush=True)
    report = {
        "name": name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu_model": _cpu_model(),
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "rounds": rounds,
        "batch": args.batch,
        "window_s": None,
        "matmul_peak": peak,
        "models": {},
    }
    for model in models if not args.cache_only else ():
        window = args.window or WINDOWS[model] / (3 if args.quick else 1)
        report["window_s"] = window if report["window_s"] is None else "per model"
        print(
            f"{model}: {len(names)} workers, {rounds} rounds of {window} s", flush=True
        )
        flops = train_flops_per_image(model)
        res = bench_model(python, model, names, table, rounds, window, env)
        report["models"][model] = {
            "train_mflops_per_image": flops / 1e6,
            "window_s": window,
            "frameworks": summarize(res, flops, peak),
            "paired": paired_ratios(res),
        }
    if args.cache or args.cache_only:
        report["cache"] = [
            row
            for _ in range(max(1, args.cache_only))
            for row in cache_runs(python, models, FRAMEWORKS["jaxcnn_k4"][1])
        ]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{name}.md").write_text(markdown(report))
    print((out / f"{name}.md").read_text())


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
