"""One prepared check of jaxcnn on an accelerator: what a short GPU loan should answer.

  python3 benchmarks/device_check.py OUT_DIR [--data DIR] [--wheels DIR]   # on a GPU
  python benchmarks/device_check.py OUT_DIR --dry-run                        # CPU, ~2 min

Sections, each in its own subprocess with its own time limit (one failing section is
recorded and the others still run), in this order:

1. install: makes jaxcnn's imports work. The repository is used in place (PYTHONPATH).
   Missing packages come from wheels in `--wheels` (default `.whl` in the repository:
   `pip install --no-index --no-deps --target`), else from the package registries
   (`pip install`), which a machine with no network cannot reach: the section then
   records what is missing and the rest runs with what is installed.
2. devices: the JAX backend, devices and their memory, versions (JAX, Flax, optax,
   orbax, PyTorch, onnxruntime), `nvidia-smi`; per preset, the kernel plan jaxcnn
   picks on this backend and the training-memory estimate against the device memory.
3. tests: the pytest subset that means something on a GPU: the kernel plan on this
   backend and the models through it (test_kernels_models.py), precision dtypes
   (test_precision.py), memory estimates (test_memory.py), export (test_export.py);
   without TFDS (TensorFlow) the tests that train on the embedded digits set through
   it are deselected, and the record says which.
4. train: real MNIST (the raw files in `--data`/mnist, read with numpy, no TFDS):
   keras_mnist trained for one epoch through `jaxcnn.fit` on every device JAX sees
   (the sharded code path, one device here), test accuracy against the usual >= 98%;
   then exact resume: two epochs in one go vs one epoch, then resumed to two, compared
   parameter by parameter.
5. peak: matmul GFLOP/s per precision (benchmarks/bench_peak.py at N=8192 on a GPU),
   the ceiling for the step rates.
6. steps: `jaxcnn train`'s compiled step (benchmarks/bench_jax.py, k steps per call as
   the backend's default) for keras_mnist, vgg_cifar, resnet_cifar and resnet50 at
   224x224 (batch 16; the others 128) in float32 and bfloat16, beside PyTorch on the same device (benchmarks/bench_torch.py:
   channels_last, bf16 autocast, and the same through torch.compile, which needs no
   network), in alternating windows with per-round paired ratios
   (benchmarks/step_bench.py's machinery). Models whose turn comes after `--budget`
   seconds (default 450) are skipped, so the whole check stays near 8 minutes.

Writes OUT_DIR/device_check.json (everything, including each section's output tail)
and prints a short summary. `--dry-run` runs every section on the CPU with tiny
windows and a 2,000-image training (accuracy is then recorded, not checked): what
tests/test_device_check.py runs, so the script works the first time a GPU is there.

On this workplace's device machines (no network; python3 is 3.12 with JAX, Flax,
optax, orbax, PyTorch, onnx and onnxruntime, but no TensorFlow, TFDS or tensorboardX),
carry the MNIST files and the missing small wheels in ignored folders of the
repository, e.g.:

  mkdir -p .device-data && cp -r ../shared/data/mnist .device-data/
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
      --platform manylinux_2_17_x86_64 -d .whl tensorboardX zstandard importlib_resources
  python3 benchmarks/device_check.py OUT --data .device-data          # on the machine
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import pathlib
import platform
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = ("keras_mnist", "vgg_cifar", "resnet_cifar", "resnet50")
# what `import jaxcnn` and fit() need beyond JAX itself (TF/TFDS only for TFDS datasets)
NEEDED = (
    "jax",
    "flax",
    "optax",
    "orbax.checkpoint",
    "numpy",
    "tensorboardX",
    "zstandard",
    "importlib_resources",
    "sklearn",
    "PIL",
)
TEST_FILES = (
    "tests/test_kernels_models.py",
    "tests/test_precision.py",
    "tests/test_memory.py",
    "tests/test_export.py",
)
DRY_TESTS = (
    "tests/test_precision.py::test_per_layer_precision_keeps_conv_0_and_the_head_in_float32",
)
# tests of TEST_FILES that need TFDS (TensorFlow), deselected where it is not installed
NEED_TFDS = (
    "across_precisions",
    "cli_exports",
    "default_output",
    "cli_errors",
    "function_errors",
    "readme",
)
USUAL_ACCURACY = 0.98  # keras_mnist after one epoch of MNIST (Adam 1e-3, batch 128)


def _run(cmd, env, timeout, cwd=REPO) -> dict:
    """Runs a command; its status, seconds and the tail of its output."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        status, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status = "timeout"
        out = (e.stdout or b"").decode(errors="replace") if e.stdout else ""
    return {
        "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "output_tail": out[-6000:],
    }


