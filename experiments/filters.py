"""Effect of the filter count (width of the first conv stage; it doubles per stage).

python -m experiments.filters --workdir runs/filters   (or: jaxcnn sweep experiments/filters.py)
python -m experiments.filters --smoke                  finishes in seconds (digits)
~10 min on 2 CPU cores: 8, 16, 32, 64, 128 filters x MNIST / Fashion-MNIST, simple_cnn
depth 2 with max pooling, 2 epochs on the first 4,000 training images.
Expect: test accuracy rises steeply from 8 to 32 filters and flattens after, while parameters and FLOPs grow ~4x per doubling (the
second stage's conv dominates): the knee of the accuracy-vs-FLOPs Pareto front sits at
16-32 filters.
"""

from . import _common

SETTINGS = {"name": "filters"}


def base(smoke: bool = False):
    return _common.base_config(smoke, epochs=2, train_examples=4000, pool="max")


def sweep(smoke: bool = False) -> list[dict]:
    counts = (4, 8) if smoke else (8, 16, 32, 64, 128)
    return [
        {**_common.dataset_point(name), "model.filters": n}
        for name in _common.datasets(smoke)
        for n in counts
    ]


if __name__ == "__main__":
    _common.main(__file__)
