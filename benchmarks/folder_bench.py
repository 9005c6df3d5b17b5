"""keras_mnist on a folder of PNG files vs the TFDS version of the same MNIST images.

Builds a folder of the 60,000 MNIST training images as PNG files (one sub-folder per
digit) from the raw files in ../shared/data, under --cache-dir (outside the repo, kept
between runs), and the TFDS mnist dataset there too. Then trains keras_mnist in one
subprocess per case and reports, per case: the time to load the data (decoding and the
folder's cache included), training images/s (median over epochs, `summary.json`), test
accuracy and the peak RSS of the process:

  tfds             TFDS mnist, resident
  folder_first     the folder, decoded into an empty cache (first use)
  folder           the folder again, read from its cache
  folder_stream    the folder streamed from its cache (data.device_limit_mb=1)
  tfds_stream      TFDS mnist streamed through tf.data (data.device_limit_mb=1)

The target: the folder trains at >= 90% of the TFDS images/s.

  python benchmarks/folder_bench.py                  # writes results/folder.json, .md
  python benchmarks/folder_bench.py --epochs 1 --name folder_quick
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time

import machine_info  # benchmarks/machine_info.py, beside this script

from jaxcnn.data.catalog import shared_data_dir

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = shared_data_dir()
CASES = ("tfds", "folder_first", "folder", "folder_stream", "tfds_stream")


def read_idx(path: pathlib.Path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_folder(root: pathlib.Path, count: int) -> float:
    """root/<digit>/<i>.png for the first `count` MNIST training images; seconds taken
    (0: kept from an earlier run)."""
    done = root / ".complete"
    if done.is_file():
        return 0.0
    from PIL import Image

    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    images = read_idx(SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz")
    labels = read_idx(SHARED_DATA / "mnist" / "train-labels-idx1-ubyte.gz")
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images[:count], labels, strict=False)):
        Image.fromarray(image).save(root / str(label) / f"{i:05d}.png")
    done.write_text("")
    return time.perf_counter() - t0


def child(case: str, args) -> dict:
    """One training run in this process; returns its measurements."""
    from jaxcnn import cputune, data, train
    from jaxcnn.spec import RunConfig

    cputune.apply()  # the jaxcnn command's process settings

    cache = pathlib.Path(args.cache_dir)
    fields = {
        "model.name": "keras_mnist",
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.keep_checkpoints": 1,
    }
    if case.startswith("tfds"):
        fields.update({"data.dataset": "mnist", "data.data_dir": str(cache / "tfds")})
    else:
        fields.update(
            {
                "data.dataset": str(cache / f"mnist_png{args.images}"),
                "data.data_dir": str(cache / "decoded"),
            }
        )
    if case.endswith("stream"):
        fields["data.device_limit_mb"] = 1
    config = RunConfig().with_overrides(fields)
    t0 = time.perf_counter()
    ds = data.load_dataset(config.data, input_shape=(28, 28, 1))
    load_seconds = time.perf_counter() - t0
    workdir = cache / "runs" / case
    result = train.fit(config, workdir, restart=True, quiet=True, dataset=ds)
    return {
        "load_seconds": load_seconds,
        "images_per_second": result.images_per_second,
        "test_accuracy": result.test_accuracy,
        "train_examples": ds.train.num_examples,
        "streamed": not isinstance(ds.train, data.Split),
    }


def run_case(case: str, args) -> dict:
    """Runs `case` in a subprocess; adds its peak RSS (MiB)."""
    if case == "folder_first":
        shutil.rmtree(pathlib.Path(args.cache_dir) / "decoded", ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", case, *sys.argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"case {case} failed (status {status})")
    record = json.loads(out.strip().splitlines()[-1])
    record["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return record


def write_results(records: dict, build_seconds: float, args) -> None:
    base = records.get("tfds", next(iter(records.values())))["images_per_second"]
    lines = [
        f"# keras_mnist: a folder of {args.images:,} MNIST PNG files vs TFDS mnist",
        "",
        f"batch {args.batch_size}, {args.epochs} epochs; writing the PNG files took "
        f"{build_seconds:.0f} s (0: kept from an earlier run)",
        "",
        "| case | load s | images/s | vs tfds | test acc | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in records.items():
        lines.append(
            f"| {case} | {r['load_seconds']:.1f} | {r['images_per_second']:.0f} | "
            f"{r['images_per_second'] / base:.0%} | {r['test_accuracy']:.4f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    machine_info.write_result(args.name, records, lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cache-dir",
        default=str(pathlib.Path.home() / ".cache" / "jaxcnn-bench" / "folder"),
        help="where the PNG folder, TFDS data, decoded cache and runs go",
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--images", type=int, default=60000, help="MNIST training images in the folder"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--name", default="folder", help="results/<name>.json, .md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    cache = pathlib.Path(args.cache_dir)
    build_seconds = build_folder(cache / f"mnist_png{args.images}", args.images)
    from jaxcnn import data

    data.prepare_dataset(
        "mnist", data_dir=str(cache / "tfds"), manual_dir=str(SHARED_DATA / "mnist")
    )
    records = {case: run_case(case, args) for case in args.cases.split(",")}
    write_results(records, build_seconds, args)


if __name__ == "__main__":
    main()
