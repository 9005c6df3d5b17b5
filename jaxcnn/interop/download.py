"""Published weight files: their addresses and hashes, a checked download, the cache.

A download streams into a temporary file beside its destination while hashing it; only
a file whose length and hash are right is renamed (atomically) to its cache name. A
cached file is hashed again before each use, so a damaged one is fetched afresh, never
used. Without network the error says which address to fetch and where to put the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from jaxcnn.errors import CheckpointError, JaxcnnError

CACHE_ENV = "JAXCNN_WEIGHTS_CACHE"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Published:
    """A published weight file: where it is and what its bytes hash to.

    `digest` is a hex prefix of the hash (torchvision's file names carry the first 8
    hex digits of the sha256) or the whole hash (Keras publishes md5s).
    """

    url: str
    algorithm: str  # "sha256" or "md5"
    digest: str

    @property
    def filename(self) -> str:
        return pathlib.PurePosixPath(urllib.parse.urlparse(self.url).path).name


PUBLISHED: dict[tuple[str, str], Published] = {
    ("vgg16", "torchvision"): Published(
        "https://download.pytorch.org/models/vgg16-397923af.pth", "sha256", "397923af"
    ),
    ("vgg16_bn", "torchvision"): Published(
        "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
        "sha256",
        "6c64b313",
    ),
    ("alexnet", "torchvision"): Published(
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "sha256",
        "7be5be79",
    ),
    ("resnet18", "torchvision"): Published(
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "sha256",
        "f37072fd",
    ),
    ("resnet34", "torchvision"): Published(
        "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "sha256",
        "b627a593",
    ),
    ("resnet50", "torchvision"): Published(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "sha256",
        "0676ba61",
    ),
    ("squeezenet1_1", "torchvision"): Published(
        "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        "sha256",
        "b8a52dc0",
    ),
    ("mobilenet_v2", "torchvision"): Published(
        "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        "sha256",
        "b0353104",
    ),
    ("googlenet", "torchvision"): Published(
        "https://download.pytorch.org/models/googlenet-1378be20.pth",
        "sha256",
        "1378be20",
    ),
    ("densenet121", "torchvision"): Published(
        "https://download.pytorch.org/models/densenet121-a639ec97.pth",
        "sha256",
        "a639ec97",
    ),
    ("densenet201", "torchvision"): Published(
        "https://download.pytorch.org/models/densenet201-c1103571.pth",
        "sha256",
        "c1103571",
    ),
    ("inception_v3", "torchvision"): Published(
        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        "sha256",
        "0cc3c7bd",
    ),
    ("vgg16", "keras"): Published(
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "md5",
        "64373286793e3c8b2b4e3219cbf3544b",
    ),
    ("densenet121", "keras"): Published(
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
        "densenet121_weights_tf_dim_ordering_tf_kernels.h5",
        "md5",
        "9d60b8095a5708f2dcce2bca79d332c7",
    ),
    ("densenet201", "keras"): Published(
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
        "densenet201_weights_tf_dim_ordering_tf_kernels.h5",
        "md5",
        "1ceb130c1ea1b78c3bf6114dbdfd8807",
    ),
    ("resnet50", "keras"): Published(
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        "md5",
        "2cb95161c43110f7111970584f804107",
    ),
    ("inception_v3", "keras"): Published(
        "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        "md5",
        "9a0d58056eeedaa3f26cb7ebd46da564",
    ),
}


def cache_dir() -> pathlib.Path:
    """$JAXCNN_WEIGHTS_CACHE, else ~/.cache/jaxcnn/weights."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "jaxcnn" / "weights"


def published(arch: str, source: str) -> Published:
    """The published file of `arch` from `source`.

    Raises:
      JaxcnnError: none is known (the message lists those that are).
    """
    if (arch, source) not in PUBLISHED:
        known = ", ".join(f"{a} from {s}" for a, s in PUBLISHED)
        raise JaxcnnError(
            f"no published {source} weights of {arch!r} are known to jaxcnn; known: "
            f"{known}. Import a file you have with `jaxcnn import FILE --arch {arch}`"
        )
    return PUBLISHED[arch, source]


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pretrained_file(
    arch: str,
    source: str,
    *,
    cache: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """The cached published weight file of `arch` from `source`, downloaded if needed.

    Args:
      arch, source: e.g. "vgg16", "torchvision" (`PUBLISHED` lists them).
      cache: the cache folder (default `cache_dir()`).
      timeout: seconds a connection may stall.

    Returns:
      The path of a file whose hash is the published one.

    Raises:
      JaxcnnError: no published file is known, or it cannot be downloaded (the message
        says what to fetch and where to put it).
      CheckpointError: the download's length or hash is wrong (nothing is kept).
    """
    entry = published(arch, source)
    folder = pathlib.Path(cache) if cache is not None else cache_dir()
    dest = folder / entry.filename
    if dest.is_file():
        if file_digest(dest, entry.algorithm).startswith(entry.digest):
            return dest
        dest.unlink()  # damaged or replaced: fetch it afresh
    download(entry, dest, timeout=timeout)
    return dest


def download(entry: Published, dest: pathlib.Path, *, timeout: float = 60.0) -> None:
    """Fetches `entry.url` to `dest`, atomically, checking its length and hash.

    Raises:
      JaxcnnError: no connection (saying where to put a copy fetched elsewhere).
      CheckpointError: a short read or a wrong hash; no file is left at `dest`.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(
            f"cannot create the weight cache {dest.parent} ({e.strerror}); set "
            f"{CACHE_ENV} to a writable folder"
        ) from None
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.new(entry.algorithm)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(entry.url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                if isinstance(e, http.client.IncompleteRead):
                    raise CheckpointError(
                        f"the download of {entry.url} broke off after "
                        f"{received + len(e.partial):,} bytes; nothing was kept. Try again"
                    ) from None
                raise JaxcnnError(_offline(entry, dest, e)) from None
            out.flush()
            os.fsync(out.fileno())
        if length is not None and received != int(length):
            raise CheckpointError(
                f"the download of {entry.url} ended after {received:,} of {int(length):,} "
                f"bytes; nothing was kept. Try again"
            )
        digest = h.hexdigest()
        if not digest.startswith(entry.digest):
            raise CheckpointError(
                f"the file downloaded from {entry.url} has {entry.algorithm} {digest}, "
                f"but the published one starts with {entry.digest}: it is not the "
                f"published file (damaged in transfer, or changed); nothing was kept"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _offline(entry: Published, dest: pathlib.Path, error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return (
        f"cannot download {entry.url} ({reason}). On a machine with network access, "
        f"fetch that file and put it at {dest} (its {entry.algorithm} starts with "
        f"{entry.digest}; set {CACHE_ENV} to use another folder), then run the import "
        f"again"
    )
