"""Pooling kinds, window and stride, and global pooling vs flatten.

python -m experiments.pooling --workdir runs/pooling   (or: jaxcnn sweep experiments/pooling.py)
python -m experiments.pooling --smoke                  finishes in seconds (digits)
~2 min on 2 CPU cores (one seed per point): max / avg / sum / lp /
geometric / harmonic pooling x window 2, 3 (stride = window) on MNIST / Fashion-MNIST,
plus two file specs that differ only in the head: global average pooling vs flatten
(experiments/specs/); simple_cnn depth 2 with 32 filters, 2 epochs on the first 4,000
training images (62 steps).
Expect max pooling ahead at window 2, geometric and harmonic means behind (a window
holding a ReLU zero pools to exactly 0), window 3 costing accuracy after this short
training, and the global-average-pooling head far behind flatten (it needs longer
training: experiments/allconv.py). One run's numbers: experiments/results/pooling/README.md.
"""

import pathlib

from . import _common

HERE = pathlib.Path(__file__).resolve().parent

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
