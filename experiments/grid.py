"""The full filters x stride x pooling grid on MNIST and Fashion-MNIST, 3 seeds per point.

python -m experiments.grid --workdir runs/grid          (or: jaxcnn sweep experiments/grid.py)
JAXCNN_BUDGET=long python -m experiments.grid --workdir runs/grid-long
JAXCNN_BUDGET=full python -m experiments.grid --workdir runs/grid-full
jaxcnn sweep compare runs/grid runs/grid-long           does the ranking hold?
python -m experiments.grid --smoke                      finishes in seconds (digits)
2 datasets x 3 filter counts x 3 strides x 3 pooling choices (54 points; the 12 stride-3
+ pooling points shrink the map below the pool window and are recorded invalid at no
cost), simple_cnn of depth 2, 3 seeds per point (mean and 95 % interval; the report
marks the points tied with the best). Budgets (experiments/_common.py): short (default)
= 2 epochs on the first 4,000 training images, long = 3 epochs on the first 12,000,
full = 3 epochs on all 54,000 (validation: the last 6,000 training images; test: the
full test split). ~4 min on 2 CPU cores of an AMD EPYC Zen 5 at the short budget (~9 min
on a Zen 3), 8.5 min at the long one (Zen 5); full, by training images, ~30-40 min.
Expect stride 1 ahead of stride 2, stride 2 with pooling (maps collapsed to 1x1) at the
bottom, and max pooling never behind avg. Measured results at two budgets and their
reading: experiments/results/grid/README.md.
"""

from . import _common

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
