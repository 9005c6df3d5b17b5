"""Figures of what a network learned, how it trained, and how a sweep came out (the only
matplotlib user).

Arrays first, pictures second: `feature_maps` and `edge_responses` return numpy arrays
that tests and notebooks can check; the `plot_*` functions draw them into PNG files
(written atomically: a temporary file renamed into place) and return the path. The
`*_for_run` functions are what `jaxcnn viz ...` calls.

matplotlib is imported lazily, and only through `matplotlib.figure.Figure` with the Agg
canvas, so no global pyplot state or GUI backend is touched.
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcnn import filters
from jaxcnn.errors import DataError, JaxcnnError, SpecError
from jaxcnn.spec import ModelSpec

MAX_CHANNELS = 512  # the most channels one feature-map panel can show
DEFAULT_CHANNELS = (
    64  # shown per layer unless asked otherwise (8x8 tiles stay readable)
)
MAX_FILTER_CHANNELS = 16  # input channels drawn by plot_filters
MAX_FILTERS = 64  # filters drawn per input channel by plot_filters
EDGE_MAX_SIDE = 512  # `viz edges` shrinks larger images to this side
_SPATIAL_TYPES = ("conv", "pool", "activation", "norm", "residual")


# --------------------------------------------------------------------------- arrays
def feature_maps(
    model: Any, spec: ModelSpec, image: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """The input and the activations of every spatial layer for one image, in eval mode.

    Runs `models.features` on an eval-mode view of `model` (`nnx.view`), keeping the
    output of each top-level conv, pool, activation, norm and residual layer whose
    output is still a [H, W, C] map. `model` itself stays in the mode it was in.

    Args:
      model: a model built from `spec` (models.build_model or train.restore).
      spec: its spec.
      image: [H, W, C] or [1, H, W, C] float32 in the model's input shape, already
        converted (and standardised, if the run standardised its data).

    Returns:
      [("input", [H, W, C]), ("conv_0", [h, w, c]), ...] as float32 numpy arrays, in
      call order.

    Raises:
      DataError: the image does not have the model's input shape.
    """
    from flax import nnx

    from jaxcnn import models

    x = np.asarray(image, np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1 or tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise DataError(
            f"feature_maps takes one image of the model's input shape "
            f"{list(spec.input_shape)} ([H, W, C] or [1, H, W, C]), got shape "
            f"{list(np.shape(image))}; convert it with viz.load_image first"
        )
    names = [n for n in model.layer_names if n.rsplit("_", 1)[0] in _SPATIAL_TYPES]
    frozen = nnx.view(
        model, deterministic=True, use_running_average=True, raise_if_not_found=False
    )
    maps = models.features(frozen, x, names) if names else {}
    return [("input", x[0])] + [
        (name, np.asarray(h[0], np.float32)) for name, h in maps.items() if h.ndim == 4
    ]


def edge_responses(image: np.ndarray) -> dict[str, np.ndarray]:
    """The image cross-correlated with every classic kernel of jaxcnn.filters.

    The convolution is the one a conv layer with `init=<name>` computes (XLA, no
    kernel flip, "valid" padding).

    Args:
      image: [H, W] grayscale float (H, W >= 3).

    Returns:
      {kernel name: [H - 2, W - 2] float32 response}.
    """
    import jax.numpy as jnp
    from jax import lax

    x = np.asarray(image, np.float32)
    if x.ndim != 2 or min(x.shape) < 3:
        raise DataError(
            f"edge_responses takes a [H, W] grayscale image of at least 3x3, got shape "
            f"{list(x.shape)}"
        )
    kernels = np.stack(
        [filters.classic_kernel(n) for n in filters.CLASSIC_NAMES], -1
    )  # [3, 3, k]
    out = lax.conv_general_dilated(
        jnp.asarray(x)[None, :, :, None],
        jnp.asarray(kernels)[:, :, None, :],
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    out = np.asarray(out[0])
    return {name: out[:, :, i] for i, name in enumerate(filters.CLASSIC_NAMES)}


def load_image(
    path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    record: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Reads an image file (any size) as float32 in [0, 1], decoded and converted as
    `predict` does (`data.read_image`: 16-bit scaling, transparency; `data.prepare`).

    Args:
      path: the image file.
      input_shape: (H, W, C) to convert to (resize and channels, as the data pipeline
        does); None returns grayscale [H, W], shrunk to EDGE_MAX_SIDE on its longest side.
      record: the run's dataset record (config.json), for an imported network's resize
        and centre crop; None resizes straight to `input_shape`.

    Returns:
      (image [H, W, C] (or [H, W] without input_shape), notes stating each conversion).

    Raises:
      DataError: the file cannot be read as an image.
    """
    from jaxcnn import data

    pixels, read_notes = data.read_image(path)  # never opens a FIFO or a device
    h, w, c = pixels.shape
    notes = [f"{path}: image {h}x{w}, {c} channel{'s' if c > 1 else ''}", *read_notes]
    if input_shape is not None:
        target = tuple(int(d) for d in input_shape)
        notes += data.images.conversion_notes(pixels.shape, target)
        return data.prepare(pixels, target, record or {}), notes
    scale = min(1.0, EDGE_MAX_SIDE / max(h, w))
    target = (max(1, round(h * scale)), max(1, round(w * scale)), 1)
    notes += data.images.conversion_notes(pixels.shape, target)
    return data.convert_images(pixels[None], target)[0][0, :, :, 0], notes


