"""Pooling kinds, window and stride, and global pooling vs flatten.

python experiments/pooling.py --workdir runs/pooling   (or: jaxcnn sweep experiments/pooling.py)
python experiments/pooling.py --smoke                  finishes in seconds (digits)
~15 min on 2 CPU cores: max / avg / sum / lp / geometric / harmonic pooling x window 2, 3
(stride = window) on MNIST / Fashion-MNIST, plus two file specs that differ only in the
head: global average pooling vs flatten (experiments/specs/); simple_cnn depth 2 with
32 filters, 2 epochs on the first 4,000 training images.
Expect: max pooling leads slightly; avg and lp (p=2) are close; sum pooling trains but
is scale-sensitive; geometric and harmonic means are sensitive to near-zero ReLU
outputs and trail. Window 3 cuts FLOPs and parameters at a small accuracy cost.
Global average pooling uses far fewer parameters than flatten for a few points of
accuracy after this short training.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

SETTINGS = {"name": "pooling"}
KINDS = ("max", "avg", "sum", "lp", "geometric", "harmonic")


def base(smoke: bool = False):
    return _common.base_config(smoke, epochs=2, train_examples=4000, filters=32)


def sweep(smoke: bool = False) -> list[dict]:
    points = []
    for name in _common.datasets(smoke):
        data = _common.dataset_point(name)
        for window in (2,) if smoke else (2, 3):
            points += [
                {**data, "model.pool": k, "model.pool_window": window} for k in KINDS
            ]
        for head in ("global_avg", "flatten"):
            points.append(
                {
                    "data.dataset": name,
                    "model.name": str(HERE / "specs" / f"head_{head}.toml"),
                    "model.args": {"input_shape": list(_common.SHAPES[name])},
                }
            )
    return points


if __name__ == "__main__":
    _common.main(__file__)
