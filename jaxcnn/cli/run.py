"""`jaxcnn summary`, `train`, `eval` and `predict`."""

from __future__ import annotations

import argparse
import json
import sys

from jaxcnn.cli.args import input_shape
from jaxcnn.errors import SpecError
from jaxcnn.spec import PRECISIONS


def add_summary(sub, common) -> None:
    p = sub.add_parser(
        "summary",
        parents=[common],
        help="per-layer output shapes, parameters, FLOPs and receptive fields",
        description="Per-layer table of a model: output shape, parameters, FLOPs, "
        "receptive field; totals, and an estimate of the memory a training step needs "
        "(float32 parameters, gradients, Adam's two moments, activations at --batch-size). "
        "MODEL is a preset, a family (simple_cnn) or a .toml/.json spec file.",
    )
    p.add_argument("model", metavar="MODEL", help="preset / family name or spec file")
    p.add_argument(
        "--input-shape",
        type=input_shape,
        metavar="H,W,C",
        help="override the input shape",
    )
    p.add_argument(
        "--classes", type=int, metavar="N", help="override the number of classes"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=128,
        metavar="B",
        help="batch size of the training-memory estimate (default 128)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    p.set_defaults(func=cmd_summary)


def cmd_summary(args: argparse.Namespace) -> int:
    """Prints the per-layer table (or JSON) of a preset, family or spec file, and the
    preset's published training recipes."""
    from jaxcnn import footprint, models, recipes, shapes

    spec = models.load_spec(
        args.model, input_shape=args.input_shape, num_classes=args.classes
    )
    summary = shapes.summarize(spec)
    memory = footprint.memory_estimate(summary, args.batch_size)
    if args.json:
        data = summary.to_dict()
        data["memory"] = {"batch_size": args.batch_size, **memory}
        data["recipes"] = [r.to_dict() for r in recipes.for_model(args.model)]
        print(json.dumps(data))
    else:
        print(shapes.format_table(summary))
        print(footprint.format_memory(memory, args.batch_size))
        if text := recipes.format_recipes(args.model):
            print(text)
    return 0


def add_train(sub, common) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a model (no arguments: the embedded offline digits run)",
        description="Train a model. With no arguments: digits_cnn on the 8x8 digits dataset "
        "shipped with scikit-learn (offline). Rerunning with the same --workdir resumes.",
    )
    p.add_argument(
        "--config",
        help="run config file (.toml/.json with [model] [data] [optim] [train])",
    )
    p.add_argument(
        "--model", help="preset or family name, or a spec file (.toml/.json)"
    )
    p.add_argument(
        "--dataset",
        help="TFDS dataset name (default: digits, embedded), or a folder of images with "
        "one sub-folder per class",
    )
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument(
        "--manual-dir", help="folder of raw downloads to build the dataset from offline"
    )
    p.add_argument(
        "--recipe",
        metavar="NAME",
        help="the preset's published training recipe (jaxcnn summary MODEL lists "
        "them); the config file, flags and --set override its values",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", help="sgd, momentum, nesterov, adam, adamw, rmsprop")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--workdir", help="run directory (default: runs/<model>-<dataset>)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.schedule=cosine "
        "--set model.filters=64 (repeatable)",
    )
    p.add_argument(
        "--restart", action="store_true", help="discard checkpoints in --workdir"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_transfer_flags(p)
    _add_process_flags(p)
    p.set_defaults(func=_cmd_train)


def _add_transfer_flags(p) -> None:
    """`jaxcnn train`'s transfer-learning flags."""
    p.add_argument(
        "--init-from",
        metavar="RUN",
        help="start from the best checkpoint of a finished run (its --workdir)",
    )
    p.add_argument(
        "--freeze",
        action="append",
        metavar="PATTERN",
        help="freeze parameters whose path (conv_0/kernel, dense_7/bias, ...) "
        "matches this regular expression, e.g. --freeze conv (repeatable)",
    )
    p.add_argument(
        "--new-head",
        action="store_true",
        help="with --init-from: re-initialise the last dense layer even when "
        "the class counts agree",
    )


def _add_process_flags(p) -> None:
    """`jaxcnn train`'s flags for jobs of several processes."""
    g = p.add_argument_group(
        "several processes (hosts)",
        "one `jaxcnn train` per host (or per GPU), same flags except --process-id; "
        "srun / mpirun jobs and JAX_COORDINATOR_ADDRESS are detected without flags",
    )
    g.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, reachable from every process",
    )
    g.add_argument(
        "--num-processes", type=int, metavar="N", help="processes in the job"
    )
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
    g.add_argument(
        "--init-timeout",
        type=int,
        metavar="S",
        help="seconds to wait for all processes to join (default 120, "
        "env JAXCNN_INIT_TIMEOUT)",
    )
    g.add_argument(
        "--heartbeat-timeout",
        type=int,
        metavar="S",
        help="seconds after which a silent process stops the job (default "
        "30, env JAXCNN_HEARTBEAT_TIMEOUT)",
    )


