"""`jaxcnn viz`: figures of runs, filters and images."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence


def add_viz(sub, common) -> None:
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
