"""The explainer's streamed Diffusion-CAM (dcam.methods.diffusion_cam.WeightReducer: each
chunk's channel weights into one dcam.ops.WeightStream table): the maps do not depend on
how the gradients were chunked, they are those of one pooling of all gradients, and a
chunk of NaN gradients is refused as the model's doing."""
import pytest
import torch

import dcam
from dcam.errors import InputError, NonFiniteError
from dcam.explain import Explainer
from dcam.methods import METHODS
from dcam.methods.base import MethodInputs
from dcam.methods.diffusion_cam import WeightReducer
from dcam.ops.config import CamConfig
from dcam.testing import tiny_toy
from dcam.zoo.data import generate_sample


@pytest.fixture(scope="module")
def zoo():
    return tiny_toy(0, 3)


@pytest.fixture(scope="module")
def sample():
    return generate_sample((0, 2, 3), image_size=48, n_objects=2)


def _inputs(T, grad_relu=True, backend="auto"):
    return MethodInputs(result=None, grid=(3, 4), token_ids=torch.arange(T), config=CamConfig(grad_relu=grad_relu),
                        steps=64, image_size=48, repeat_ratio=0.0, adapter=None, backend=backend)


@pytest.mark.parametrize("backend", dcam.available_backends())
@pytest.mark.parametrize("grad_relu", [True, False], ids=["relu", "signed"])
def test_the_reducer_table_is_one_channel_weights_call(backend, grad_relu):
    # the probe's two layouts: [1, k, N, D] chunks of one image, and the remask probe's [r, 1, N, D] (one row
    # per item); chunks of 3, 3 and 1 items
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(1, 7, 12, 40, generator=g).bfloat16()
    whole = dcam.channel_weights(grads, grad_relu, backend=backend)[0]
    for layout in ("items", "rows"):
        r = METHODS["diffusion-cam"]().reducer(_inputs(7, grad_relu, backend), 7)
        assert isinstance(r, WeightReducer)
        for c in range(0, 7, 3):
            chunk = grads[:, c:c + 3]
            chunk = chunk if layout == "items" else chunk.transpose(0, 1).contiguous()
            r.add(torch.arange(c, c + chunk.shape[0] * chunk.shape[1]), None, chunk)
        assert torch.equal(r.stream.weights[0], whole)


def test_the_reducer_refuses_a_chunk_with_nan():
    r = METHODS["diffusion-cam"]().reducer(_inputs(4), 4)
    grads = torch.randn(1, 4, 12, 16).bfloat16()
    grads[0, 2, 5, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^grads contains 1 NaN/Inf value\(s\)"):
        r.add(torch.arange(4), None, grads)


def test_explained_maps_do_not_depend_on_the_chunks(zoo, sample):
    # every chunk size streams through the table; one chunk of all words is one pooling of all gradients
    # (probe="full": the same forward and gradients whatever the chunks; the remask probe's forward batches
    # the rows of a chunk, whose model arithmetic then differs in the last bits)
    kw = dict(response=sample.caption, probe="full")
    one = Explainer(*zoo, chunk_size=64).explain(sample.image, **kw)
    for chunk in (1, 3):
        e = Explainer(*zoo, chunk_size=chunk).explain(sample.image, **kw)
        assert e.maps.shape[0] > 3  # (so that chunks of 3 leave an uneven last one)
        assert torch.equal(e.maps, one.maps)
        assert all(torch.equal(e.stats[k], one.stats[k]) for k in one.stats)


class _NanBackward(torch.autograd.Function):
    """Identity forward; the gradient flowing back through it gets one NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g.view(-1)[0] = float("nan")
        return g


def test_nan_gradients_are_refused_as_the_models(zoo, sample):
    # scores finite, gradients at the hooked layer NaN (from a block above it): the stream's check refuses the
    # chunk, named as the model's gradients, the one-line InputError of the explainer
    model, proc = zoo
    ex = Explainer(model, proc, layer=0)
    block = ex.adapter.blocks()[1]

    def nan_in_backward(module, args, output):
        if isinstance(output, tuple):
            return (_NanBackward.apply(output[0]),) + tuple(output[1:])
        return _NanBackward.apply(output)

    hook = block.register_forward_hook(nan_in_backward)
    try:
        with pytest.raises(InputError, match=r"^model: its grads came out NaN/Inf \(\d+ value\(s\), run in "
                                             r"float32\)$") as exc:
            ex.explain(sample.image, response=sample.caption, probe="full")
        assert "\n" not in str(exc.value)
    finally:
        hook.remove()
