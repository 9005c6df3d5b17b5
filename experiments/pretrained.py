"""Fine-tuning an imported network on a folder of images: frozen base + new head vs scratch.

python -m experiments.pretrained --workdir runs/sweeps/pretrained  (25 min on 2 CPU cores, shared)
python -m experiments.pretrained --smoke        4-8 min (200 images, 1 epoch, 5 seeds)
python -m experiments.pretrained --images DIR --weights resnet18-f37072fd.pth

The common way to transfer ("Method 2"): take a network pre-trained elsewhere, freeze its
convolutional base, put a new classifier head on it and train that head on your own
images. Here, end to end:

1. The user's images: a folder with one sub-folder per class (`--images`; default: one
   built from the raw MNIST training files in ../shared/data, 100 digits per class, or 20
   for --smoke, written as PNG files to WORKDIR/images).
2. The imported network: torchvision's resnet18 state dict (`--weights FILE.pth`, e.g.
   the published ImageNet file), imported with `jaxcnn.interop.import_weights` at a
   32x32x3 input (WORKDIR/imported). No published weights can be downloaded on the
   machines these results come from, so by default the file is made by
   `torchvision.models.resnet18(weights=None)`: random weights, saved as .pth and
   imported exactly as a published file would be. A random base has learned nothing,
   so it is then pre-trained by jaxcnn itself on a related task: Fashion-MNIST (a folder
   of 500 training images per class, 200 for --smoke, from the raw files; 3 epochs, 1
   for --smoke; every layer trains, new 10-class head) in WORKDIR/pretrain. That run
   keeps the import's input normalisation (ImageNet mean/std, RGB), which every run
   started from it inherits (train.init_from). With `--weights` the pre-training is
   skipped and the imported network itself is the base.
3. A sweep (WORKDIR/trials/...), each arm with 5 seeds (train.seed 0-4: the head's or
   network's initialisation and the data order):
   - frozen:  resnet18 from the base, every convolution, projection and batch norm
              frozen (`--freeze 'conv|norm|proj'`), fresh head (`--new-head`): 5,130
              of 11.2 M parameters train;
   - scratch: the same resnet18 (32x32x3), random initialisation, every layer trains;
   - small:   keras_mnist (Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10, 93,322
              parameters) at the folder's 28x28x1, from scratch.
   Adam 1e-3, batch 32, 10 epochs (1 for --smoke). The folder's own validation and test
   splits (10 % each, carved per class) pick the checkpoint and measure it.
The comparison (mean test accuracy ± 95 % interval over the seeds, and which arms are
tied with the best) goes to WORKDIR/pretrained.md and is printed.

Expect what was measured (experiments/results/pretrained/README.md, 5 seeds, 800 digits): small
0.926 ± 0.019, scratch 0.784 ± 0.027, frozen 0.718 ± 0.047. A base pre-trained on clothes
is a weak feature extractor for digits, as in experiments/transfer.py (a frozen MNIST
base trailed training from scratch on Fashion-MNIST by 3-4 points), and the small
network, made for 28x28 digits, is best with 80 training images per class. What this
cannot show: how much published ImageNet weights would help, since none are reachable
here (with them, run with --weights).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import pathlib
import struct
import sys

from jaxcnn import RunConfig
from jaxcnn.sweep import report

from . import _common

SETTINGS = {"name": "pretrained", "seeds": 5}
ARCH = "resnet18"
INPUT = [32, 32, 3]
ARMS = ("frozen", "scratch", "small")
FREEZE = ["conv|norm|proj"]  # every parameter of resnet18 but the head (dense_13)
# main() builds / imports / pre-trains first and points the sweep at them through these
IMAGES_ENV = "JAXCNN_PRETRAINED_IMAGES"
BASE_ENV = "JAXCNN_PRETRAINED_BASE"
DEFAULT_WORKDIR = "runs/sweeps/pretrained"


def _budget(smoke: bool) -> dict:
    if smoke:
        return {"per_class": 20, "pretrain_per_class": 20, "pretrain_epochs": 1}
    return {"per_class": 100, "pretrain_per_class": 500, "pretrain_epochs": 3}


def _images(smoke: bool) -> str:
    default = f"./{DEFAULT_WORKDIR}{'-smoke' if smoke else ''}/images"
    return os.environ.get(IMAGES_ENV, default)


def base(smoke: bool = False) -> RunConfig:
    """resnet18 at 32x32x3 on the folder of images, Adam, batch 32."""
    return RunConfig.from_dict(
        {
            "model": {"name": ARCH, "args": {"input_shape": INPUT}},
            "data": {"dataset": _images(smoke)},
            "optim": {"optimizer": "adam", "lr": 1e-3},
            "train": {
                "epochs": 1 if smoke else 10,
                "batch_size": 32,
                "keep_checkpoints": 1,
            },
        }
    )


def arm(name: str, base_run: str | None) -> dict:
    """The overrides of one arm: frozen, scratch or small."""
    resnet = {"model.name": ARCH, "model.args": {"input_shape": INPUT}}
    if name == "frozen":
        return {
            **resnet,
            "train.init_from": base_run,
            "train.freeze": FREEZE,
            "train.new_head": True,
        }
    fresh = {"train.init_from": None, "train.freeze": [], "train.new_head": False}
    if name == "scratch":
        return {**resnet, **fresh}
    if name == "small":
        return {"model.name": "keras_mnist", "model.args": {}, **fresh}
    raise ValueError(f"unknown arm {name!r}; use one of {ARMS}")


def sweep(smoke: bool = False) -> list[dict]:
    default = f"./{DEFAULT_WORKDIR}{'-smoke' if smoke else ''}/pretrain"
    base_run = os.environ.get(BASE_ENV, default)
    return [arm(name, base_run) for name in ARMS]


def arm_of(row: dict) -> str:
    if row.get("train.init_from"):
        return "frozen"
    return "small" if row.get("model.name") == "keras_mnist" else "scratch"


# --------------------------------------------------------------------------- inputs
def write_folder(root: pathlib.Path, dataset: str, per_class: int) -> pathlib.Path:
    """root/<class>/<i>.png: the first `per_class` images of each class of the raw
    `dataset` ("mnist", "fashion_mnist") training files in ../shared/data."""
    from PIL import Image

    folder = _common.SHARED_DATA / dataset
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        _, n, rows, cols = struct.unpack(">4i", f.read(16))
        pixels = f.read()
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = f.read()[8:]
    counts = [0] * 10
    for i in range(n):
        label = labels[i]
        if counts[label] >= per_class:
            if min(counts) >= per_class:
                break
            continue
        counts[label] += 1
        out = root / str(label)
        out.mkdir(parents=True, exist_ok=True)
        image = pixels[i * rows * cols : (i + 1) * rows * cols]
        Image.frombytes("L", (cols, rows), image).save(out / f"{i:05d}.png")
    return root


def random_resnet18(path: pathlib.Path) -> pathlib.Path:
    """torchvision's resnet18 with its random initialisation (seed 0), saved as .pth."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def pretrain_config(images: str, smoke: bool, imported: str) -> RunConfig:
    """The imported resnet18 trained on a folder of Fashion-MNIST images."""
    return RunConfig.from_dict(
        {
            "model": {"name": ARCH, "args": {"input_shape": INPUT}},
            "data": {"dataset": images},
            "optim": {"optimizer": "adam", "lr": 1e-3},
            "train": {
                "epochs": _budget(smoke)["pretrain_epochs"],
                "batch_size": 32,
                "keep_checkpoints": 1,
                "init_from": imported,
                "new_head": True,
            },
        }
    )


