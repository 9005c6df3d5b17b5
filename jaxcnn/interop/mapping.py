"""Which presets each source's files map onto, and the check and conversion of a file.

Owns the tables (`LAYOUTS`: the presets each source's names cover and the walk that
names them; `AUXILIARY`: tensors left out by design; `PRESET_ARGS`: preset arguments
a source's weights need; `RENAMES`: older names of published files) and what the
importer calls: `prepare`, `entries_for`, `convert`, `supported`. The names and
layouts themselves are `names`'s (torchvision, timm) and `keras_match`'s (Keras).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxcnn.errors import CheckpointError, listing
from jaxcnn.interop.keras_match import keras_entries
from jaxcnn.interop.names import (
    Entry,
    Shape,
    densenet_names,
    timm_mobilenet_v2,
    timm_vgg,
    torchvision_densenet,
    torchvision_googlenet,
    torchvision_inception_v3,
    torchvision_mobilenet_v2,
    torchvision_resnet,
    torchvision_sequential,
    torchvision_squeezenet,
)
from jaxcnn.spec import ModelSpec

_IGNORED = ("num_batches_tracked",)  # PyTorch batch-norm counters: not weights
_MAX_LISTED = 10


LAYOUTS: dict[tuple[str, str], Callable] = {
    ("vgg16", "torchvision"): torchvision_sequential,
    ("vgg16_bn", "torchvision"): torchvision_sequential,
    ("alexnet", "torchvision"): torchvision_sequential,
    ("resnet18", "torchvision"): torchvision_resnet,
    ("resnet34", "torchvision"): torchvision_resnet,
    ("resnet50", "torchvision"): torchvision_resnet,
    ("squeezenet1_1", "torchvision"): torchvision_squeezenet,
    ("mobilenet_v2", "torchvision"): torchvision_mobilenet_v2,
    ("googlenet", "torchvision"): torchvision_googlenet,
    ("densenet121", "torchvision"): torchvision_densenet,
    ("densenet201", "torchvision"): torchvision_densenet,
    ("inception_v3", "torchvision"): torchvision_inception_v3,
    ("vgg16", "timm"): timm_vgg,
    ("vgg16_bn", "timm"): timm_vgg,
    ("resnet18", "timm"): torchvision_resnet,  # timm's ResNets keep torchvision's names
    ("resnet34", "timm"): torchvision_resnet,
    ("resnet50", "timm"): torchvision_resnet,
    # timm's DenseNets and Inception v3 are torchvision's ports, with its names
    ("densenet121", "timm"): torchvision_densenet,
    ("densenet201", "timm"): torchvision_densenet,
    ("inception_v3", "timm"): torchvision_inception_v3,
    ("mobilenet_v2", "timm"): timm_mobilenet_v2,
    ("vgg16", "keras"): None,  # Keras: layers matched by kind and order (keras_entries)
    ("densenet121", "keras"): None,
    ("densenet201", "keras"): None,
    ("resnet50", "keras"): None,
    ("inception_v3", "keras"): None,
    ("mobilenet_v2", "keras"): None,
}

# Tensors of a source's file that the preset leaves out by design: the auxiliary
# classifier heads of GoogLeNet and Inception v3, which only train (torchvision's
# published files hold them). They are not imported, and the run's notes say so.
AUXILIARY: dict[tuple[str, str], tuple[str, ...]] = {
    ("googlenet", "torchvision"): ("aux1.", "aux2."),
    ("inception_v3", "torchvision"): ("AuxLogits.",),
    ("inception_v3", "timm"): ("AuxLogits.",),
}
# Preset arguments a source's weights need: Keras's DenseNets use batch norm's
# epsilon 1.001e-5 (torchvision's 1e-5); Keras's ResNet50 is ResNet v1 (the stride on
# a block's first 1x1 conv), its convs have biases and its epsilon is 1.001e-5; Keras's
# InceptionV3's batch norms have no scale and its average pools leave the padding out
# of the mean; Keras's MobileNetV2 pads its 3x3 convs as TF's "same" (bottom/right only
# for a stride-2 conv on an even size) and its batch norms are epsilon 1e-3, momentum
# 0.999.
PRESET_ARGS: dict[tuple[str, str], dict[str, float | str | bool]] = {
    ("densenet121", "keras"): {"epsilon": 1.001e-5},
    ("densenet201", "keras"): {"epsilon": 1.001e-5},
    ("resnet50", "keras"): {"stride_on": "1x1", "conv_bias": True, "epsilon": 1.001e-5},
    ("inception_v3", "keras"): {"bn_scale": False, "count_padding": False},
    ("mobilenet_v2", "keras"): {"padding": "same", "epsilon": 1e-3, "momentum": 0.999},
}
# Older names a source's published files use, renamed as the source renames them.
RENAMES: dict[tuple[str, str], Callable] = {
    ("densenet121", "torchvision"): densenet_names,
    ("densenet201", "torchvision"): densenet_names,
    ("densenet121", "timm"): densenet_names,
    ("densenet201", "timm"): densenet_names,
}


def prepare(
    arch: str, source: str, tensors: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The file's tensors under the names the layout uses, less the auxiliary heads'
    (`AUXILIARY`), and the names of those left out."""
    rename = RENAMES.get((arch, source))
    tensors = rename(tensors) if rename else dict(tensors)
    auxiliary = AUXILIARY.get((arch, source), ())
    left_out = [n for n in tensors if n.startswith(auxiliary)] if auxiliary else []
    for name in left_out:
        del tensors[name]
    return tensors, left_out


