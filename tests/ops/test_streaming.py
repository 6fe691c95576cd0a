"""dcam.ops.WeightStream: channel weights chunk by chunk into one table (the explainer's
streamed pooling, and dcam bench's streamed case). Its table must hold, bit for bit, the
weights of one channel_weights call on all the gradients, and its maps those of one
pool_gradients call, on every backend; independently, the weights are the float64 mean
of the (positive) gradients computed here with numpy."""
import numpy as np
import pytest
import torch

import dcam
from dcam.errors import InputError, NonFiniteError
from dcam.ops import WeightStream

AVAILABLE = dcam.available_backends()


def _inputs(B, T, N, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, N, D, generator=g).to(dtype)
    grads = torch.randn(B, T, N, D, generator=g).to(dtype)
    return acts.to(device), grads.to(device)


def _streamed(grads, chunk, grad_relu, backend, check_finite=True):
    B, T, _, D = grads.shape
    stream = WeightStream(B, T, D, grad_relu=grad_relu, backend=backend, device=grads.device,
                          check_finite=check_finite)
    for c in range(0, T, chunk):
        stream.add(grads[:, c:c + chunk])
        assert stream.added == min(T, c + chunk)
    return stream.weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("grad_relu", [True, False], ids=["relu", "signed"])
def test_streamed_weights_and_maps_are_one_calls_bit_for_bit(any_backend, dtype, grad_relu):
    backend, device = any_backend
    # B=2 images, T=7 tokens in chunks of 3 (the last one of 1), N=12 image tokens in a 3x4 grid, D=40
    # (two 16-feature blocks and a tail of 8)
    B, T, N, D, grid = 2, 7, 12, 40, (3, 4)
    acts, grads = _inputs(B, T, N, D, dtype, device)
    weights = _streamed(grads, 3, grad_relu, backend)
    assert weights.shape == (B, T, D) and weights.dtype == torch.float32 and weights.device.type == device
    whole = dcam.channel_weights(grads, grad_relu, backend=backend)
    assert torch.equal(weights, whole)
    g64 = grads.double().cpu().numpy()
    expected = (np.maximum(g64, 0) if grad_relu else g64).mean(axis=2)
    np.testing.assert_allclose(weights.cpu().numpy(), expected, rtol=1e-6, atol=1e-7)
    maps = dcam.weighted_maps(acts, weights, grid, backend=backend)
    one = dcam.pool_gradients(acts, grads, grid, grad_relu, backend=backend)
    assert torch.equal(maps.degenerate, one.degenerate)
    if grad_relu or (backend in ("cpp", "auto") and device == "cpu"):
        assert torch.equal(maps.maps, one.maps)
    else:  # the reference's (and Triton's) signed product is one matrix product whole, another split in two
        torch.testing.assert_close(maps.maps, one.maps, atol=1e-6, rtol=0)


@pytest.mark.skipif("cpp" not in AVAILABLE, reason="the C++ backend is not built")
def test_the_cpp_stream_writes_the_table_in_place_and_takes_any_chunk():
    acts, grads = _inputs(1, 9, 8, 24, torch.bfloat16, "cpu", seed=1)
    stream = WeightStream(1, 9, 24, backend="cpp")
    table = stream._table
    stream.add(grads[:, :4])  # contiguous bf16: the extension writes rows 0..3
    stream.add(grads[0, 4:6])  # [k, N, D]: a batch of one, through channel_weights
    stream.add(grads[:, 6:].transpose(2, 3).contiguous().transpose(2, 3))  # not contiguous
    assert stream.weights is table
    assert torch.equal(stream.weights, dcam.channel_weights(grads, backend="cpp"))
    # float64 gradients are computed in float32, as channel_weights does
    g64 = grads.double()
    s64 = WeightStream(1, 9, 24, backend="cpp")
    s64.add(g64[:, :5])
    s64.add(g64[:, 5:])
    assert torch.equal(s64.weights, dcam.channel_weights(g64, backend="cpp"))


