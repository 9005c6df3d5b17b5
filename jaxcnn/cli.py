"""The `jaxcnn` command: argument parsing only; one small function per subcommand.

Errors: a JaxcnnError prints "error: <message>" to stderr and exits 2 (traceback only with
--debug); an argparse usage error exits 2; anything unexpected exits 1 with a traceback.
Heavy libraries (JAX, TFDS) are imported inside the command functions, so `jaxcnn summary`
and `jaxcnn --help` start fast.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence

from jaxcnn import cputune
from jaxcnn.errors import DiskFull, JaxcnnError, SpecError, is_disk_full
from jaxcnn.spec import PRECISIONS


def _input_shape(text: str) -> tuple[int, int, int]:
    """Parses "H,W,C" (also "HxWxC")."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected H,W,C with three positive integers (e.g. 28,28,1), got {text!r}"
        )
    return shape


# --------------------------------------------------------------------------- commands
def cmd_summary(args: argparse.Namespace) -> int:
    """Prints the per-layer table (or JSON) of a preset, family or spec file, and the
    preset's published training recipes."""
    from jaxcnn import models, recipes, shapes

    spec = models.load_spec(
        args.model, input_shape=args.input_shape, num_classes=args.classes
    )
    summary = shapes.summarize(spec)
    memory = shapes.memory_estimate(summary, args.batch_size)
    if args.json:
        data = summary.to_dict()
        data["memory"] = {"batch_size": args.batch_size, **memory}
        data["recipes"] = [r.to_dict() for r in recipes.for_model(args.model)]
        print(json.dumps(data))
    else:
        print(shapes.format_table(summary))
        print(shapes.format_memory(memory, args.batch_size))
        if text := recipes.format_recipes(args.model):
            print(text)
    return 0


# ---------------------------------------------------------------- train / eval / predict
def _add_train(sub, common) -> None:
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


def _add_eval(sub, common) -> None:
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


def _add_predict(sub, common) -> None:
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


# --------------------------------------------------------------------------- import
def _add_import(sub, common) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="import another framework's weights of a preset as a run directory",
        description="jaxcnn import FILE --arch NAME [--from SOURCE] --workdir DIR: reads "
        "a torchvision/PyTorch state dict (.pth), a timm .safetensors file or a Keras "
        "weights file (.weights.h5 / .h5) of preset NAME and writes a run directory that "
        "eval, predict, viz and train --init-from use. jaxcnn import --arch NAME "
        "--pretrained SOURCE --workdir DIR downloads the published file first (checked "
        "against its published hash, cached in $JAXCNN_WEIGHTS_CACHE or "
        "~/.cache/jaxcnn/weights).",
    )
    p.add_argument("file", nargs="?", metavar="FILE", help="the weight file")
    p.add_argument("--arch", required=True, help="the preset, e.g. vgg16")
    p.add_argument(
        "--from",
        dest="source",
        choices=("torchvision", "timm", "keras"),
        help="the framework that wrote FILE (default: from its suffix)",
    )
    p.add_argument(
        "--pretrained",
        choices=("torchvision", "timm", "keras"),
        metavar="SOURCE",
        help="download SOURCE's published ImageNet weights instead of reading FILE",
    )
    p.add_argument("--workdir", required=True, help="the run directory to write")
    p.add_argument("--cache-dir", help="where downloads are kept")
    p.add_argument(
        "--kernels",
        choices=("auto", "xla", "fast"),
        default="auto",
        help="the run's conv / pool kernels (default auto)",
    )
    p.add_argument(
        "--input-shape",
        type=_input_shape,
        metavar="H,W,C",
        help="build the preset for this input instead of its published one (e.g. "
        "32,32,3 to fine-tune on small images; the networks that end in a global pool "
        "take the same weights at any size)",
    )
    p.set_defaults(func=_cmd_import)


def _cmd_import(args) -> int:
    from jaxcnn import interop

    if (args.file is None) == (args.pretrained is None):
        raise JaxcnnError(
            "jaxcnn import takes either a weight FILE or --pretrained SOURCE (one of them)"
        )
    if args.pretrained is not None:
        if args.source is not None and args.source != args.pretrained:
            raise JaxcnnError(
                f"--from {args.source} contradicts --pretrained {args.pretrained}"
            )
        done = interop.import_pretrained(
            args.arch,
            args.pretrained,
            args.workdir,
            cache=args.cache_dir,
            kernels=args.kernels,
            input_shape=args.input_shape,
        )
    else:
        done = interop.import_weights(
            args.file,
            args.arch,
            args.workdir,
            source=args.source,
            kernels=args.kernels,
            input_shape=args.input_shape,
        )
    print(
        f"imported {done.arrays} weight arrays ({done.values:,} values) of "
        f"{args.arch} from {done.source_file} ({done.source}) into {done.workdir}"
    )
    if done.left_out:
        print(
            f"left out the file's {len(done.left_out)} tensors of the auxiliary heads "
            f"({', '.join(sorted({n.split('.')[0] for n in done.left_out}))}), which "
            f"only train"
        )
    return 0