# --------------------------------------------------------------------------- sections
def install(python: str, env: dict, wheels: pathlib.Path, dry_run: bool) -> dict:
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {list(NEEDED)!r} "
        "if importlib.util.find_spec(m.split('.')[0]) is None]))"
    )
    missing = json.loads(
        subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    record = {"missing_before": missing, "wheels": None, "registry": None}
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if dry_run or not (missing or found):
        record["note"] = "dry run: nothing installed" if dry_run else "nothing missing"
        return record
    if found:
        target = pathlib.Path(tempfile.gettempdir()) / "jaxcnn-site"
        cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--upgrade", "--target", str(target), *map(str, found)]
        record["wheels"] = _run(cmd, env, 300)
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(target)])
    else:  # may fail without a network; what is installed then has to do
        cmd = [python, "-m", "pip", "install", "-q", *missing_distributions(missing)]
        record["registry"] = _run(cmd, env, 300)
    record["missing_after"] = json.loads(
        subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    return record


def missing_distributions(modules) -> list[str]:
    names = {"sklearn": "scikit-learn", "PIL": "pillow", "orbax": "orbax-checkpoint"}
    return [names.get(m.split(".")[0], m.split(".")[0]) for m in modules]


DEVICES = r"""
import importlib, json, shutil, subprocess
import jax
from jaxcnn import footprint, models, shapes
from jaxcnn.kernels import plan as plan_lib

def version(name):
    try:
        return getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:
        return f"not importable ({type(e).__name__})"

devices = jax.devices()
memory = []
for d in devices:
    try:
        memory.append((d.memory_stats() or {}).get("bytes_limit"))
    except Exception:
        memory.append(None)
backend = jax.default_backend()
KEYS = ("name", "conv", "pool", "crop", "fuse_relu_pool", "dtype", "product_dtype")
presets = {}
for name in models.PRESETS:
    spec = models.preset(name)
    summary = shapes.summarize(spec)
    est = footprint.memory_estimate(summary, 128)
    plans = {}
    for precision in ("float32", "bfloat16"):
        choice = plan_lib.KernelChoice(precision=precision)
        plan = plan_lib.model_plan(spec, spec.input_shape, choice, backend)
        plans[precision] = [
            {k: str(getattr(p, k)) for k in KEYS if getattr(p, k) is not None}
            for p in plan.walk()
        ]
    presets[name] = {
        "kernel_plan": plans,
        "train_memory_estimate_batch128_bytes": est,
        "device_bytes_limit": memory[0],
    }
smi = None
if shutil.which("nvidia-smi"):
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
import sys, torch_probe  # noqa
open(sys.argv[1], "w").write(json.dumps({
    "backend": backend,
    "devices": [str(d) for d in devices],
    "device_kinds": [d.device_kind for d in devices],
    "bytes_limit": memory,
    "versions": {n: version(n) for n in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint",
                                         "numpy", "torch", "onnxruntime", "onnx")},
    "torch": torch_probe.probe(),
    "nvidia_smi": smi,
    "presets": presets,
}))
"""

TORCH_PROBE = """
def probe():
    try:
        import torch
    except Exception as e:
        return {"available": False, "why": f"{type(e).__name__}: {e}"}
    cuda = torch.cuda.is_available()
    return {"available": True, "version": torch.__version__, "cuda": cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}
"""


def devices(python: str, env: dict, scratch: pathlib.Path) -> dict:
    (scratch / "torch_probe.py").write_text(TORCH_PROBE)
    probe_env = dict(env, PYTHONPATH=os.pathsep.join([env["PYTHONPATH"], str(scratch)]))
    report_file = scratch / "devices.json"
    result = _run([python, "-c", DEVICES, str(report_file)], probe_env, 300)
    if report_file.is_file():
        result["report"] = json.loads(report_file.read_text())
    return result


def tests(python: str, env: dict, dry_run: bool, data: pathlib.Path | None) -> dict:
    targets = list(DRY_TESTS if dry_run else TEST_FILES)
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
    probe = (
        "import importlib.util as u; print(bool(u.find_spec('tensorflow_datasets')))"
    )
    has_tfds = subprocess.run(
        [python, "-c", probe], env=env, capture_output=True, text=True
    ).stdout.strip()
    deselected = None
    if has_tfds != "True":  # these train on the embedded digits set, through TFDS
        deselected = " and ".join(f"not {name}" for name in NEED_TFDS)
        cmd += ["-k", deselected]
    test_env = dict(env)
    if data is not None:
        test_env["JAXCNN_SHARED_DATA"] = str(data)
    result = _run(cmd, test_env, 180)
    result["deselected_without_tfds"] = deselected
    return result


TRAIN = r"""
import json, pathlib, sys
import numpy as np
import jax
from flax import nnx
import jaxcnn
from jaxcnn import data
from jaxcnn.spec import RunConfig

sys.path.insert(0, sys.argv[4])
import device_check

train_x, train_y, test_x, test_y = device_check.read_mnist(sys.argv[1], int(sys.argv[3]))
n_val = len(train_y) // 12
dataset = data.Dataset(
    name="mnist", train=data.Split(train_x[n_val:], train_y[n_val:]),
    val=data.Split(train_x[:n_val], train_y[:n_val]), test=data.Split(test_x, test_y),
    num_classes=10, class_names=tuple(map(str, range(10))), image_shape=(28, 28, 1),
    mean=None, std=None, notes=(),
)
def config(epochs):
    return RunConfig().with_overrides({
        "model.name": "keras_mnist", "data.dataset": "mnist", "train.epochs": epochs,
        "train.batch_size": 128, "optim.optimizer": "adam", "optim.lr": 1e-3,
    })
out = sys.argv[2]
one = jaxcnn.fit(config(1), out + "/resumed", quiet=True, dataset=dataset)
full = jaxcnn.fit(config(2), out + "/two_epochs", quiet=True, dataset=dataset)
resumed = jaxcnn.fit(config(2), out + "/resumed", quiet=True, dataset=dataset)
a = nnx.to_flat_state(nnx.state(full.model, nnx.Param))
b = dict(nnx.to_flat_state(nnx.state(resumed.model, nnx.Param)))
differ = [
    "/".join(map(str, path)) for path, leaf in a
    if not np.array_equal(np.asarray(leaf.get_value()), np.asarray(b[path].get_value()))
]
pathlib.Path(sys.argv[5]).write_text(json.dumps({
    "backend": jax.default_backend(), "devices": len(jax.devices()),
    "train_examples": len(train_y) - n_val,
    "one_epoch": {k: one.summary[k] for k in (
        "test_accuracy", "images_per_second", "compile_seconds", "train_seconds",
        "num_devices", "backend")},
    "resume_exact": not differ, "resume_differing_parameters": differ,
    "two_epochs_test_accuracy": full.summary["test_accuracy"],
    "resumed_test_accuracy": resumed.summary["test_accuracy"],
}))
"""


def read_mnist(folder: str, limit: int = 0):
    """(train images, train labels, test images, test labels) from the raw idx files:
    [n, 28, 28, 1] float32 in [0, 1] and int32; `limit` > 0 keeps the first `limit`
    training and limit // 4 test examples."""

    def images(name):
        with gzip.open(pathlib.Path(folder) / "mnist" / name) as f:
            _, n, rows, cols = struct.unpack(">4i", f.read(16))
            pixels = np.frombuffer(f.read(), np.uint8).reshape(n, rows, cols, 1)
        return pixels.astype(np.float32) / 255

    def labels(name):
        with gzip.open(pathlib.Path(folder) / "mnist" / name) as f:
            f.read(8)
            return np.frombuffer(f.read(), np.uint8).astype(np.int32)

    out = (
        images("train-images-idx3-ubyte.gz"),
        labels("train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        labels("t10k-labels-idx1-ubyte.gz"),
    )
    if limit:
        out = (
            out[0][:limit],
            out[1][:limit],
            out[2][: limit // 4],
            out[3][: limit // 4],
        )
    return out


def train(python: str, env: dict, data: pathlib.Path, dry_run: bool, scratch) -> dict:
    limit = 2000 if dry_run else 0
    report_file = scratch / "train.json"
    cmd = [python, "-c", TRAIN, str(data), str(scratch / "runs"), str(limit), str(HERE)]
    result = _run([*cmd, str(report_file)], env, 300)
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    result["report"] = report
    if report:
        accuracy = report["one_epoch"]["test_accuracy"]
        result["accuracy_ok"] = None if dry_run else accuracy >= USUAL_ACCURACY
        result["usual_accuracy"] = USUAL_ACCURACY
    return result


def peak(python: str, env: dict, backend: str, dry_run: bool) -> dict:
    import step_bench

    n = 256 if dry_run else (8192 if backend == "gpu" else 2048)
    try:
        return {"status": 0, "report": step_bench.measure_peak(python, n, env)}
    except RuntimeError as e:
        return {"status": 1, "output_tail": str(e)}


def steps(
    python, env, backend, torch_info, dry_run, peak_report, models, deadline
) -> dict:
    import step_bench

    k = 1 if backend != "cpu" else 4
    table = {
        "jaxcnn_fp32": ("bench_jax.py", f"kernels=auto,k={k}"),
        "jaxcnn_bf16": ("bench_jax.py", f"kernels=auto,k={k},precision=bfloat16"),
    }
    if torch_info.get("available"):
        table |= {
            name: step_bench.FRAMEWORKS[name]
            for name in (
                "torch_cl",
                "torch_cl_bf16",
                "torch_cl_compile",
                "torch_cl_bf16_compile",
            )
        }
    rounds, window = (2, 0.2) if dry_run else (4, 1.0)
    bench_env = dict(env, PYTHONPATH=os.pathsep.join([str(HERE), env["PYTHONPATH"]]))
    out = {
        "torch": torch_info
        if torch_info.get("available")
        else "not installed: PyTorch rows skipped",
        "rounds": rounds,
        "window_s": window,
        "models": {},
    }
    for model in models:
        t0 = time.perf_counter()
        if t0 > deadline:
            out["models"][model] = {"status": "skipped: past the --budget"}
            continue
        try:
            res = step_bench.bench_model(
                python,
                model,
                list(table),
                table,
                rounds,
                window,
                bench_env,
                start_together=True,
            )
        except RuntimeError as e:
            out["models"][model] = {"error": str(e)}
            continue
        flops = step_bench.train_flops_per_image(model)
        out["models"][model] = {
            "train_mflops_per_image": flops / 1e6,
            "frameworks": step_bench.summarize(res, flops, peak_report)
            if peak_report
            else res,
            "paired": step_bench.paired_ratios(res),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=pathlib.Path, help="folder for device_check.json")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny windows")
    p.add_argument(
        "--data",
        type=pathlib.Path,
        default=None,
        help="folder holding mnist/ raw files (default: $JAXCNN_SHARED_DATA, "
        "../shared/data, .device-data)",
    )
    p.add_argument("--wheels", type=pathlib.Path, default=REPO / ".whl")
    p.add_argument("--python", default=sys.executable)
    p.add_argument(
        "--skip", default="", help="comma-separated sections to skip (e.g. steps)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=450.0,
        help="seconds after which no further model's steps are timed (default 450)",
    )
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help="presets whose train step is timed (default: %(default)s)",
    )
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or next(
        (
            d
            for d in (
                pathlib.Path(os.environ.get("JAXCNN_SHARED_DATA", "/nonexistent")),
                REPO.parent / "shared" / "data",
                REPO / ".device-data",
            )
            if (d / "mnist" / "train-images-idx3-ubyte.gz").is_file()
        ),
        None,
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "host": platform.node(),
        "python": f"{args.python} ({platform.python_version()} here)",
        "cpu": _cpu_model(),
        "data": str(data) if data else None,
        "sections": {},
    }
    sections = report["sections"]

    def save() -> None:
        report["total_seconds"] = round(time.perf_counter() - t_start, 1)
        text = json.dumps(report, indent=1, default=str)
        (args.out / "device_check.json").write_text(text)

    def section(name, fn, *fn_args):
        if name in skip:
            sections[name] = {"status": "skipped (--skip)"}
            return sections[name]
        print(f"== {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            sections[name] = fn(*fn_args)
        except Exception as e:  # recorded; the next section still runs
            sections[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        sections[name].setdefault("seconds", round(time.perf_counter() - t0, 1))
        print(f"   {name}: {_brief(name, sections[name])}", flush=True)
        save()
        return sections[name]

    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = pathlib.Path(scratch_dir)
        section("install", install, args.python, env, args.wheels, args.dry_run)
        dev = section("devices", devices, args.python, env, scratch)
        info = dev.get("report") or {}
        backend = info.get("backend", "cpu")
        section("tests", tests, args.python, env, args.dry_run, data)
        if data is None:
            sections["train"] = {"status": "skipped: no mnist/ raw files (--data)"}
        else:
            section("train", train, args.python, env, data, args.dry_run, scratch)
        pk = section("peak", peak, args.python, env, backend, args.dry_run)
        torch_info = info.get("torch") or {}
        section(
            "steps",
            steps,
            args.python,
            env,
            backend,
            torch_info,
            args.dry_run,
            pk.get("report"),
            args.models.split(","),
            t_start + args.budget,
        )
    save()
    print(f"wrote {args.out / 'device_check.json'} in {report['total_seconds']} s")
    return 0


def _brief(name: str, record: dict) -> str:
    if name == "devices" and record.get("report"):
        r = record["report"]
        return f"{r['backend']}: {', '.join(r['devices'])}; jax {r['versions']['jax']}"
    if name == "train" and record.get("report"):
        r = record["report"]
        return (
            f"test accuracy {r['one_epoch']['test_accuracy']:.4f} after one epoch, "
            f"resume exact: {r['resume_exact']}"
        )
    if name == "steps":
        rows = []
        for model, res in record.get("models", {}).items():
            for fw, r in res.get("frameworks", {}).items():
                s = r.get("summary")
                rows.append(
                    f"{model}/{fw} "
                    + (f"{s['images_per_s_median']:,.0f} img/s" if s else "failed")
                )
        return "; ".join(rows)
    if name == "peak" and record.get("report"):
        return json.dumps(record["report"])
    return f"status {record.get('status')} ({record.get('seconds')} s)"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
