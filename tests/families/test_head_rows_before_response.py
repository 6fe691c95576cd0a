"""A response id past ``lm_head_weight()``'s rows: the adapter's head is checked against the
logits' width before the id is refused, so a head of too few rows is named as the adapter's mistake
(RuntimeError naming it), not a valid id as the user's (InputError). The numbers are the documented
example model's (docs/FAMILIES.md): vocabulary 64 (its head's and logits' width), hidden width 32,
end token 2."""
import pytest
import torch

import dcam
from dcam.errors import InputError

NARROW_HEAD = r"^Narrower\.lm_head_weight\(\): 32 rows, but the model's logits are 64 wide"


def _narrower(My):
    class Narrower(My):  # another Linear's weight by mistake: 32 rows, the logits are 64 wide
        def lm_head_weight(self):
            return torch.zeros(32, 32)
    return Narrower


def _counting_forwards(model):
    calls = []
    model.head.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_a_valid_given_id_past_a_too_narrow_head_names_the_head(documented_adapter):
    # id 40 is in the model's vocabulary (its logits are 64 wide): it was refused as the user's
    # "response: token id 40 is not in the model's vocabulary (ids 0..31)"
    My, model, image = documented_adapter()
    calls = _counting_forwards(model)
    explainer = dcam.Explainer(adapter=_narrower(My)(model))
    with pytest.raises(RuntimeError, match=NARROW_HEAD):
        explainer.explain(image, response=[10, 40])
    with pytest.raises(RuntimeError, match=NARROW_HEAD):  # as text too (this toy's words are ids)
        explainer.explain(image, response="10 40")
    assert len(calls) == 1  # one forward found the width; the second call reused it


def test_an_id_past_a_right_head_is_still_the_users(documented_adapter):
    My, model, image = documented_adapter()
    calls = _counting_forwards(model)
    explainer = dcam.Explainer(adapter=My(model))
    for bad in (64, 70):
        with pytest.raises(InputError, match=rf"^response: token id {bad} is not in the model's vocabulary "
                                             r"\(ids 0\.\.63\)$"):
            explainer.explain(image, response=[10, bad])
    assert len(calls) == 1  # the width found once, for both refusals
    with pytest.raises(InputError, match=r"^response: token id -1 is not in the model's vocabulary"):
        explainer.explain(image, response=[10, -1])
    assert len(calls) == 1  # a negative id is no row of any head: refused without a forward


def test_a_generated_id_past_a_too_narrow_head_names_the_head_not_generate(documented_adapter):
    # was "Narrower.generate(): in the response it returned, token id 40 is not in the model's vocabulary"
    My, model, image = documented_adapter()

    class NarrowerWriting40(_narrower(My)):
        def generate(self, prep, steps=None, response_length=None, record=False):
            from dcam.probe.adapters import Generation
            return Generation([10, 40], 2)
    with pytest.raises(RuntimeError, match=r"^NarrowerWriting40\.lm_head_weight\(\): 32 rows, but the model's "
                                           r"logits are 64 wide"):
        dcam.Explainer(adapter=NarrowerWriting40(model)).explain(image, response_length=2)
