"""The full filters x stride x pooling grid on MNIST and Fashion-MNIST, 3 seeds per point.

python experiments/grid.py --workdir runs/grid          (or: jaxcnn sweep experiments/grid.py)
JAXCNN_BUDGET=long python experiments/grid.py --workdir runs/grid-long
python experiments/grid.py --smoke                      finishes in seconds (digits)
2 datasets x 3 filter counts x 3 strides x 3 pooling choices (54 points; the 12 stride-3
+ pooling points shrink the map below the pool window and are recorded invalid at no
cost), simple_cnn of depth 2, 3 seeds per point (mean and 95 % interval; the report
marks the points tied with the best). Budgets (experiments/_common.py): short (default)
= 2 epochs on the first 4,000 training images, long = 3 epochs on the first 12,000
(validation: 10 % carved from train; test: the full test split).
~20-40 min on 2 CPU cores at the short budget, ~40-80 min at the long one (126 fits;
extrapolated from two timed points: ~10 s per fit with compile and testing, training
~0.13x the train_seconds of the single-seed run in experiments/results/grid; the upper
ends allow for other jobs sharing the cores). Rerunning the short budget in a
directory that holds a finished single-seed run trains only seeds 1 and 2.
Expect: accuracy rises with filters; stride 1 + max pooling or stride 2 without pooling
are the efficient choices (MNIST ~92-94 %, Fashion ~74-78 % at the short budget);
stride 2 + pooling shrinks the maps to 1x1 and loses 15-45 points; max pooling beats avg
by 1-3 points; stride 1 without pooling is the most accurate but 10-20x the parameters.
With 3 seeds, differences of about a point are ties (overlapping intervals); compare
the two budgets' tie groups to see which rankings hold with 4.5x the training.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402

SETTINGS = {"name": "grid", "seeds": 3}


def base(smoke: bool = False):
    return _common.base_config(smoke, **_common.budget())


def sweep(smoke: bool = False) -> list[dict]:
    # smoke: 4 points x 3 seeds, enough to draw every figure
    filters = (4,) if smoke else (8, 16, 32)
    strides = (1, 2) if smoke else (1, 2, 3)
    pools = ("max", "none") if smoke else ("max", "avg", "none")
    return [
        {
            **_common.dataset_point(name),
            "model.filters": f,
            "model.stride": s,
            "model.pool": p,
        }
        for name in _common.datasets(smoke)
        for p in pools
        for s in strides
        for f in filters
    ]


if __name__ == "__main__":
    _common.main(__file__)