def test_a_chunk_with_nan_is_refused_as_channel_weights_refuses_it(any_backend):
    backend, device = any_backend
    _, grads = _inputs(1, 4, 6, 16, torch.bfloat16, device)
    grads[0, 3, 2, 5] = float("nan")
    stream = WeightStream(1, 4, 16, backend=backend, device=device)
    stream.add(grads[:, :2])
    with pytest.raises(NonFiniteError) as exc:
        stream.add(grads[:, 2:])
    with pytest.raises(NonFiniteError) as direct:
        dcam.channel_weights(grads[:, 2:], backend=backend)
    assert str(exc.value) == str(direct.value) == ("grads contains 1 NaN/Inf value(s); pass check_finite=False to "
                                                   "skip this check")
    assert stream.added == 2  # the refused chunk is not counted
    with pytest.raises(InputError, match=r"^grads: 2 of the stream's 4 tokens were added$"):
        stream.weights
    # finite gradients whose sum overflows float32: the message of channel_weights
    big = torch.full((1, 2, 6, 16), 3e38, device=device)
    s = WeightStream(1, 2, 16, backend=backend, device=device)
    with pytest.raises(InputError, match=r"^grads: finite, but summed over the image tokens they overflow"):
        s.add(big)
    # unchecked, the NaN gives NaN weights, as channel_weights(check_finite=False) does
    s = WeightStream(1, 4, 16, backend=backend, device=device, check_finite=False)
    s.add(grads)
    assert torch.equal(s.weights.isnan(), dcam.channel_weights(grads, backend=backend, check_finite=False).isnan())


def test_the_stream_refuses_what_does_not_fit_its_table():
    for kwargs, match in (
            (dict(batch=0, tokens=4, hidden=8), r"^batch must be an int >= 1, got 0$"),
            (dict(batch=1, tokens=4.0, hidden=8), r"^tokens must be an int >= 1, got 4.0$"),
            (dict(batch=1, tokens=4, hidden=True), r"^hidden must be an int >= 1, got True$"),
            (dict(batch=1, tokens=4, hidden=8, grad_relu=1), r"^grad_relu must be"),
            (dict(batch=1, tokens=4, hidden=8, check_finite="yes"), r"^check_finite must be"),
            (dict(batch=1, tokens=4, hidden=8, backend="nope"), r"^backend"),
            (dict(batch=1, tokens=4, hidden=8, device="nowhere"), r"^device: not a torch device")):
        with pytest.raises(InputError, match=match):
            WeightStream(**kwargs)
    stream = WeightStream(1, 4, 8)
    _, grads = _inputs(1, 5, 6, 8, torch.float32, "cpu")
    with pytest.raises(InputError, match=r"^grads: a chunk of 5 token\(s\) after 0 added passes the stream's 4 "
                                         r"tokens$"):
        stream.add(grads)
    stream.add(grads[:, :3])
    with pytest.raises(InputError, match=r"^grads: a chunk of 2 token\(s\) after 3 added passes"):
        stream.add(grads[0, 3:])  # (the checked path: a [k, N, D] chunk)
    with pytest.raises(InputError, match=r"^grads: a chunk of 2 image\(s\) and hidden size 8 does not fit the "
                                         r"stream's table of 1 and 8$"):
        stream.add(torch.zeros(2, 1, 6, 8))
    with pytest.raises(InputError, match=r"^grads: a chunk of 1 image\(s\) and hidden size 4 does not fit"):
        stream.add(torch.zeros(1, 1, 6, 4))
    with pytest.raises(InputError, match=r"^grads is empty"):
        stream.add(torch.zeros(1, 0, 6, 8))
    with pytest.raises(InputError, match=r"^grads must be a torch.Tensor, got ndarray$"):
        stream.add(np.zeros((1, 1, 6, 8), np.float32))
    with pytest.raises(InputError, match=r"^grads must be a floating-point tensor"):
        stream.add(torch.zeros(1, 1, 6, 8, dtype=torch.int32))
    assert stream.added == 3  # nothing refused was counted
    stream.add(grads[:, 3:4])
    assert torch.equal(stream.weights, dcam.channel_weights(grads[:, :4]))


def test_the_stream_refuses_differentiation_as_channel_weights_does():
    stream = WeightStream(1, 2, 8)
    _, grads = _inputs(1, 2, 6, 8, torch.float32, "cpu")

    def f(g):
        stream.add(g)
        return g.sum()

    with pytest.raises(InputError, match=r"^grads: .*differentiable"):
        torch.func.grad(f)(grads)
