"""The memory a network needs on one device, from its static summary (no JAX).

A training step (`memory_estimate`, `check_fits`): float32 parameters, gradients and
optimiser slots, plus the activations a backward pass keeps, the largest gradient
buffers and the largest convolution's patches, per batch. An evaluation batch
(`eval_memory_estimate`, `check_eval_fits`): parameters, the largest layer's input and
output, and patches. `jaxcnn.memory` says how much one device holds.
"""

from __future__ import annotations

import math
from typing import Any

from jaxcnn.errors import SpecError
from jaxcnn.shapes import Summary, format_shape
from jaxcnn.spec import ConvSpec, FlattenSpec

DEFAULT_OPTIMIZER_SLOTS = 2  # Adam's two moments (spec.OPTIMIZER_SLOTS per optimiser)


def memory_estimate(
    summary: Summary,
    batch_size: int,
    *,
    optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS,
    bytes_per_value: int = 4,
) -> dict[str, int]:
    """Bytes one training step holds on a device, from the static summary (float32).

    An estimate of the large, shape-determined buffers, not a measurement: XLA fuses
    some of them away and adds workspace of its own, and a dataset placed on the device
    (data.device_limit_mb) comes on top. Checked against XLA's own memory analysis of
    the compiled train step (`train.Steps.memory`) over the presets and a generated
    family of networks (tests/test_memory.py): XLA's figure lies within 0.6x-1.6x of it.

    Args:
      summary: from `infer`.
      batch_size: examples per step on this device.
      optimizer_slots: values the optimiser keeps per trainable parameter (Adam 2, SGD
        with momentum 1; spec.OPTIMIZER_SLOTS).
      bytes_per_value: 4 for float32.

    Returns:
      Bytes per category: "params" (trainable and batch-norm statistics), "gradients"
      (one per trainable parameter), "optimizer_state", "activations" (the input and
      every layer output but flatten's, kept for the backward pass), "backward" (the
      gradient of the largest activation and a second buffer of its size, live
      together while the backward pass goes through that layer), "workspace" (the
      largest convolution's patches, kh * kw * C_in values per output pixel, which its
      product and its kernel's gradient read) and their "total".

    Raises:
      SpecError: batch_size < 1 or optimizer_slots < 0.
    """
    _check_batch(batch_size)
    if not isinstance(optimizer_slots, int) or optimizer_slots < 0:
        raise SpecError(f"optimizer_slots must be an int >= 0, got {optimizer_slots!r}")
    trainable = summary.total_params
    outputs = [
        math.prod(r.output_shape)
        for r in summary.layers
        if not isinstance(r.spec, FlattenSpec)
    ]
    per_example = math.prod(summary.spec.input_shape) + sum(outputs)
    out = {
        "params": (trainable + summary.total_non_trainable_params) * bytes_per_value,
        "gradients": trainable * bytes_per_value,
        "optimizer_state": optimizer_slots * trainable * bytes_per_value,
        "activations": batch_size * per_example * bytes_per_value,
        "backward": 2 * batch_size * max(outputs, default=0) * bytes_per_value,
        "workspace": batch_size * _largest_patches(summary) * bytes_per_value,
    }
    out["total"] = sum(out.values())
    return out


def eval_memory_estimate(
    summary: Summary, batch_size: int, *, bytes_per_value: int = 4
) -> dict[str, int]:
    """Bytes one evaluation (forward) batch holds on a device: the parameters, the
    largest layer's input and output together (earlier activations are freed as the
    forward pass goes on) and the largest convolution's patches; and their "total"."""
    _check_batch(batch_size)
    live = max(
        (
            math.prod(r.input_shape) + math.prod(r.output_shape)
            for r in summary.layers
            if not isinstance(r.spec, FlattenSpec)  # a reshape, not a copy
        ),
        default=0,
    )
    out = {
        "params": (summary.total_params + summary.total_non_trainable_params)
        * bytes_per_value,
        "activations": batch_size * live * bytes_per_value,
        "workspace": batch_size * _largest_patches(summary) * bytes_per_value,
    }
    out["total"] = sum(out.values())
    return out


def _check_batch(batch_size: Any) -> None:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise SpecError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _largest_patches(summary: Summary) -> int:
    """Values per example of the largest convolution's patches (kh * kw * C_in / groups
    per output pixel), the workspace of an im2col product."""
    return max(
        (
            math.prod(r.output_shape[:2])
            * r.spec.kernel[0]
            * r.spec.kernel[1]
            * (r.input_shape[2] // r.spec.groups)
            for r in summary.layers
            if isinstance(r.spec, ConvSpec)
        ),
        default=0,
    )


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; binary units up to EiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} EiB"


def _memory_parts(estimate: dict[str, int]) -> str:
    return ", ".join(
        f"{key.replace('_', ' ')} {format_bytes(estimate[key])}"
        for key in estimate
        if key != "total"
    )


def format_memory(estimate: dict[str, int], batch_size: int) -> str:
    """One line: the total and its parts, e.g. for `jaxcnn summary`."""
    return (
        f"Training memory at batch size {batch_size} (estimate): "
        f"{format_bytes(estimate['total'])} ({_memory_parts(estimate)})"
    )


def check_fits(
    summary: Summary,
    batch_size: int,
    limit_bytes: int,
    *,
    optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS,
) -> dict[str, int]:
    """Raises a SpecError when a training step would not fit in `limit_bytes`.

    Args:
      summary: from `infer`.
      batch_size: examples per step on one device.
      limit_bytes: what one device can hold (e.g. `jaxcnn.memory.device_memory_bytes()`).
      optimizer_slots: as in `memory_estimate`.

    Returns:
      The `memory_estimate`, when it fits.

    Raises:
      SpecError: naming the estimate, its parts, the largest activation and the limit.
    """
    estimate = memory_estimate(summary, batch_size, optimizer_slots=optimizer_slots)
    if estimate["total"] <= limit_bytes:
        return estimate
    big = max(summary.layers, key=lambda r: math.prod(r.output_shape))
    raise SpecError(
        f"model {summary.spec.name!r} needs about {format_bytes(estimate['total'])} per "
        f"training step at batch size {batch_size} ({_memory_parts(estimate)}), over "
        f"the {format_bytes(limit_bytes)} one device can hold; the largest activation "
        f"is layer {big.index} ({big.spec.describe()}), "
        f"{format_shape(big.output_shape)} per "
        "example. Use a smaller batch size, fewer filters/units, more stride/pooling "
        "or a smaller input"
    )


def check_eval_fits(
    summary: Summary, batch_size: int, limit_bytes: int
) -> dict[str, int]:
    """Raises a SpecError when one evaluation batch would not fit in `limit_bytes`,
    naming the largest batch size that fits by the same estimate.

    Returns:
      The `eval_memory_estimate`, when it fits.
    """
    estimate = eval_memory_estimate(summary, batch_size)
    if estimate["total"] <= limit_bytes:
        return estimate
    per_example = (estimate["total"] - estimate["params"]) // batch_size
    fits = (limit_bytes - estimate["params"]) // max(per_example, 1)
    advice = (
        f"use train.eval_batch_size <= {fits:,}"
        if fits >= 1
        else "the parameters alone do not fit; use a smaller model"
    )
    raise SpecError(
        f"an evaluation batch of {batch_size:,} images (train.eval_batch_size, or the "
        f"split when smaller) needs about {format_bytes(estimate['total'])} for model "
        f"{summary.spec.name!r} ({_memory_parts(estimate)}), over the "
        f"{format_bytes(limit_bytes)} one device can hold; {advice}"
    )
