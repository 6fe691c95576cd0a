"""Every scenario of tests/ops/scenarios.py on every implementation other than
the reference (C++ with each of its AKD implementations, the dispatcher
``backend="auto"``, Triton with its default and its GPU tile size), compared
with the PyTorch reference: maps at atol 1e-5, integer statistics exactly,
float statistics at atol 1e-5. The parametrisation is made in conftest.py."""
import torch

from dcam.ops import reference
from dcam.ops.library import pool_reference


def test_refine_matches_reference(refine_case, refine_impl, scenarios):
    args = refine_case.args()
    ref = scenarios.Out(*reference.refine_reference(*args))
    got = refine_impl.refine(args)
    scenarios.compare(ref, got, scenarios.Out._fields, f"{refine_impl.id} on {refine_case.id}")


def test_pool_matches_reference(pool_case, pool_impl, scenarios):
    acts, grads, h, w = pool_case.build()
    relu = pool_case.grad_relu
    ref = scenarios.PoolOut(*pool_reference(acts, grads, h, w, relu, False))
    got = pool_impl.pool(acts, grads, h, w, relu, False)
    scenarios.compare(ref, got, scenarios.PoolOut._fields, f"{pool_impl.id} on {pool_case.id}")
    # the pass that also looks for NaN/Inf in the gradients gives the same bits and finds none
    checked = pool_impl.pool(acts, grads, h, w, relu, True)
    assert torch.equal(checked.maps, got.maps) and torch.equal(checked.degenerate, got.degenerate)
    assert not bool(checked.grads_nonfinite)


def test_refine_scenario_reaches_its_branch(expect_refine_case, scenarios):
    """The scenario does what its name says on the reference (a DACG strategy,
    the SICD guard, a kernel cap...): checked against hand-known values."""
    x = expect_refine_case.build()
    out = scenarios.Out(*reference.refine_reference(*expect_refine_case.args()))
    expect_refine_case.expect(x, out)


def test_pool_scenario_reaches_its_branch(expect_pool_case, scenarios):
    acts, grads, h, w = expect_pool_case.build()
    out = scenarios.PoolOut(*pool_reference(acts, grads, h, w, expect_pool_case.grad_relu, False))
    expect_pool_case.expect(out)
