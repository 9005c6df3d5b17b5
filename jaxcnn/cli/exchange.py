"""`jaxcnn import` (other frameworks' weights in) and `jaxcnn export` (models out, for
serving)."""

from __future__ import annotations

from jaxcnn.cli.args import input_shape
from jaxcnn.errors import JaxcnnError


def add_import(sub, common) -> None:
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
        type=input_shape,
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


def add_export(sub, common) -> None:
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
