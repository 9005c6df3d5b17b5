"""Readers of other frameworks' weight files: name -> float32 numpy array, code never run.

* PyTorch / torchvision state dicts (`.pth`, `.pt`, `.bin`): `torch.load(...,
  weights_only=True)`, PyTorch's restricted unpickler, which builds tensors and plain
  containers only and refuses any other object in the file.
* safetensors files (timm, Hugging Face): the `safetensors` numpy API; the format holds
  raw tensors and a JSON header, nothing executable.
* Keras weights (`.weights.h5` of Keras 3, and the `.h5` weight files of Keras 2, which
  Keras's published application weights are): h5py. Names are the HDF5 dataset paths,
  in the model's layer order.

Each library is imported when its reader runs; a missing one is a JaxcnnError naming
the `jaxcnn[interop]` extra.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from jaxcnn.errors import CheckpointError, JaxcnnError

Tensors = dict[str, np.ndarray]

SOURCES = ("torchvision", "timm", "keras")
_SUFFIXES = {
    ".pth": "torchvision",
    ".pt": "torchvision",
    ".bin": "torchvision",
    ".safetensors": "timm",
    ".h5": "keras",
    ".hdf5": "keras",
}


def _require(module: str, what: str):
    """Imports `module`, or says which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise JaxcnnError(
            f"reading {what} needs the Python package {module!r}, which is not "
            f"installed; install jaxcnn's interop extra: pip install 'jaxcnn[interop]'"
        ) from None


def guess_source(path: str | os.PathLike) -> str:
    """The source framework a weight file's suffix implies.

    Raises:
      JaxcnnError: an unknown suffix (the message lists the known ones).
    """
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        known = ", ".join(f"{s} ({n})" for s, n in _SUFFIXES.items())
        raise JaxcnnError(
            f"cannot tell which framework wrote {path} from its suffix {suffix!r}; "
            f"pass --from {'|'.join(SOURCES)} (known suffixes: {known})"
        )
    return _SUFFIXES[suffix]


def read_weights(path: str | os.PathLike, source: str) -> Tensors:
    """The tensors of a weight file by name, as float32 numpy arrays (integer ones kept).

    Args:
      path: the file.
      source: "torchvision" (a PyTorch state dict; a safetensors file also reads),
        "timm" (safetensors; a PyTorch state dict also reads) or "keras" (HDF5).

    Raises:
      JaxcnnError: unknown source, missing library.
      CheckpointError: the file is missing, unreadable, or not a weight file of that kind.
    """
    if source not in SOURCES:
        raise JaxcnnError(
            f"unknown weight source {source!r}; sources are {', '.join(SOURCES)}"
        )
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist")
    if source == "keras":
        return read_keras(path)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path)
    return read_torch(path)


def read_torch(path: str | os.PathLike) -> Tensors:
    """A PyTorch state dict (`torch.save(model.state_dict(), path)`), weights only.

    A checkpoint dict holding the state dict under "state_dict" or "model" reads too;
    a "module." prefix (torch.nn.DataParallel) is dropped.
    """
    torch = _require("torch", "a PyTorch state dict")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError for non-zip files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path} is not a PyTorch state dict that loads with "
            f"torch.load(weights_only=True) ({type(e).__name__}: {first[:300]}); jaxcnn "
            f"reads only tensors, never code from a pickle: save the weights with "
            f"torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict of tensors; save "
            f"the weights with torch.save(model.state_dict(), path)"
        )
    out: Tensors = {}
    for name, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                f"expected a state dict (torch.save(model.state_dict(), path))"
            )
        name = str(name).removeprefix("module.")
        value = value.detach().cpu()
        out[name] = (
            value.float().numpy() if value.is_floating_point() else value.numpy()
        )
    return out


def read_safetensors(path: str | os.PathLike) -> Tensors:
    """A safetensors file (timm's, Hugging Face's), through its numpy API."""
    safetensors_numpy = _require("safetensors.numpy", "a safetensors file")
    try:
        loaded = safetensors_numpy.load_file(os.fspath(path))
    except Exception as e:  # SafetensorError, bfloat16 (numpy has no such dtype), ...
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: "
            f"{str(e)[:300]})"
        ) from None
    return {
        name: value.astype(np.float32) if value.dtype.kind == "f" else value
        for name, value in loaded.items()
    }


def read_keras(path: str | os.PathLike) -> Tensors:
    """A Keras weights file: Keras 3's `.weights.h5` or a Keras 2 `.h5` weight file.

    Names are the HDF5 dataset paths (`layers/conv2d_1/vars/0` in Keras 3,
    `block1_conv1/block1_conv1/kernel` in Keras 2 files), in the model's layer order
    and each layer's weight order; `keras_layers` groups them by layer.
    """
    h5py = _require("h5py", "a Keras weights file")
    try:
        with h5py.File(path, "r") as f:
            if "layers" in f and "layer_names" not in f.attrs:
                return _keras3(f)
            if "model_weights" in f:  # a whole model saved by Keras 2 (model.save)
                return _keras2(f["model_weights"], "model_weights/")
            if "layer_names" in f.attrs:
                return _keras2(f, "")
    except OSError as e:
        raise CheckpointError(
            f"{path} is not a readable HDF5 file ({str(e)[:300]})"
        ) from None
    raise CheckpointError(
        f"{path} is an HDF5 file but not a Keras weights file (no 'layers' group and no "
        f"'layer_names' attribute); save weights with model.save_weights(...)"
    )


def _keras3(f) -> Tensors:
    """Keras 3 names layers by class and count (conv2d, conv2d_1, ...): sorted so."""

    def order(name: str):
        match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
        return match.group(1), int(match.group(2) or 0)

    out: Tensors = {}
    for layer in sorted(f["layers"], key=order):
        variables = f["layers"][layer].get("vars")
        if variables is None:
            continue
        for index in sorted(variables, key=int):
            out[f"layers/{layer}/vars/{index}"] = _array(variables[index])
    return out


def _keras2(group, prefix: str) -> Tensors:
    out: Tensors = {}
    for layer in group.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        names = group[layer].attrs.get("weight_names", [])
        for name in names:
            name = name.decode() if isinstance(name, bytes) else str(name)
            out[f"{prefix}{layer}/{name}"] = _array(group[layer][name])
    return out


def _array(dataset) -> np.ndarray:
    value = np.asarray(dataset[()])
    return value.astype(np.float32) if value.dtype.kind == "f" else value


def keras_layers(tensors: Tensors) -> list[tuple[str, list[str]]]:
    """The weighted layers of a `read_keras` result: (layer, its tensor names) in order."""
    layers: dict[str, list[str]] = {}
    for name in tensors:
        if name.startswith("layers/"):  # Keras 3: layers/<layer>/vars/<i>
            layer = "/".join(name.split("/")[:2])
        else:  # Keras 2: [model_weights/]<layer>/<weight name, may hold a />
            prefix = "model_weights/" if name.startswith("model_weights/") else ""
            layer = prefix + name.removeprefix(prefix).split("/")[0]
        layers.setdefault(layer, []).append(name)
    return list(layers.items())