# --------------------------------------------------------------------------- report
def _accuracy(row: dict) -> str:
    if row.get("test_accuracy") is None:
        return "-"
    mean, half = report.interval(row)
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def _trainable(row: dict, smoke: bool) -> int:
    from jaxcnn import models, train, transfer

    config = base(smoke).with_overrides(arm(arm_of(row), row.get("train.init_from")))
    spec = train.resolve_spec(config, 10)
    model = models.build_model(spec)
    frozen = set(transfer.frozen_paths(model, spec, config.train.freeze))
    return sum(
        math.prod(shape)
        for path, shape in models.param_paths(model).items()
        if path not in frozen
    )


def table(base_note: str, rows: list[dict], smoke: bool) -> str:
    """The comparison as a Markdown table (rows: sweep result rows)."""
    rows = sorted(rows, key=lambda r: ARMS.index(arm_of(r)))
    ok = [r for r in rows if r["status"] == "ok" and r.get("test_accuracy") is not None]
    best = max(ok, key=lambda r: report.interval(r)[0], default=None)
    lines = [
        f"# Fine-tuning an imported {ARCH} on a folder of digits",
        "",
        base_note,
        "",
        "Test accuracy: mean over n seeds ± the half width of its 95 % interval "
        "(Student t). *tied with best*: the intervals overlap.",
        "",
        "| arm | model | trainable params | test accuracy | n | tied with best "
        "| train s | status |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        if r is best:
            tie = "best"
        elif best is None or r not in ok:
            tie = ""
        else:
            tie = {True: "yes", False: "no", None: "?"}[
                report.tied(report.interval(r), report.interval(best))
            ]
        secs = r.get("train_seconds")
        lines.append(
            f"| {arm_of(r)} | {r.get('model.name')} | {_trainable(r, smoke):,} | "
            f"{_accuracy(r)} | {r.get('seeds', 1)} | {tie} | "
            f"{'-' if secs is None else f'{secs:.1f}'} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few images, 1 epoch")
    parser.add_argument("--workdir", help=f"default {DEFAULT_WORKDIR}[-smoke]")
    parser.add_argument(
        "--images", help="folder of images, one sub-folder per class (default: digits)"
    )
    parser.add_argument(
        "--weights",
        help=f"torchvision {ARCH} state dict (.pth) to import; default: random "
        f"weights pre-trained here on Fashion-MNIST",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from jaxcnn import cputune, train
    from jaxcnn import sweep as sweep_lib
    from jaxcnn.interop import importer

    cputune.apply()  # this script owns its process: the jaxcnn command's settings
    workdir = pathlib.Path(
        args.workdir or f"{DEFAULT_WORKDIR}{'-smoke' if args.smoke else ''}"
    ).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    budget = _budget(args.smoke)
    images = pathlib.Path(args.images).resolve() if args.images else None
    if images is None:
        images = workdir / "images"
        if not images.is_dir():
            write_folder(images, "mnist", budget["per_class"])
    imported = workdir / "imported"
    if not (imported / "config.json").is_file():
        weights = args.weights or random_resnet18(workdir / f"{ARCH}-random.pth")
        importer.import_weights(weights, ARCH, imported, input_shape=INPUT)
    base_run, base_note = imported, f"Base: {ARCH} imported from {args.weights}."
    if not args.weights:
        clothes = workdir / "fashion_images"
        if not clothes.is_dir():
            write_folder(clothes, "fashion_mnist", budget["pretrain_per_class"])
        config = pretrain_config(str(clothes), args.smoke, str(imported))
        base_run = workdir / "pretrain"
        pre = train.fit(config, base_run, quiet=args.quiet).summary
        base_note = (
            f"Base: torchvision {ARCH} with random weights (no published weights are "
            f"reachable here), imported, then pre-trained by jaxcnn on "
            f"{10 * budget['pretrain_per_class']:,} Fashion-MNIST images for "
            f"{config.train.epochs} epoch(s): test accuracy {pre['test_accuracy']:.4f}."
        )
    os.environ[IMAGES_ENV] = str(images)
    os.environ[BASE_ENV] = str(base_run)
    rows = sweep_lib.run_sweep(__file__, workdir, smoke=args.smoke, quiet=args.quiet)
    text = table(base_note, rows, args.smoke)
    (workdir / "pretrained.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
