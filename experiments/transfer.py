"""Transfer learning: MNIST features for Fashion-MNIST, frozen base vs fine-tuned vs scratch.

python -m experiments.transfer --workdir runs/sweeps/transfer   (~4-5 min on 2 CPU cores)
python -m experiments.transfer --smoke                          seconds (digits -> digits)

1. Pre-train keras_mnist (Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10) on the first
   10,000 MNIST training images for 3 epochs (WORKDIR/pretrain, one seed).
2. A sweep (WORKDIR/trials/...) trains keras_mnist on Fashion-MNIST with 250, 1,000 and
   4,000 training images (30, 12 and 6 epochs: 210-750 Adam steps of batch 32) in three
   ways, each with 6 seeds (train.seed 0-5: the new head's initialisation, the
   scratch arm's whole initialisation and the data order; the pre-trained base is the
   same for every seed):
   - frozen:    start from the MNIST run's best checkpoint, convolutional base frozen
                (`--freeze conv`), fresh classifier head (`--new-head`); only the two
                dense layers (37,578 of 93,322 parameters) train;
   - finetune:  start from the MNIST run, fresh head, every layer trains;
   - scratch:   random initialisation, every layer trains.
   Validation: the last 1,000 Fashion-MNIST training images; test accuracy: the full
   10,000-image test set, for each run's best-validation checkpoint.
The comparison table (mean ± 95 % interval over the seeds, and which variants are tied
with the best at each size) goes to WORKDIR/transfer.md and is printed.

Expect the frozen MNIST base (it never saw clothes) behind fine-tuning and training from
scratch at every size. Measured results with 6 seeds: experiments/results/transfer/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

from jaxcnn import RunConfig
from jaxcnn.sweep import report

from . import _common

SETTINGS = {"name": "transfer", "seeds": 6}
# train images -> epochs (fewer images: more epochs, so every run takes 200+ steps)
EPOCHS = {250: 30, 1000: 12, 4000: 6}
SMOKE_SIZES = (100, 300)
VARIANTS = ("frozen", "finetune", "scratch")
# main() pre-trains first and points the sweep at that run through this variable
PRETRAINED_ENV = "JAXCNN_TRANSFER_PRETRAINED"


def pretrain_config(smoke: bool = False) -> RunConfig:
    """keras_mnist on the first 10,000 MNIST images (smoke: digits_cnn on digits)."""
    if smoke:
        model, data = (
            {"name": "digits_cnn"},
            {"dataset": "digits", "train_examples": 600},
        )
    else:
        model = {"name": "keras_mnist"}
        data = {
            "dataset": "mnist",
            "data_dir": _common.DATA_DIR,
            "train_examples": 10000,
            "val_split": "train[59000:]",
        }
    return RunConfig.from_dict(
        {
            "model": model,
            "data": data,
            "optim": {"optimizer": "adam", "lr": 1e-3},
            "train": {
                "epochs": 1 if smoke else 3,
                "batch_size": 32,
                "keep_checkpoints": 1,
            },
        }
    )


def base(smoke: bool = False) -> RunConfig:
    """The target task: Fashion-MNIST (smoke: digits again), same model and optimiser."""
    return pretrain_config(smoke).with_overrides(
        {"data.dataset": "digits" if smoke else "fashion_mnist", "train.epochs": 1}
    )


def variant(name: str, pretrained: str | None) -> dict:
    """The overrides of one way to start: frozen, finetune or scratch."""
    if name == "frozen":
        return {
            "train.init_from": pretrained,
            "train.freeze": ["conv"],
            "train.new_head": True,
        }
    if name == "finetune":
        return {
            "train.init_from": pretrained,
            "train.freeze": [],
            "train.new_head": True,
        }
    if name == "scratch":
        return {"train.init_from": None, "train.freeze": [], "train.new_head": False}
    raise ValueError(f"unknown variant {name!r}; use one of {VARIANTS}")


def sweep(smoke: bool = False) -> list[dict]:
    pretrained = os.environ.get(PRETRAINED_ENV, "runs/sweeps/transfer/pretrain")
    sizes = {n: 1 for n in SMOKE_SIZES} if smoke else EPOCHS
    return [
        {"data.train_examples": n, "train.epochs": epochs, **variant(v, pretrained)}
        for n, epochs in sizes.items()
        for v in VARIANTS
    ]


def _variant_of(row: dict) -> str:
    if not row.get("train.init_from"):
        return "scratch"
    return "frozen" if row.get("train.freeze") else "finetune"


def _trainable(config: RunConfig, num_classes: int) -> int:
    from jaxcnn import models, train, transfer

    spec = train.resolve_spec(config, num_classes)
    model = models.build_model(spec)
    frozen = set(transfer.frozen_paths(model, spec, config.train.freeze))
    total = 0
    for path, shape in models.param_paths(model).items():
        if path not in frozen:
            count = 1
            for d in shape:
                count *= d
            total += count
    return total


def _accuracy(row: dict) -> str:
    """Mean test accuracy, ± its 95 % half width over seeds when there is one."""
    if row.get("test_accuracy") is None:
        return "-"
    mean, half = report.interval(row)
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def _ties(rows: list[dict]) -> dict[int, str]:
    """id(row) -> 'best', 'yes' (95 % interval overlaps the best's at its size), 'no'
    or '?' (no interval), for the ok rows."""
    out = {}
    for size in {r["data.train_examples"] for r in rows}:
        ok = [
            r
            for r in rows
            if r["data.train_examples"] == size
            and r["status"] == "ok"
            and r.get("test_accuracy") is not None
        ]
        ok.sort(key=lambda r: -report.interval(r)[0])
        for i, r in enumerate(ok):
            tie = report.tied(report.interval(r), report.interval(ok[0]))
            out[id(r)] = "best" if i == 0 else {True: "yes", False: "no"}.get(tie, "?")
    return out


def table(pre: dict, rows: list[dict], smoke: bool) -> str:
    """The comparison as a Markdown table (rows: sweep result rows)."""
    import json

    order = {v: i for i, v in enumerate(VARIANTS)}
    rows = sorted(rows, key=lambda r: (r["data.train_examples"], order[_variant_of(r)]))
    ties = _ties(rows)
    target = "digits" if smoke else "fashion_mnist"
    lines = [
        f"# Transfer learning: {pre['dataset']} -> {target} ({pre['model']})",
        "",
        f"Pre-training: {pre['dataset']}, {pre['train_examples']:,} training images, "
        f"{pre['epochs']} epochs: test accuracy {pre['test_accuracy']:.4f}.",
        "",
        "Test accuracy: mean over n seeds ± the half width of its 95 % interval "
        "(Student t). *tied with best*: the interval overlaps the interval of the best "
        "variant at that size, so these seeds cannot tell the two apart.",
        "",
        "| train images | epochs | variant | trainable params | test accuracy | n "
        "| tied with best | best val accuracy | train s | status |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---|",
    ]
    base_config = base(smoke)
    for r in rows:
        overrides = {k: r[k] for k in r if k.startswith(("data.", "train."))}
        overrides = {
            k: json.loads(v) if isinstance(v, str) and v.startswith("[") else v
            for k, v in overrides.items()
        }
        trainable = _trainable(base_config.with_overrides(overrides), 10)
        val = r.get("best_val_accuracy")
        secs = r.get("train_seconds")
        lines.append(
            f"| {r['data.train_examples']:,} | {r['train.epochs']} | {_variant_of(r)} | "
            f"{trainable:,} | {_accuracy(r)} | {r.get('seeds', 1)} | "
            f"{ties.get(id(r), '')} | "
            f"{val if val is None else f'{val:.4f}'} | "
            f"{secs if secs is None else f'{secs:.1f}'} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="digits -> digits, seconds"
    )
    parser.add_argument("--workdir", help="default runs/sweeps/transfer[-smoke]")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    from jaxcnn import cputune, train
    from jaxcnn import sweep as sweep_lib

    cputune.apply()  # this script owns its process: the jaxcnn command's settings
    _common.prepare(["digits"] if args.smoke else ["mnist", "fashion_mnist"])
    workdir = pathlib.Path(
        args.workdir or f"runs/sweeps/transfer{'-smoke' if args.smoke else ''}"
    )
    pre = train.fit(pretrain_config(args.smoke), workdir / "pretrain", quiet=args.quiet)
    os.environ[PRETRAINED_ENV] = str((workdir / "pretrain").resolve())
    rows = sweep_lib.run_sweep(__file__, workdir, smoke=args.smoke, quiet=args.quiet)
    config = pretrain_config(args.smoke)
    summary = {
        **pre.summary,
        "train_examples": config.data.train_examples,
        "dataset": config.data.dataset,
    }
    text = table(summary, rows, args.smoke)
    (workdir / "transfer.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
