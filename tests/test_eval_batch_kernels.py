"""benchmarks/eval_batch_kernels.py's variants force the plans they name."""

import dataclasses
import pathlib
import sys

import pytest

from jaxcnn import kernels, models

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import eval_batch_kernels as bench  # noqa: E402


def _impls(model, batch):
    choice = dataclasses.replace(model.kernel_choice, forward_only=True)
    shape = (batch, *model.spec.input_shape)
    plan = kernels.input_plan(model.spec, shape, choice, "cpu")
    return [(p.conv or p.pool, p.crop) for p in plan.walk() if p.conv or p.pool]


@pytest.mark.parametrize("name", [*bench.MODELS, "simple_cnn:8,2,avg"])
def test_the_variants_force_the_plans_they_name(name):
    model = bench.build(name)
    hand = bench.hand_kernels(model)
    planned = {batch: _impls(model, batch) for batch in (1, 2)}

    def forced(variant, batch):
        models.set_kernels(model, **bench.variant_kernels(hand, variant))
        return _impls(model, batch)

    # `hand` at batch 1 is the plan of two images; after "xla" ran, too
    assert forced("xla", 2) == [("xla", None)] * len(planned[2])
    assert forced("hand", 1) == planned[2]
    assert forced("plan", 1) == planned[1]
    models.set_kernels(model, kernels="fast")
    assert forced("fast", 2) == _impls(model, 2)
    convs = {p.conv for p in model.kernel_plan(forward_only=True).walk() if p.conv}
    assert "xla" not in convs  # the hand-written convs, in a forward pass too
    with pytest.raises(ValueError, match="unknown variant"):
        bench.variant_kernels(hand, "fastest")
