"""benchmarks/batch1_kernels.py forces, at batch 1, the plan a bigger batch gets."""

import dataclasses
import pathlib
import sys

import pytest

from jaxcnn import kernels, models

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import batch1_kernels  # noqa: E402


@pytest.mark.parametrize("name", batch1_kernels.PRESETS)
def test_the_eval_plan_variant_is_the_plan_of_a_bigger_batch(name):
    model = models.build_model(models.preset(name), seed=0)
    forced = models.build_model(models.preset(name), seed=0)
    models.set_kernels(forced, **batch1_kernels.eval_plan_kernels(forced))
    shape = model.spec.input_shape

    def plan(model, batch):
        choice = dataclasses.replace(model.kernel_choice, forward_only=True)
        return kernels.input_plan(model.spec, (batch, *shape), choice, "cpu")

    single, bigger = plan(forced, 1), plan(model, 2)
    assert [p.conv or p.pool for p in single.walk()] == [
        p.conv or p.pool for p in bigger.walk()
    ]
    assert [p.crop for p in single.walk()] == [p.crop for p in bigger.walk()]
    assert {p.conv for p in plan(model, 1).walk() if p.conv} == {"xla"}
