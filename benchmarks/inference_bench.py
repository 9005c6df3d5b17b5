"""Inference throughput: jaxcnn predict, the exported model, onnxruntime, PyTorch eager.

  python benchmarks/inference_bench.py [--images N] [--name inference]

On the 10,000 MNIST test images (raw files in $JAXCNN_SHARED_DATA or ../shared/data,
read with numpy), for keras_mnist trained for one epoch on 6,000 MNIST images (the
weights do not change the speed), at batch 1 and batch 256:

- `jaxcnn.train.Predictor` (a run restored once; what `jaxcnn predict` runs for its
  files): one call per batch, each converting the images (uint8 in) and running the
  compiled forward pass; setup is the restore and the first call's compile. A third
  row gives all images to one `jaxcnn.train.predict` call (one restore; compiled chunks
  of the run's eval batch size, 1,000).
- the restored model under `jax.jit` (of `nnx.merge(graphdef, state)(x)`, the way to
  serve it from Python): predict without the restore, the image conversion and
  `nnx.jit`'s per-call overhead.
- the StableHLO export (`jax.export.deserialize(...).call`) and the ONNX export in
  onnxruntime (CPU execution provider), float32 images in [0, 1].
- PyTorch eager (`torch.no_grad`, channels_last), the same architecture, when torch
  imports (benchmarks/bench_torch.py's keras_mnist).
- training's per-image rate in the same run: jaxcnn's compiled train step
  (benchmarks/bench_jax.py, batch 128, the backend's default steps per call), over a
  few seconds before the inference rows and again after them (a shared machine's
  speed drifts); the faster of the two is the rate prediction is compared with.

Each row: the best of 3 passes over its images (a pass = all images in batches;
compile / session creation happen before the first pass and are reported apart).
Writes benchmarks/results/<name>.json and <name>.md with the CPU model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import device_check  # noqa: E402  (benchmarks/device_check.py: the raw MNIST reader)
import machine_info  # noqa: E402
import numpy as np  # noqa: E402

from jaxcnn.data.catalog import shared_data_dir  # noqa: E402

BATCHES = (1, 256)
PASSES = 3


def _best_rate(run, images: int) -> float:
    best = float("inf")
    for _ in range(PASSES):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return images / best


def _chunks(x: np.ndarray, batch: int) -> list[np.ndarray]:
    return [x[i : i + batch] for i in range(0, len(x), batch)]


def train_run(data: pathlib.Path, workdir: pathlib.Path):
    import jaxcnn
    from jaxcnn import data as data_lib
    from jaxcnn.spec import RunConfig

    train_x, train_y, test_x, test_y = device_check.read_mnist(str(data))
    split = data_lib.Split
    dataset = data_lib.Dataset(
        name="mnist",
        train=split(train_x[1000:7000], train_y[1000:7000]),
        val=split(train_x[:1000], train_y[:1000]),
        test=split(test_x[:1000], test_y[:1000]),
        num_classes=10,
        class_names=tuple(map(str, range(10))),
        image_shape=(28, 28, 1),
        mean=None,
        std=None,
        notes=(),
    )
    config = RunConfig().with_overrides(
        {"model.name": "keras_mnist", "data.dataset": "mnist", "train.epochs": 1}
    )
    result = jaxcnn.fit(config, workdir, quiet=True, dataset=dataset)
    return result.summary["test_accuracy"], test_x, test_y


def rows_for(workdir, images_u8, images_f32, tmp) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxcnn import export, train

    rows = []
    n = len(images_f32)

    def row(name, batch, rate, setup_s, count, note=""):
        rows.append(
            {
                "path": name,
                "batch": batch,
                "images": count,
                "images_per_s": rate,
                "setup_s": setup_s,
                "note": note,
            }
        )
        print(f"  {name:28s} batch {batch:4d}: {rate:10,.0f} img/s", flush=True)

    # jaxcnn's Predictor: restored once, then convert + forward per call
    for batch in BATCHES:
        parts = _chunks(images_u8, batch)
        t0 = time.perf_counter()
        predictor = train.Predictor(workdir)
        predictor(list(parts[0]))
        setup = time.perf_counter() - t0
        rate = _best_rate(
            lambda parts=parts, p=predictor: [p(list(x)) for x in parts], n
        )
        row("jaxcnn Predictor", batch, rate, setup, n, "restored once, uint8 in")
    rate = _best_rate(lambda: train.predict(workdir, list(images_u8)), n)
    row("jaxcnn predict", n, rate, 0.0, n, "one call: one restore, chunks of 1,000")

    # the restored model under jax.jit
    run = train.restore(workdir)
    graphdef, state = nnx.split(run.model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    for batch in BATCHES:
        parts = [jnp.asarray(p) for p in _chunks(images_f32, batch)]
        t0 = time.perf_counter()
        jax.block_until_ready(forward(state, parts[0]))
        setup = time.perf_counter() - t0
        rate = _best_rate(
            lambda parts=parts: jax.block_until_ready(
                [forward(state, p) for p in parts]
            ),
            n,
        )
        row("jaxcnn model, jax.jit", batch, rate, setup, n)

    # StableHLO export
    t0 = time.perf_counter()
    (hlo_path, _) = export.export_run(workdir, "stablehlo", tmp / "m.stablehlo")
    exported = jax.export.deserialize(hlo_path.read_bytes())
    export_s = time.perf_counter() - t0
    for batch in BATCHES:
        parts = [jnp.asarray(p) for p in _chunks(images_f32, batch)]
        t0 = time.perf_counter()
        jax.block_until_ready(exported.call(parts[0]))
        setup = time.perf_counter() - t0
        rate = _best_rate(
            lambda parts=parts: jax.block_until_ready(
                [exported.call(p) for p in parts]
            ),
            n,
        )
        row("StableHLO export (JAX)", batch, rate, setup + export_s, n)

    # ONNX export in onnxruntime
    try:
        import onnxruntime as ort
    except ImportError:
        rows.append({"path": "onnxruntime", "note": "not installed"})
    else:
        t0 = time.perf_counter()
        (onnx_path,) = export.export_run(workdir, "onnx", tmp / "m.onnx")
        session = ort.InferenceSession(
            str(onnx_path), providers=["CPUExecutionProvider"]
        )
        setup = time.perf_counter() - t0
        for batch in BATCHES:
            parts = _chunks(images_f32, batch)
            rate = _best_rate(
                lambda parts=parts: [
                    session.run(["logits"], {"images": p}) for p in parts
                ],
                n,
            )
            row(f"ONNX export (onnxruntime {ort.__version__})", batch, rate, setup, n)

    # PyTorch eager
    try:
        import bench_torch
        import torch
    except ImportError:
        rows.append({"path": "PyTorch eager", "note": "torch not installed"})
    else:
        net, _ = bench_torch.keras_mnist()
        net = net.eval().to(memory_format=torch.channels_last)
        nchw = torch.from_numpy(images_f32.transpose(0, 3, 1, 2).copy())
        for batch in BATCHES:
            parts = [
                p.contiguous(memory_format=torch.channels_last)
                for p in torch.split(nchw, batch)
            ]

            def run_torch(parts=parts):
                with torch.no_grad():
                    for p in parts:
                        net(p)

            rate = _best_rate(run_torch, n)
            row(f"PyTorch eager {torch.__version__}", batch, rate, 0.0, n)
    return rows


def train_step_rate(seconds: float = 5.0) -> dict:
    """jaxcnn's compiled train step on keras_mnist: images/s (bench_jax's runner)."""
    import bench_common
    import bench_jax
    import jax

    from jaxcnn import train

    k = train.default_steps_per_dispatch(jax.default_backend())
    run_calls, per_call, first, info = bench_jax.make_runner(
        "keras_mnist", f"kernels=auto,k={k}"
    )
    window = bench_common.time_window(run_calls, per_call, seconds)
    return {
        "images_per_s": window["images_per_s"],
        "steps_per_call": k,
        "batch": bench_common.BATCH,
        "window_s": window["seconds"],
        "other_cores": window["other_cores"],
    }


def markdown(report: dict) -> str:
    train_rate = report["train_step"]["images_per_s"]
    lines = [
        f"# Inference throughput: {report['name']}",
        "",
        f"{report['date']}, {report['machine']}, commit {report['commit']}. "
        f"keras_mnist (one epoch on 6,000 MNIST images, test accuracy "
        f"{report['test_accuracy']:.3f}) on {report['images']:,} MNIST test images; "
        f"best of {PASSES} passes. Training's per-image rate in the same run: "
        f"{train_rate:,.0f} images/s, the faster of {report['train_step']['before']:,.0f} "
        f"before and {report['train_step']['after']:,.0f} after the inference rows "
        f"(compiled train step, batch {report['train_step']['batch']}, "
        f"{report['train_step']['steps_per_call']} steps per call).",
        "",
        "| path | batch | images timed | images/s | vs training's images/s "
        "| setup s (compile, export, session) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "images_per_s" not in r:
            lines.append(f"| {r['path']} | - | - | - | - | - | {r['note']} |")
            continue
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['images']:,} | "
            f"{r['images_per_s']:,.0f} | {r['images_per_s'] / train_rate:.2f}x | "
            f"{r['setup_s']:.2f} | {r['note']} |"
        )
    lines += [
        "",
        f"Reproduce: `python benchmarks/inference_bench.py {report['argv']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--name", default="inference")
    p.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = p.parse_args(argv)
    data = shared_data_dir()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = pathlib.Path(tmp_dir)
        print("training keras_mnist for one epoch ...", flush=True)
        accuracy, test_x, _ = train_run(data, tmp / "run")
        images_f32 = test_x[: args.images]
        images_u8 = np.round(images_f32 * 255).astype(np.uint8)
        print("train step ...", flush=True)
        before = train_step_rate()
        print(f"  {before['images_per_s']:,.0f} img/s", flush=True)
        rows = rows_for(tmp / "run", images_u8, images_f32, tmp)
        print("train step again ...", flush=True)
        after = train_step_rate()
        print(f"  {after['images_per_s']:,.0f} img/s", flush=True)
        train_step = dict(
            max(before, after, key=lambda r: r["images_per_s"]),
            before=before["images_per_s"],
            after=after["images_per_s"],
        )
    report = {
        "name": args.name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info.cpu(),
        "commit": machine_info.git_commit(),
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "images": len(images_f32),
        "test_accuracy": accuracy,
        "train_step": train_step,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
