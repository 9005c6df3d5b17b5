"""Other frameworks' weight files: reading them, mapping them onto jaxcnn's presets.

`import_weights(FILE, ARCH, WORKDIR)` turns a torchvision/PyTorch state dict, a timm
safetensors file or a Keras weights file of a preset into an ordinary run directory
(`jaxcnn import` on the command line); `import_pretrained` downloads the published file
first. torch, safetensors and h5py are imported only when a file of theirs is read (the
`jaxcnn[interop]` extra); training never needs them.

Modules: `readers` (files -> named numpy arrays, no code executed), `names`
(torchvision's and timm's names and layouts -> jaxcnn parameter paths), `keras_match`
(Keras files matched to jaxcnn's layers by kind and order), `mapping` (the tables of
which presets each source covers, the architecture check and conversion), `imagenet`
(class names, each source's preprocessing), `download` (published files: hash-checked,
cached), `importer` (the run directory).
"""

from jaxcnn.interop.download import PUBLISHED, pretrained_file
from jaxcnn.interop.importer import Imported, import_pretrained, import_weights
from jaxcnn.interop.mapping import LAYOUTS
from jaxcnn.interop.readers import SOURCES, read_weights

__all__ = [
    "LAYOUTS",
    "PUBLISHED",
    "SOURCES",
    "Imported",
    "import_pretrained",
    "import_weights",
    "pretrained_file",
    "read_weights",
]