def supported() -> str:
    return ", ".join(f"{arch} from {source}" for arch, source in LAYOUTS)


def _check_layout(arch: str, source: str) -> None:
    if (arch, source) not in LAYOUTS:
        raise CheckpointError(
            f"no {source} layout for architecture {arch!r}; jaxcnn imports "
            f"{supported()}"
        )


# --------------------------------------------------------------------------- check
def entries_for(
    spec: ModelSpec,
    arch: str,
    source: str,
    shapes_: Mapping[str, Shape],
    tensors: Mapping[str, np.ndarray],
) -> list[Entry]:
    """The entries mapping a `source` file of architecture `arch` onto `spec`."""
    _check_layout(arch, source)
    if source == "keras":
        return keras_entries(spec, shapes_, tensors)
    return LAYOUTS[arch, source](spec, shapes_)


def convert(
    entries: Sequence[Entry],
    tensors: Mapping[str, np.ndarray],
    shapes_: Mapping[str, Shape],
    *,
    file: str,
    arch: str,
    source: str,
) -> dict[str, np.ndarray]:
    """{jaxcnn path: array} from the file's tensors, once they match `entries` exactly.

    Every parameter and batch-norm statistic of the model (`shapes_`) must be covered,
    and every tensor of the file used (PyTorch's num_batches_tracked aside).

    Raises:
      CheckpointError: naming the first tensor whose shape differs (both shapes), the
        tensors the file lacks and those it has beyond the architecture.
    """
    expected = {e.source for e in entries}
    present = [n for n in tensors if not n.endswith(_IGNORED)]
    missing = [e.source for e in entries if e.source not in tensors]
    unexpected = [n for n in present if n not in expected]
    mismatch = next(
        (
            e
            for e in entries
            if e.source in tensors
            and tuple(np.shape(tensors[e.source])) != e.source_shape()
        ),
        None,
    )
    uncovered = sorted(set(shapes_) - {e.path for e in entries})
    problems = []
    if mismatch is not None:
        got = tuple(np.shape(tensors[mismatch.source]))
        problems.append(
            f"tensor {mismatch.source!r} has shape {_shape(got)} in the file but "
            f"{arch} needs {_shape(mismatch.source_shape())} (jaxcnn's "
            f"{mismatch.path} {_shape(mismatch.shape)})"
        )
    if missing:
        problems.append(f"the file lacks {_listing(missing)}")
    if unexpected:
        problems.append(
            f"the file has tensors {arch} has no place for: {_listing(unexpected)}"
        )
    if uncovered:  # a layout that misses a parameter of the spec
        problems.append(f"no tensor of the file maps to {_listing(uncovered)}")
    if problems:
        raise CheckpointError(
            f"{file} does not match architecture {arch!r} in {source}'s names and "
            f"layout: " + "; ".join(problems) + f". Import a {source} {arch} at its "
            f"published configuration (`jaxcnn summary {arch}` shows it)"
        )
    out = {}
    for e in entries:
        value = tensors[e.source]
        if value.dtype.kind != "f":
            raise CheckpointError(
                f"{file}: tensor {e.source!r} holds {value.dtype} values, not floats"
            )
        out[e.path] = e.convert(value)
    return out


def _shape(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _listing(names: Sequence[str]) -> str:
    return listing([repr(n) for n in names], _MAX_LISTED)