# --------------------------------------------------------------------------- drawing
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | os.PathLike) -> pathlib.Path:
    """Writes `fig` as PNG atomically (temporary file in the same folder, renamed)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _grid(count: int, max_cols: int) -> tuple[int, int]:
    cols = min(max_cols, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / cols), cols


def mosaic(maps: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Tiles [h, w, n] channel maps into one near-square [rows*(h+1)-1, cols*(w+1)-1] image.

    With `normalize`, each channel is scaled to [0, 1] on its own (a constant channel
    becomes 0); separators and unused tiles are NaN (drawn as background).
    """
    h, w, n = maps.shape
    rows, cols = _grid(n, max_cols=n)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    for i in range(n):
        tile = maps[:, :, i].astype(np.float32)
        if normalize:
            lo, hi = float(tile.min()), float(tile.max())
            tile = (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return out


def _feature_maps_figure(maps, *, max_channels: int, notes: Sequence[str] = ()):
    if not 1 <= max_channels <= MAX_CHANNELS:
        raise SpecError(
            f"max_channels must be between 1 and {MAX_CHANNELS}, got {max_channels}"
        )
    rows, cols = _grid(len(maps), max_cols=4)
    fig = _figure(3.4 * cols, 3.6 * rows + 0.3 * len(notes))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, array) in zip(axes, maps, strict=False):
        h, w, c = array.shape
        title = f"{name}  {h}x{w}x{c}"
        if name == "input" and c in (1, 3):
            shown = np.clip(array, 0, 1) if c == 3 else array[:, :, 0]
            ax.imshow(shown, cmap="gray", interpolation="nearest")
        else:
            n = min(c, max_channels)
            if n < c:
                title += f"\nfirst {n} of {c} channels shown"
            image = np.ma.masked_invalid(mosaic(array[:, :, :n]))
            ax.imshow(image, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if notes:
        fig.suptitle("\n".join(notes), fontsize=8)
    return fig


def plot_feature_maps(
    maps: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike,
    *,
    max_channels: int = DEFAULT_CHANNELS,
    notes: Sequence[str] = (),
) -> pathlib.Path:
    """Draws `feature_maps` output: one labelled panel (name, HxWxC) per layer.

    Each panel tiles the layer's channels, each scaled to its own [0, 1] range. At most
    `max_channels` (1..512) channels per layer are drawn; a capped panel says so.
    `notes` (e.g. the image conversion) go in the figure title.
    """
    fig = _feature_maps_figure(maps, max_channels=max_channels, notes=notes)
    return _save(fig, path)


def conv_kernel(model: Any, layer: str | None = None) -> tuple[str, np.ndarray]:
    """(name, kernel [kh, kw, cin, filters]) of conv layer `layer` (default: the first).

    `layer` is an attribute path such as "conv_2", "residual_3/conv_0" or
    "branches_4/b1/conv_0".

    Raises:
      SpecError: no such conv layer (the message lists the conv layers).
    """
    from jaxcnn import layers as layers_lib

    convs: list[tuple[str, Any]] = []

    def walk(module, prefix):
        for name, sub in module.named_layers():
            if isinstance(sub, layers_lib.Conv):
                convs.append((prefix + name, sub))
            if isinstance(sub, layers_lib.Sequential):
                walk(sub, f"{prefix}{name}/")
                if getattr(sub, "proj", None) is not None:
                    convs.append((f"{prefix}{name}/proj", sub.proj))
            if isinstance(sub, layers_lib.Branches):
                for b in sub.branch_names:
                    walk(getattr(sub, b), f"{prefix}{name}/{b}/")

    walk(model, "")
    if not convs:
        raise SpecError("the model has no conv layer to draw")
    found = dict(convs)
    name = convs[0][0] if layer is None else layer
    if name not in found:
        raise SpecError(f"no conv layer {layer!r}; conv layers are {', '.join(found)}")
    return name, np.asarray(found[name].kernel.get_value(), np.float32)


def _filters_figure(name: str, kernel: np.ndarray):
    kh, kw, cin, nf = kernel.shape
    shown_in, shown_f = min(cin, MAX_FILTER_CHANNELS), min(nf, MAX_FILTERS)
    kernel = kernel[:, :, :shown_in, :shown_f]
    vmax = float(np.max(np.abs(kernel))) or 1.0  # one colour scale for every panel
    rows, cols = _grid(shown_in, max_cols=4)
    fig = _figure(3.2 * cols + 0.8, 3.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for c, ax in enumerate(axes[:shown_in]):
        tiles = np.ma.masked_invalid(mosaic(kernel[:, :, c, :], normalize=False))
        image = ax.imshow(
            tiles, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(f"input channel {c}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes[:shown_in]), shrink=0.8, label="weight")
    capped = []
    if shown_f < nf:
        capped.append(f"first {shown_f} of {nf} filters")
    if shown_in < cin:
        capped.append(f"first {shown_in} of {cin} input channels")
    fig.suptitle(
        f"{name} kernels {kh}x{kw}, {cin} input channel(s) x {nf} filters"
        + (f" ({', '.join(capped)} shown)" if capped else "")
        + "; shared colour scale",
        fontsize=9,
    )
    return fig


def plot_filters(
    model: Any, path: str | os.PathLike, *, layer: str | None = None
) -> pathlib.Path:
    """Draws the kernels of a conv layer (default: the first): one panel per input
    channel tiling its filters, all on one symmetric colour scale (blue < 0 < red)."""
    name, kernel = conv_kernel(model, layer)
    return _save(_filters_figure(name, kernel), path)


def _edges_figure(image: np.ndarray, responses: Mapping[str, np.ndarray], notes=()):
    rows, cols = _grid(len(responses) + 1, max_cols=4)
    fig = _figure(3.2 * cols, 3.3 * rows + 0.3 * len(notes))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"image {image.shape[0]}x{image.shape[1]}", fontsize=9)
    for ax, (name, response) in zip(axes[1:], responses.items(), strict=False):
        k = filters.CLASSIC_KERNELS[name]
        if name in ("box_blur", "sharpen"):  # images again: show them as images
            ax.imshow(response, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:  # signed responses: symmetric diverging scale
            m = float(np.max(np.abs(response))) or 1.0
            ax.imshow(response, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        rows_text = " / ".join(
            " ".join(f"{v:g}" for v in row) for row in np.round(k, 2)
        )
        ax.set_title(f"{name}\n[{rows_text}]", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    if notes:
        fig.suptitle("\n".join(notes), fontsize=8)
    return fig


def plot_edges(
    image: np.ndarray, path: str | os.PathLike, *, notes: Sequence[str] = ()
) -> pathlib.Path:
    """Draws a grayscale [H, W] image and its response to every classic kernel."""
    image = np.asarray(image, np.float32)
    return _save(_edges_figure(image, edge_responses(image), notes), path)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run's metrics.jsonl (`rundir.read_metrics`).

    Raises:
      JaxcnnError: the run has no (or an empty / unreadable) metrics.jsonl.
    """
    from jaxcnn import rundir

    run = rundir.RunDir(run_dir)
    if not run.metrics_file.is_file():
        raise JaxcnnError(
            f"{run_dir} has no metrics.jsonl; pass the --workdir of a `jaxcnn train` run"
        )
    records = run.metrics()
    if not records:
        raise JaxcnnError(
            f"{run.metrics_file} holds no epochs yet; train for at least one epoch"
        )
    return records


def _curves_figure(runs: Mapping[str, list[dict[str, Any]]]):
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in records]
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for split, style in (("train", "-"), ("val", "--")):
                key = f"{split}_{metric}"
                values = [r.get(key, np.nan) for r in records]
                ax.plot(
                    epochs,
                    values,
                    style,
                    color=color,
                    marker="o",
                    markersize=3,
                    label=f"{label} {'train' if split == 'train' else 'validation'}",
                )
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(
            f"{metric} per epoch (solid: train, dashed: validation)", fontsize=9
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    return fig


def plot_curves(
    run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike
) -> pathlib.Path:
    """Loss and accuracy per epoch, train (solid) vs validation (dashed), runs overlaid.

    Each run is labelled by its folder name (the full path where names repeat).
    """
    if not run_dirs:
        raise JaxcnnError("plot_curves needs at least one run directory")
    names = [pathlib.Path(d).name or str(d) for d in run_dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in run_dirs]
    runs = {label: read_metrics(d) for label, d in zip(labels, run_dirs, strict=True)}
    return _save(_curves_figure(runs), path)


def _confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str):
    n = len(class_names)
    counts = np.asarray(confusion, np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(
        counts, totals, out=np.zeros(counts.shape, np.float64), where=totals > 0
    )
    side = max(4.5, 0.45 * n + 2.5)
    fig = _figure(2 * side + 0.6, side)
    axes = fig.subplots(1, 2)
    panels = (
        (counts, "counts", counts.max() or 1, "d"),
        (normalized, "normalised per true class", 1.0, ".2f"),
    )
    for ax, (matrix, name, vmax, fmt) in zip(axes, panels, strict=True):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_xticks(range(n), class_names, rotation=90 if n > 4 else 0, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=9)
        if n <= 20:
            for (r, c), value in np.ndenumerate(matrix):
                dark = value > 0.6 * vmax
                ax.text(
                    c,
                    r,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if dark else "black",
                )
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_confusion(
    confusion: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "confusion matrix",
) -> pathlib.Path:
    """Confusion matrix (rows: true class, columns: predicted), counts and normalised."""
    confusion = np.asarray(confusion)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise DataError(
            f"confusion matrix of shape {list(confusion.shape)} does not match "
            f"{n} class names"
        )
    return _save(_confusion_figure(confusion, class_names, title), path)


# --------------------------------------------------------------------------- sweeps
def plot_tradeoff(
    points: Mapping[str, Sequence[tuple[float, float]]],
    fronts: Mapping[str, Sequence[int]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str = "test accuracy",
    errors: Mapping[str, Sequence[float]] | None = None,
) -> pathlib.Path:
    """Accuracy against a cost (log x axis), one colour per label (e.g. dataset).

    Args:
      points: label -> [(cost, accuracy), ...].
      fronts: label -> indices into its points on the Pareto front, by cost; they are
        starred and joined by a step line.
      path: the PNG to write.
      xlabel: the cost's name.
      ylabel: the accuracy's name.
      errors: label -> a half width per point (e.g. the 95 % interval over seeds),
        drawn as vertical bars; None draws none.
    """
    fig = _figure(6, 4)
    ax = fig.subplots()
    for i, (label, pts) in enumerate(points.items()):
        color = f"C{i % 10}"
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        yerr = None if errors is None else list(errors[label])
        ax.errorbar(
            xs, ys, yerr=yerr, fmt="o", color=color, alpha=0.6, capsize=3, label=label
        )
        front = [pts[j] for j in fronts.get(label, ())]
        xs, ys = [x for x, _ in front], [y for _, y in front]
        ax.plot(xs, ys, "-", color=color, drawstyle="steps-post", linewidth=1.5)
        ax.plot(xs, ys, "*", color=color, markersize=11)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    bars = "" if errors is None else ", bars: 95 % interval"
    ax.set_title(f"{ylabel} vs {xlabel} (stars/line: Pareto front{bars})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_heatmaps(
    panels: Sequence[
        tuple[str, np.ndarray, np.ndarray | None, Mapping[tuple[int, int], str]]
    ],
    path: str | os.PathLike,
    *,
    xticks: Sequence[Any],
    yticks: Sequence[Any],
    xlabel: str,
    ylabel: str,
) -> pathlib.Path:
    """Heatmaps side by side, each cell labelled with its value (± its half width).

    Args:
      panels: (title, values [len(yticks), len(xticks)], half widths of the same shape
        or None, marks) per panel; a cell with a half width (not NaN) reads
        "value ± half"; a NaN value is blank and shows marks[(row, column)], if any.
      path: the PNG to write.
      xticks, yticks: the column and row labels.
      xlabel, ylabel: the axis names.
    """
    fig = _figure(3.6 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, values, halves, marks) in zip(axes, panels, strict=True):
        image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), value in np.ndenumerate(values):
            blank = np.isnan(value)
            half = np.nan if halves is None else halves[i, j]
            text = marks.get((i, j), "") if blank else f"{value:.3f}"
            if not blank and not np.isnan(half):
                text += f"\n±{half:.3f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                # dark text on the bright end of viridis, light text elsewhere
                color="black" if blank or image.norm(value) > 0.6 else "white",
            )
        ax.set_xticks(range(len(xticks)), [str(t) for t in xticks])
        ax.set_yticks(range(len(yticks)), [str(t) for t in yticks])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_effect(
    values: Sequence[Any],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str = "test accuracy (mean ± std)",
) -> pathlib.Path:
    """Mean and error bar per value of one swept axis, one line per label.

    Args:
      values: the axis values, drawn evenly spaced in this order.
      series: label -> (means, error bars), one of each per value (NaN: no point).
      path: the PNG to write.
      xlabel: the axis name.
      ylabel: what the means are.
    """
    fig = _figure(5, 3.4)
    ax = fig.subplots()
    for label, (means, errs) in series.items():
        ax.errorbar(
            range(len(values)), means, yerr=errs, marker="o", capsize=4, label=label
        )
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"effect of {xlabel}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- commands
def _standardize(image: np.ndarray, dataset: Mapping[str, Any]) -> np.ndarray:
    from jaxcnn import data

    return data.normalize(image, dataset)


def feature_maps_for_run(
    workdir: str | os.PathLike,
    image_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_channels: int = DEFAULT_CHANNELS,
    which: str | int = "best",
) -> tuple[pathlib.Path, list[str]]:
    """`jaxcnn viz featuremaps`: an image file through a trained run's layers.

    Returns:
      (the PNG path, notes on how the image was converted).
    """
    from jaxcnn import train

    run = train.restore(workdir, which)
    image, notes = load_image(image_path, run.spec.input_shape, run.dataset)
    maps = feature_maps(run.model, run.spec, _standardize(image, run.dataset))
    maps[0] = ("input", image)  # show the image as converted, not standardised
    if run.dataset.get("mean") is not None:
        notes.append("standardised with the run's training mean/std before the model")
    return plot_feature_maps(maps, out, max_channels=max_channels, notes=notes), notes


def filters_for_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layer: str | None = None,
    which: str | int = "best",
) -> pathlib.Path:
    """`jaxcnn viz filters`: the kernels of a trained run's first (or named) conv layer."""
    from jaxcnn import train

    return plot_filters(train.restore(workdir, which).model, out, layer=layer)


def edges_for_image(
    image_path: str | os.PathLike, out: str | os.PathLike
) -> tuple[pathlib.Path, list[str]]:
    """`jaxcnn viz edges`: an image file convolved with the classic kernels."""
    image, notes = load_image(image_path)
    return plot_edges(image, out, notes=notes), notes


def confusion_for_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    which: str | int = "best",
) -> tuple[pathlib.Path, dict[str, Any]]:
    """`jaxcnn viz confusion`: evaluates the run on `split` and draws its confusion matrix."""
    from jaxcnn import train

    report = train.evaluate(workdir, split, which=which)
    title = (
        f"{pathlib.Path(workdir).name}: {split} split, {report['examples']} examples, "
        f"accuracy {report['accuracy']:.4f} (checkpoint step {report['step']})"
    )
    path = plot_confusion(
        np.asarray(report["confusion_matrix"]), report["class_names"], out, title=title
    )
    return path, report
