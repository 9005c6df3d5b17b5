"""Accuracy of bfloat16 mixed precision against float32, on real data, over seeds.

  python benchmarks/precision_parity.py [--workdir DIR] [--seeds N]
      # writes results/precision_parity.{json,md}; ~15-25 min on 2 CPU cores

`jaxcnn train --model keras_mnist` (Adam 1e-3, batch 128) for 5 epochs on MNIST and 8 on
Fashion-MNIST, seeds 0..N-1, with `train.precision` float32 and bfloat16: the same seed
gives both precisions the same initialisation and data order, so the per-seed difference
is paired. Reported per dataset: test accuracy (each run's best-validation checkpoint)
mean ± 95 % interval per precision, the paired bf16 - fp32 difference with its interval,
and whether any epoch's training or validation loss was non-finite. Runs go to
DIR/<dataset>-<precision>-s<seed> (default ~/.cache/jaxcnn/precision_parity); a run that
finished is read, not rerun, and an interrupted one resumes.

Data: the TFDS builds in JAXCNN_DATA_DIR (default ~/.cache/jaxcnn/tfds), made offline
from the raw files in ../shared/data when missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import machine_info  # noqa: E402

from jaxcnn import data, metrics, rundir  # noqa: E402
from jaxcnn.data.catalog import shared_data_dir  # noqa: E402

EPOCHS = {"mnist": 5, "fashion_mnist": 8}
PRECISIONS = ("float32", "bfloat16")
DATA_DIR = os.environ.get(
    "JAXCNN_DATA_DIR", str(pathlib.Path.home() / ".cache" / "jaxcnn" / "tfds")
)
SHARED = shared_data_dir()


def run(workdir: pathlib.Path, dataset: str, precision: str, seed: int) -> dict:
    """Trains (or resumes, or reads) one run; its test accuracy and loss health."""
    summary = workdir / "summary.json"
    if not summary.exists():
        subprocess.run(
            [sys.executable, "-m", "jaxcnn", "train", "--model", "keras_mnist",
             "--dataset", dataset, "--data-dir", DATA_DIR,
             "--epochs", str(EPOCHS[dataset]), "--batch-size", "128",
             "--seed", str(seed), "--set", f"train.precision={precision}",
             "--workdir", str(workdir), "--quiet"],
            check=True,
        )  # fmt: skip
    records = rundir.read_metrics(workdir)
    losses = [r[k] for r in records for k in ("train_loss", "val_loss") if k in r]
    result = json.loads(summary.read_text())
    return {
        "dataset": dataset,
        "precision": precision,
        "seed": seed,
        "test_accuracy": result["test_accuracy"],
        "epochs": len(records),
        "finite_losses": all(math.isfinite(v) for v in losses),
        "images_per_second": result["images_per_second"],
    }


def table(rows: list[dict], seeds: int) -> list[str]:
    lines = [
        "| dataset | epochs | seed | float32 | bfloat16 | bf16 - fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dataset in EPOCHS:
        acc = {
            p: [r["test_accuracy"] for r in rows if (r["dataset"], r["precision"]) == (dataset, p)]
            for p in PRECISIONS
        }  # fmt: skip
        diffs = [b - f for f, b in zip(acc["float32"], acc["bfloat16"], strict=True)]
        for s in range(seeds):
            lines.append(
                f"| {dataset} | {EPOCHS[dataset]} | {s} | {acc['float32'][s]:.4f} | "
                f"{acc['bfloat16'][s]:.4f} | {diffs[s]:+.4f} |"
            )
        cells = []
        for values in (acc["float32"], acc["bfloat16"], diffs):
            mean, _, half = metrics.mean_confidence_interval(values)
            sign = "+" if values is diffs else ""
            cells.append(f"{mean:{sign}.4f} ± {half:.4f}")
        lines.append(f"| {dataset} | | mean ± 95 % | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        default=str(pathlib.Path.home() / ".cache" / "jaxcnn" / "precision_parity"),
    )
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for dataset in EPOCHS:
        manual = SHARED / dataset
        data.prepare_dataset(
            dataset,
            data_dir=DATA_DIR,
            manual_dir=str(manual) if manual.is_dir() else None,
        )
    rows = []
    for dataset in EPOCHS:
        for seed in range(args.seeds):
            for precision in PRECISIONS:
                workdir = pathlib.Path(args.workdir) / f"{dataset}-{precision}-s{seed}"
                rows.append(run(workdir, dataset, precision, seed))
                print(json.dumps(rows[-1]), flush=True)
    commit = machine_info.git_commit()
    report = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "cpu": machine_info.cpu(),
        "rows": rows,
    }
    out = HERE / "results"
    (out / "precision_parity.json").write_text(json.dumps(report, indent=1))
    finite = all(r["finite_losses"] for r in rows)
    md = [
        "# bfloat16 vs float32 accuracy, keras_mnist on real data",
        "",
        f"{report['date']}, commit {commit}, {report['cpu']}, "
        "`python benchmarks/precision_parity.py`. Adam 1e-3, batch 128; test accuracy "
        "of each run's best-validation checkpoint (full test split); the same seed "
        "gives both precisions the same initialisation and data order. Every epoch's "
        f"training and validation loss finite: {'yes' if finite else 'NO'}.",
        "",
        *table(rows, args.seeds),
    ]
    (out / "precision_parity.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
