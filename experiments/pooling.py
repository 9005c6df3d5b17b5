"""Pooling kinds, window and stride, and global pooling vs flatten.

python -m experiments.pooling --workdir runs/pooling   (or: jaxcnn sweep experiments/pooling.py)
python -m experiments.pooling --smoke                  finishes in seconds (digits)
~2 min on 2 CPU cores (Zen 5, 2026-12-02; one seed per point): max / avg / sum / lp /
geometric / harmonic pooling x window 2, 3 (stride = window) on MNIST / Fashion-MNIST,
plus two file specs that differ only in the head: global average pooling vs flatten
(experiments/specs/); simple_cnn depth 2 with 32 filters, 2 epochs on the first 4,000
training images (62 steps).
Expect (one seed, measured at 24de35f; differences of a point or two are within seed
noise, see experiments/results/grid/): at window 2 max pooling leads on both datasets
(MNIST 0.938, Fashion-MNIST 0.783), sum / lp / avg follow within 1-3 points on MNIST,
and geometric and harmonic means trail by ~5 points on MNIST (a window holding a ReLU
zero pools to exactly 0). Window 3 costs 5-18 points after this short training for a
third of the parameters and FLOPs. The global-average-pooling head barely learns in 62
steps (MNIST 0.15, Fashion-MNIST 0.37) where flatten reaches 0.94 / 0.82: it needs far
longer training (experiments/allconv.py trains such networks for 3-6 epochs).
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
