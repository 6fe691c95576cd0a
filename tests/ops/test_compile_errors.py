"""What a torch.compile'd caller gets for bad input (torch 2.13; README "How a call is dispatched").

An error in values is raised by the checked op when the graph runs: the InputError itself
(test_compile_checked.py). An argument error that needs no values (here a grid whose cells do not match
the 6 image tokens: 4 x 2 = 8) is met while dynamo traces, and dynamo keeps it: with fullgraph=True a
public function's becomes torch._dynamo.exc.Unsupported ("Observed exception", the InputError's repr in
its message), a direct op call's (its fake kernel's) torch._dynamo.exc.TorchRuntimeError with or without
fullgraph, the InputError kept as its context's cause. Without fullgraph the public function's graph
breaks and the eager call raises the InputError. The messages are written out by hand."""
import pytest
import torch
from torch._dynamo.exc import TorchDynamoException, TorchRuntimeError, Unsupported

import dcam
import dcam.ops.api  # noqa: F401  (the ops)
from dcam.errors import InputError

GRID_ERROR = "grid 4x2 = 8 tokens does not match the image-token span of 6 tokens"
OP_ERROR = "dcam::pool_gradients: (h, w) 4x2 = 8 tokens does not match the image-token span of 6 tokens"


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 6, 4, generator=gen), torch.randn(2, 3, 6, 4, generator=gen)


def _public(acts, grads):
    return dcam.pool_gradients(acts, grads, (4, 2)).maps


def _direct(acts, grads):
    return torch.ops.dcam.pool_gradients(acts, grads, 4, 2, True, False)[0]


def _compiled(fn, fullgraph):
    torch._dynamo.reset()  # (each case traces afresh)
    return torch.compile(fn, fullgraph=fullgraph, backend="eager")


def test_eagerly_both_calls_raise_the_input_error():
    for call, message in ((_public, GRID_ERROR), (_direct, OP_ERROR)):
        with pytest.raises(InputError) as err:
            call(*_inputs())
        assert str(err.value) == message


def test_a_public_functions_argument_error_under_fullgraph_is_dynamos_unsupported():
    with pytest.raises(Unsupported) as err:
        _compiled(_public, fullgraph=True)(*_inputs())
    assert not isinstance(err.value, InputError) and isinstance(err.value, (TorchDynamoException, RuntimeError))
    assert f"InputError({GRID_ERROR!r})" in str(err.value)


def test_a_public_functions_argument_error_without_fullgraph_is_the_input_error():
    with pytest.raises(InputError) as err:
        _compiled(_public, fullgraph=False)(*_inputs())
    assert str(err.value) == GRID_ERROR


@pytest.mark.parametrize("fullgraph", [True, False])
def test_a_direct_op_calls_argument_error_is_a_torch_runtime_error_holding_it(fullgraph):
    with pytest.raises(TorchRuntimeError) as err:
        _compiled(_direct, fullgraph)(*_inputs())
    assert not isinstance(err.value, InputError)
    kept = err.value.__context__.__cause__
    assert type(kept) is InputError and str(kept) == OP_ERROR