def train_config_from_args(args: argparse.Namespace):
    """The run config a `jaxcnn train` command line describes.

    Precedence (spec.resolve): defaults < the recipe (--recipe, --set train.recipe or
    the file's train.recipe) < the config file < flags < --set.
    """
    from jaxcnn import spec

    table = spec.read_table(args.config) if args.config else {}
    flags = {
        "model.name": args.model,
        "train.recipe": args.recipe,
        "data.dataset": args.dataset,
        "data.data_dir": args.data_dir,
        "data.manual_dir": args.manual_dir,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "optim.optimizer": args.optimizer,
        "optim.lr": args.lr,
        "train.seed": args.seed,
        "train.init_from": args.init_from,
        "train.freeze": args.freeze,
        "train.new_head": True if args.new_head else None,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(spec.parse_override(item) for item in args.set)
    try:
        return spec.resolve(table, overrides)
    except SpecError:
        if args.config:
            spec.load_run_config(args.config)  # an error of the file alone names it
        raise


def _cmd_train(args) -> int:
    from jaxcnn import distributed, train

    # before anything touches JAX devices
    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        init_timeout=args.init_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        verbose=not args.quiet,
    )
    config = train_config_from_args(args)
    try:
        train.fit(config, args.workdir, restart=args.restart, quiet=args.quiet)
    except Exception as e:  # several processes: leave at once so the others stop too
        distributed.exit_on_error(e, debug=getattr(args, "debug", False))
        raise
    return 0


def add_eval(sub, common) -> None:
    p = sub.add_parser(
        "eval", parents=[common], help="evaluate a run's best checkpoint on a split"
    )
    p.add_argument("--workdir", required=True)
    p.add_argument(
        "--split", default="test", help="test (default), val, train, or a TFDS split"
    )
    p.add_argument(
        "--checkpoint", default="best", help="best (default), latest, or a step"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="compute in this precision (default: the run's train.precision)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from jaxcnn import train

    which = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    report = train.evaluate(
        args.workdir, args.split, which=which, precision=args.precision
    )
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{report['split']}: {report['examples']} examples, checkpoint step {report['step']} "
        f"(epoch {report['epoch']})"
    )
    print(f"loss {report['loss']:.4f}  accuracy {report['accuracy']:.4f}")
    names = report["class_names"]
    width = max(len(n) for n in names)
    print("per-class accuracy:")
    for name, acc in zip(names, report["per_class_accuracy"], strict=True):
        print(f"  {name:>{width}}  {acc:.4f}")
    print("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        print(f"  {name:>{width}}  " + " ".join(f"{v:5d}" for v in row))
    return 0


def add_predict(sub, common) -> None:
    p = sub.add_parser(
        "predict", parents=[common], help="classify PNG/JPEG images with a trained run"
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per image"
    )
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from jaxcnn import train

    results = train.predict(args.workdir, args.images, top_k=args.top_k)
    failed = [r for r in results if "error" in r]
    for r in results:
        if "error" in r:
            continue
        if args.json:
            print(json.dumps(r))
        else:
            tops = ", ".join(f"{t['name']} ({t['probability']:.3f})" for t in r["top"])
            print(f"{r['source']}: {tops}")
    for r in failed:
        print(f"error: {r['source']}: {r['error']}", file=sys.stderr)
    return 2 if failed else 0
