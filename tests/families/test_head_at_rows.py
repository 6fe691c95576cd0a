"""The LM head runs at the scored rows only, for every family.

`ModelAdapter.logits_at` hooks the head so that it maps only the final hidden
states of the scored positions (a dMLLM with an anyres image would otherwise
map ~3,000 positions to 126k-token logits, forward and in every backward).
Checked against the full logits of a plain forward without the hook,
gathered by hand, for shared and per-row positions; the head's input is
recorded to prove it saw P rows, not L."""
import pytest
import torch
from torch import nn

from dcam.probe import auto_adapter
from dcam.testing.standins import STANDINS

RESPONSE = "a red circle and a blue square"


def _full_logits(a, ids, inputs, response_start):
    """Every position's logits from a plain forward (no hook): DiffusionGemma's
    decoder covers the canvas only, so its rows are shifted by the prompt."""
    if a.family == "diffusion-gemma":
        out = a.model(input_ids=ids[:, :response_start], decoder_input_ids=ids[:, response_start:], **inputs).logits
        return torch.cat([torch.full((*out.shape[:1], response_start, out.shape[2]), float("nan")), out.float()], 1)
    return a.forward_logits(ids, inputs).float()


def _head_inputs(a):
    seen = []
    handle = a.output_head().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    return seen, handle


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_logits_at_equal_the_full_forward_with_the_head_on_the_scored_rows(name, models, landscape):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    s = prep.response_start
    pos = a.logit_positions(torch.tensor([s + 2, s + 1, s + 3]))  # not sorted: order kept
    inputs = a.batch_inputs(prep, 1)
    with torch.no_grad():
        full = _full_logits(a, prep.input_ids, inputs, s)
        seen, handle = _head_inputs(a)
        try:
            got = a.logits_at(prep.input_ids, inputs, pos, s)
        finally:
            handle.remove()
    D = a.lm_head_weight().shape[1]
    assert seen == [(1, 3, D)], f"the head saw {seen}, not the 3 scored rows"
    assert got.dtype == torch.float32 and got.shape == (1, 3, full.shape[2])
    torch.testing.assert_close(got[0], full[0, pos], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llada-v", "lavida", "dream-vl", "llava-next"])
def test_per_row_positions(name, models, landscape):
    """Two rows of one batch scored at different positions ([B, P])."""
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    s = prep.response_start
    ids = prep.input_ids.repeat(2, 1)
    ids[1, s + 4] = ids[0, s + 1]  # the rows differ
    inputs = a.batch_inputs(prep, 2)
    pos = a.logit_positions(torch.tensor([[s + 1, s + 2], [s + 4, s]]))
    with torch.no_grad():
        full = _full_logits(a, ids, inputs, s)
        got = a.logits_at(ids, inputs, pos, s)
    want = torch.stack([full[r, pos[r]] for r in range(2)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class _Detour(nn.Module):
    """A model whose head is not one call on the whole sequence."""

    def __init__(self, twice: bool):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.lm_head = nn.Linear(4, 11, bias=False)
        self.twice = twice

    def forward(self, ids):
        h = self.embed(ids)
        if self.twice:  # once per half of the sequence
            L = ids.shape[1] // 2
            return torch.cat([self.lm_head(h[:, :L]), self.lm_head(h[:, L:])], 1)
        return h @ self.lm_head.weight.t()  # the weight used directly: the module never runs


def _detour_adapter(twice):
    from dcam.probe.adapters.base import ModelAdapter

    class A(ModelAdapter):
        def lm_head_weight(self):
            return self.model.lm_head.weight

        def forward_logits(self, ids, inputs):
            return self.model(ids)

    return A(_Detour(twice), None)


@pytest.mark.parametrize("twice", [False, True], ids=["weight used directly", "head run on halves"])
def test_a_head_not_run_once_on_the_whole_sequence_gives_the_gathered_full_logits(twice):
    """The hook acts only on a call with the whole sequence; otherwise the full logits are gathered."""
    torch.manual_seed(0)
    a = _detour_adapter(twice)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    pos = torch.tensor([5, 0, 2])
    with torch.no_grad():
        want = a.model.embed(ids)[0, pos] @ a.model.lm_head.weight.t()
        torch.testing.assert_close(a.logits_at(ids, {}, pos, 0)[0], want)