def _add_export(sub, common) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a run's model as a StableHLO or ONNX file for serving",
        description="Writes a run's checkpoint as a StableHLO (jax.export) or ONNX "
        "file: eval mode, float32, batch size free; the input is NHWC float32 images "
        "in [0, 1] (the run's normalisation is inside), the output logits. The "
        "preprocessing contract and class names travel with it (ONNX: metadata_props; "
        "StableHLO: FILE.json). ONNX needs pip install 'jaxcnn[export]'.",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--format", required=True, choices=("stablehlo", "onnx"))
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="file to write (default: <workdir name>.stablehlo / .onnx here)",
    )
    p.add_argument(
        "--checkpoint", default="best", help="best (default), latest, or a step"
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from jaxcnn import export

    which = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    written = export.export_run(args.workdir, args.format, args.output, which=which)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


# --------------------------------------------------------------------------- sweep
def _add_sweep(sub, common) -> None:
    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="run / resume a sweep, run one sweep worker, or report a sweep",
        description="jaxcnn sweep CONFIG [--workdir DIR] [--storage URL] [--workers N]: run or "
        "resume a sweep (CONFIG: .toml/.json sweep file, experiments/*.py, or a sweep dir). "
        "jaxcnn sweep worker CONFIG --storage URL: one worker (start N of them, on any "
        "machines sharing the storage and workdir). jaxcnn sweep report DIR: ranked table "
        "and figures. jaxcnn sweep compare DIR_A DIR_B [--out FILE]: does A's ranking "
        "hold in B (the same grid at another budget or with other seeds)?",
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="CONFIG | worker CONFIG | report DIR | compare DIR_A DIR_B",
    )
    p.add_argument("--out", help="compare: also write the comparison to this file")
    p.add_argument(
        "--workdir",
        help="sweep directory (default: CONFIG when it is a sweep directory, else "
        "runs/sweeps/<name>)",
    )
    p.add_argument(
        "--storage", help="Optuna storage URL (default: a journal file in workdir)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine"
    )
    p.add_argument(
        "--smoke", action="store_true", help="the sweep's seconds-long version"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--restart", action="store_true", help=_RESTART_HELP)
    p.set_defaults(func=_cmd_sweep)


_RESTART_HELP = (
    "discard the trials this sweep already has in --workdir (and its study in "
    "--storage) and start afresh; needed after changing its base config, sampler or "
    "search space (new grid points, seeds or trials need no restart)"
)


def _cmd_sweep(args) -> int:
    from jaxcnn import sweep

    action, rest = args.target[0], args.target[1:]
    if action == "compare":
        if len(rest) != 2:
            raise JaxcnnError("usage: jaxcnn sweep compare DIR_A DIR_B [--out FILE]")
        from jaxcnn.sweep import compare

        print(compare.compare(rest[0], rest[1], args.out))
        return 0
    if action in ("report", "worker"):
        if args.restart:
            raise JaxcnnError(
                f"--restart applies to `jaxcnn sweep CONFIG`, not to `sweep {action}` "
                "(a worker must not discard trials other workers are running)"
            )
        if len(rest) != 1:
            raise JaxcnnError(
                f"usage: jaxcnn sweep {action} {'DIR' if action == 'report' else 'CONFIG'}"
            )
        if action == "report":
            from jaxcnn.sweep import report

            print(report.write_report(rest[0]))
            return 0
        sweep.work(
            rest[0],
            args.workdir,
            storage=args.storage,
            smoke=args.smoke,
            quiet=args.quiet,
        )
        return 0
    if rest:
        raise JaxcnnError(f"jaxcnn sweep takes one CONFIG, got {args.target}")
    sweep.run_sweep(
        action,
        args.workdir,
        storage=args.storage,
        workers=args.workers,
        smoke=args.smoke,
        quiet=args.quiet,
        restart=args.restart,
    )
    return 0


def experiment_main(module_file: str, argv: Sequence[str] | None = None) -> int:
    """The command line of an experiments/*.py script: runs its sweep, then the report.

    `python -m experiments.NAME [--smoke] [--workdir DIR] [--storage URL] [--workers N]
    [--quiet] [--no-report]`; returns the exit status, as `main` does.
    """
    name = pathlib.Path(module_file).stem
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=f"Runs the {name!r} sweep, then its report.",
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long version")
    parser.add_argument(
        "--workdir",
        help=f"sweep directory (default runs/sweeps/{name}, or {name}-smoke)",
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: journal in workdir)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--restart", action="store_true", help=_RESTART_HELP)
    parser.add_argument("--no-report", action="store_true", help="skip the report")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return int(e.code or 0)
    args.module_file = module_file
    return _dispatch(_cmd_experiment, args)


def _cmd_experiment(args) -> int:
    from jaxcnn import sweep
    from jaxcnn.sweep import config

    if not args.workdir:  # under runs/ whatever the file is called
        name = config.check_name(pathlib.Path(args.module_file).stem)
        args.workdir = f"runs/sweeps/{name}{'-smoke' if args.smoke else ''}"

    sweep.run_sweep(
        args.module_file,
        args.workdir,
        storage=args.storage,
        workers=args.workers,
        smoke=args.smoke,
        quiet=args.quiet,
        restart=args.restart,
    )
    if not args.no_report:
        from jaxcnn.sweep import report

        print(report.write_report(args.workdir))
    return 0


# --------------------------------------------------------------------------- viz
def _add_viz(sub, common) -> None:
    p = sub.add_parser(
        "viz", parents=[common], help="PNG figures of runs, filters and images"
    )
    vsub = p.add_subparsers(dest="viz_command", required=True, metavar="FIGURE")

    def out(q):
        q.add_argument(
            "-o", "--output", required=True, metavar="OUT.png", help="PNG to write"
        )

    q = vsub.add_parser(
        "featuremaps",
        parents=[common],
        help="an image's activations in every conv / pool / activation layer",
    )
    q.add_argument("--workdir", required=True, help="a `jaxcnn train` run directory")
    q.add_argument(
        "image",
        metavar="IMAGE",
        help="PNG/JPEG of any size (converted to the model's input shape and channels)",
    )
    q.add_argument(
        "--max-channels",
        type=int,
        default=64,
        help="channels drawn per layer, 1..512 (default 64)",
    )
    out(q)
    q.set_defaults(func=_cmd_viz_featuremaps)

    q = vsub.add_parser(
        "filters", parents=[common], help="learned kernels of a conv layer"
    )
    q.add_argument("--workdir", required=True, help="a `jaxcnn train` run directory")
    q.add_argument(
        "--layer",
        help="conv layer, e.g. conv_2 or residual_3/conv_0 (default: the first)",
    )
    out(q)
    q.set_defaults(func=_cmd_viz_filters)

    q = vsub.add_parser(
        "edges",
        parents=[common],
        help="an image convolved with classic kernels (edges, Sobel, ...)",
    )
    q.add_argument("image", metavar="IMAGE", help="PNG/JPEG (drawn in grayscale)")
    out(q)
    q.set_defaults(func=_cmd_viz_edges)

    q = vsub.add_parser(
        "curves",
        parents=[common],
        help="loss and accuracy per epoch, train vs validation, runs overlaid",
    )
    q.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    out(q)
    q.set_defaults(func=_cmd_viz_curves)

    q = vsub.add_parser(
        "confusion",
        parents=[common],
        help="confusion matrix of a run's best checkpoint (counts, normalised)",
    )
    q.add_argument("--workdir", required=True, help="a `jaxcnn train` run directory")
    q.add_argument("--split", default="test", help="test (default), val, train")
    out(q)
    q.set_defaults(func=_cmd_viz_confusion)


def _cmd_viz_featuremaps(args) -> int:
    from jaxcnn import viz

    return _wrote(
        *viz.feature_maps_for_run(
            args.workdir, args.image, args.output, max_channels=args.max_channels
        )
    )


def _cmd_viz_filters(args) -> int:
    from jaxcnn import viz

    print(f"wrote {viz.filters_for_run(args.workdir, args.output, layer=args.layer)}")
    return 0


def _cmd_viz_edges(args) -> int:
    from jaxcnn import viz

    return _wrote(*viz.edges_for_image(args.image, args.output))


def _wrote(path: pathlib.Path, notes: Sequence[str]) -> int:
    """Prints how an image was converted and the figure written; exit status 0."""
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {path}")
    return 0


def _cmd_viz_curves(args) -> int:
    from jaxcnn import viz

    print(f"wrote {viz.plot_curves(args.runs, args.output)}")
    return 0


def _cmd_viz_confusion(args) -> int:
    from jaxcnn import viz

    path, report = viz.confusion_for_run(args.workdir, args.output, split=args.split)
    print(f"{report['split']} accuracy {report['accuracy']:.4f}; wrote {path}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks for configuration errors too",
    )
    parser = argparse.ArgumentParser(
        prog="jaxcnn",
        description="Define, inspect, train, checkpoint and sweep CNNs in JAX / Flax NNX.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        type=_input_shape,
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
    for add in (_add_train, _add_eval, _add_predict, _add_import, _add_export):
        add(sub, common)
    _add_sweep(sub, common)
    _add_viz(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 usage/config, 1 unexpected)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0)
        return int(e.code or 0)
    return _dispatch(args.func, args)


def _dispatch(command: Callable[[argparse.Namespace], int], args) -> int:
    """Runs one command; JaxcnnError -> message and 2 (Interrupted: 128 + signal),
    anything else -> traceback and 1."""
    debug = getattr(args, "debug", False)
    try:
        cputune.apply()  # an invalid JAXCNN_CPU_TUNING is a usage error
        return command(args)
    except JaxcnnError as e:
        if debug:
            traceback.print_exc()
        if isinstance(e, DiskFull) and not debug:
            _quiet_abandoned_writes()
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except Exception as e:
        if is_disk_full(e):  # a run file: what was complete before is intact
            _quiet_abandoned_writes()
            print(
                f"error: the disk is full ({e}); free some space and run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        return 1


def _quiet_abandoned_writes() -> None:
    """The writer tasks of a save that met a full disk may still print on their way
    out; the error line said what happened (this process ends next)."""
    from jaxcnn import checkpoint

    checkpoint.FailedWriteNoise().install()
