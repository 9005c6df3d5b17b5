"""`jaxcnn train` itself, timed: real MNIST epochs against the step benchmark, and A/B
between two versions of jaxcnn.

  python benchmarks/train_bench.py [--rounds 3] [--ref GIT_REF] [--data-dir DIR]

Every round runs back to back, in fresh processes:
  - `jaxcnn train` of this checkout: keras_mnist on MNIST (built offline from the raw files,
    `--manual-dir`), batch 128, Adam, 2 epochs; the figure is epoch 2's `images_per_second`
    from metrics.jsonl (epoch 1 also pays for first-touch page faults);
  - the step benchmark's `jaxcnn_k4` worker (bench_jax.py: `jaxcnn.train.Steps` on a resident
    synthetic set), one window of `--window` seconds;
  - with `--ref`: `jaxcnn train` of that git ref, checked out into a temporary worktree and
    imported through PYTHONPATH, the same way.
The machine's speed drifts, so the report gives per-round paired ratios (train / step, this /
ref) and their medians, and records the CPU. Writes results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_common  # noqa: E402
import step_bench  # noqa: E402

from jaxcnn import rundir  # noqa: E402
from jaxcnn.data.catalog import shared_data_dir  # noqa: E402


def cpu_record() -> dict:
    """CPU model, family/model numbers and whether it has AVX512-BF16."""
    info: dict = {"model_name": step_bench._cpu_model()}
    try:
        text = open("/proc/cpuinfo").read().split("\n\n")[0]
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("cpu family", "model"):  # Zen 4: family 25, Zen 5: 26
            info[key.strip().replace(" ", "_")] = value.strip()
        if key.strip() == "flags":
            info["avx512_bf16"] = "avx512_bf16" in value.split()
    info["cores"] = os.cpu_count()
    return info


def train_epoch_speed(tree: pathlib.Path, args, workdir: pathlib.Path) -> float:
    """images/s of epoch 2 of `jaxcnn train` run from the source tree `tree`."""
    cmd = [
        sys.executable, "-m", "jaxcnn", "train", "--model", "keras_mnist",
        "--dataset", "mnist", "--data-dir", args.data_dir, "--manual-dir",
        args.manual_dir, "--epochs", "2", "--batch-size", "128", "--workdir",
        str(workdir), "--restart", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(cmd, env=env, check=True, cwd=tree, capture_output=True, text=True)
    return rundir.read_metrics(workdir)[-1]["images_per_second"]


def step_speed(window: float) -> float:
    """images/s of one window of the step benchmark's jaxcnn_k4 worker."""
    script, variant = step_bench.FRAMEWORKS["jaxcnn_k4"]
    env = dict(os.environ, PYTHONPATH=str(HERE))
    worker = step_bench.Worker(
        sys.executable, "jaxcnn_k4", script, "keras_mnist", variant, env
    )
    try:
        worker.recv()  # ready: compiled, one step run
        worker.ask(cmd="window", seconds=1.0)  # warm-up
        return worker.ask(cmd="window", seconds=window)["images_per_s"]
    finally:
        worker.close()


def run_rounds(args, ref_tree: pathlib.Path | None, scratch: pathlib.Path) -> list:
    rows = []
    for i in range(args.rounds):
        row = {"train": train_epoch_speed(REPO, args, scratch / "this")}
        row["step"] = step_speed(args.window)
        if ref_tree is not None:
            row["train_ref"] = train_epoch_speed(ref_tree, args, scratch / "ref")
        rows.append(row)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()))
    return rows


def report(args, rows: list) -> dict:
    def pair(a, b):
        return bench_common.paired([r[a] for r in rows], [r[b] for r in rows])

    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "ref": args.ref,
        "cpu": cpu_record(),
        "rounds": rows,
        "median_images_per_s": {
            k: statistics.median(r[k] for r in rows) for k in rows[0]
        },
        "median_ratio_train_over_step": pair("train", "step")["median"],
    }
    if args.ref:
        out["median_ratio_this_over_ref"] = pair("train", "train_ref")["median"]
    return out


def markdown(rep: dict) -> str:
    keys = list(rep["rounds"][0])
    lines = [
        f"# `jaxcnn train` vs the step benchmark{' and ' + rep['ref'] if rep['ref'] else ''}",
        "",
        f"{rep['date']}, commit {rep['commit']}, CPU {rep['cpu']}. keras_mnist, MNIST, "
        "batch 128, Adam; `train` = epoch 2 of `jaxcnn train`, `step` = step_bench "
        "jaxcnn_k4 window, `train_ref` = `jaxcnn train` at the ref. images/s.",
        "",
        "| round | "
        + " | ".join(keys)
        + " | train/step"
        + (" | this/ref |" if rep["ref"] else " |"),
        "|---" * (len(keys) + 2 + bool(rep["ref"])) + "|",
    ]
    for i, r in enumerate(rep["rounds"], 1):
        cells = [f"{r[k]:,.0f}" for k in keys] + [f"{r['train'] / r['step']:.3f}"]
        if rep["ref"]:
            cells.append(f"{r['train'] / r['train_ref']:.3f}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Median train/step: {rep['median_ratio_train_over_step']:.3f}."
        + (
            f" Median this/ref: {rep['median_ratio_this_over_ref']:.3f}."
            if rep["ref"]
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"


def _git(*args) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=8.0, help="step window, seconds")
    p.add_argument("--ref", help="a git ref to compare `jaxcnn train` with")
    p.add_argument(
        "--data-dir",
        default=os.environ.get(
            "JAXCNN_TEST_TFDS_DIR",
            str(pathlib.Path.home() / ".cache/jaxcnn-tests/tfds"),
        ),
    )
    p.add_argument("--manual-dir", default=str(shared_data_dir() / "mnist"))
    p.add_argument("--name", default="train_bench")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        ref_tree = None
        if args.ref:
            ref_tree = scratch / "ref-tree"
            _git("worktree", "add", "--detach", str(ref_tree), args.ref)
        try:
            rows = run_rounds(args, ref_tree, scratch)
        finally:
            if ref_tree is not None:
                _git("worktree", "remove", "--force", str(ref_tree))
    rep = report(args, rows)
    out = HERE / "results"
    (out / f"{args.name}.json").write_text(json.dumps(rep, indent=1))
    (out / f"{args.name}.md").write_text(markdown(rep))
    print(markdown(rep))


if __name__ == "__main__":
    main()
