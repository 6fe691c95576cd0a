"""An adapter's mistakes about its vocabulary, its LM head and its image positions are named
(a RuntimeError naming the adapter class and the member), not raw IndexErrors deep in the model
nor quietly wrong maps. The numbers are the documented example model's (docs/FAMILIES.md):
vocabulary 64, hidden width 32, prompt = BOS (id 1), 64 image tokens (id 3, positions 1..64),
ids 5 and 6 (positions 65, 66); mask id 4."""
from dataclasses import replace

import pytest
import torch


def _explain(adapter, image, response, probe="full"):
    import dcam

    return dcam.Explainer(adapter=adapter).explain(image, response=response, probe=probe)


def test_a_mask_id_outside_the_vocabulary_is_named_before_the_model_runs(documented_adapter):
    # was torch's "IndexError: index out of range in self" inside nn.Embedding
    My, model, image = documented_adapter()

    class MaskPast(My):
        mask_token_id = 77

    class MaskNegative(My):
        mask_token_id = -5

    class MaskIsImage(My):
        mask_token_id = 3  # the image token id: a masked slot became an image slot (masked_scatter failed)
    for probe in ("masked", "remask"):
        with pytest.raises(RuntimeError, match=r"^MaskPast\.mask_token_id: 77 is outside the vocabulary of 64 "
                                               r"ids \(lm_head_weight\(\) has 64 rows\)$"):
            _explain(MaskPast(model), image, [10, 11], probe)
    with pytest.raises(RuntimeError, match=r"^MaskNegative\.mask_token_id: -5 is outside the vocabulary of 64 ids"):
        _explain(MaskNegative(model), image, [10, 11], "masked")
    with pytest.raises(RuntimeError, match=r"^MaskIsImage\.mask_token_id: 3 is the image token id$"):
        _explain(MaskIsImage(model), image, [10, 11], "masked")

    class MaskPastNoHead(MaskPast):  # no head to compare with: the logits' width, from a forward of end tokens
        def lm_head_weight(self):
            raise NotImplementedError
    with pytest.raises(RuntimeError, match=r"^MaskPastNoHead\.mask_token_id: 77 is outside the vocabulary of 64 "
                                           r"ids \(the model's logits are that wide\)$"):
        _explain(MaskPastNoHead(model), image, [10, 11], "masked")


def test_a_bad_mask_id_is_named_before_the_adapter_generates(documented_adapter):
    # the sampler writes the mask id into the canvas: a bad one failed first inside the user's generate()
    # (an IndexError in the embedding), before the probe's check could name it
    My, model, image = documented_adapter()
    calls = []

    class MaskPast(My):
        mask_token_id = 77

        def generate(self, *args, **kwargs):
            calls.append(1)
            return super().generate(*args, **kwargs)
    import dcam

    with pytest.raises(RuntimeError, match=r"^MaskPast\.mask_token_id: 77 is outside the vocabulary of 64 "):
        dcam.Explainer(adapter=MaskPast(model)).explain(image)
    # a trajectory's generation too (the bundled toy's sampler records one; its vocabulary is its head's rows)
    from dcam.probe.adapters import ShapesAdapter
    from dcam.testing import tiny_toy

    class ToyMaskPast(ShapesAdapter):
        @property
        def mask_token_id(self):
            return int(self.lm_head_weight().shape[0]) + 5

        def generate(self, *args, **kwargs):
            calls.append(1)
            return super().generate(*args, **kwargs)
    toy, proc = tiny_toy()
    with pytest.raises(RuntimeError, match=r"^ToyMaskPast\.mask_token_id: \d+ is outside the vocabulary"):
        dcam.Explainer(adapter=ToyMaskPast(toy, proc)).explain(image, trajectory=True)
    assert calls == []


def test_an_lm_head_weight_of_another_shape_than_the_logits_is_named(documented_adapter):
    My, model, image = documented_adapter()

    class Wider(My):  # 70 rows, the model's head has 64
        def lm_head_weight(self):
            return torch.zeros(70, 32)

    class Narrower(My):  # another Linear of the model by mistake: 32 rows
        def lm_head_weight(self):
            return torch.zeros(32, 32)

    class FewerColumns(My):
        def lm_head_weight(self):
            return torch.zeros(64, 16)
    rows = r"\.lm_head_weight\(\): {} rows, but the model's logits are 64 wide"
    # 66 passed the response check against the 70 rows, then failed in the embedding (a raw IndexError)
    with pytest.raises(RuntimeError, match="^Wider" + rows.format(70)) as caught:
        _explain(Wider(model), image, [10, 66])
    assert isinstance(caught.value.__cause__, IndexError)  # the model's own error stays attached
    with pytest.raises(RuntimeError, match="^Wider" + rows.format(70)):  # (was no error at all: maps made)
        _explain(Wider(model), image, [10, 11])
    with pytest.raises(RuntimeError, match="^Narrower" + rows.format(32)):
        _explain(Narrower(model), image, [10, 11])
    with pytest.raises(RuntimeError, match=r"^FewerColumns\.lm_head_weight\(\): 16 columns, but the hooked block's "
                                           r"hidden states are 32 wide"):
        _explain(FewerColumns(model), image, [10, 11])
    e = _explain(My(model), image, [10, 11])  # the right head: maps as before
    assert e.maps.shape == (2, 8, 8)


def test_image_positions_on_tokens_that_are_not_image_tokens_are_named(documented_adapter):
    # a span shifted by one gave maps off by up to 0.95, with no word (the probe reads whatever sits there)
    My, model, image = documented_adapter()

    def moved(f, opt_out=False):
        class Moved(My):
            image_slots_hold_image_token = not opt_out

            def prepare(self, *a, **k):
                p = super().prepare(*a, **k)
                return replace(p, image_positions=f(p.image_positions))
        return Moved(model)
    # +1: positions 2..65; the last, image_positions[63] = 65, holds id 5 (the prompt's text)
    with pytest.raises(RuntimeError, match=r"^Moved\.prepare\(\): image_positions\[63\] = 65 holds id 5, not the "
                                           r"image token id 3$"):
        _explain(moved(lambda p: p + 1), image, [10, 11])
    with pytest.raises(RuntimeError, match=r"^Moved\.prepare\(\): image_positions\[0\] = 0 holds id 1, not"):
        _explain(moved(lambda p: torch.cat([torch.tensor([0]), p[1:]])), image, [10, 11])
    # an adapter whose image slots hold other ids (codebook ids) opts out: explained as it lays them out
    assert _explain(moved(lambda p: p + 1, opt_out=True), image, [10, 11]).maps.shape == (2, 8, 8)


def test_the_vq_families_opt_out_and_the_others_do_not():
    from dcam.probe.adapters import FAMILIES

    hold = {f.name: f.adapter_class().image_slots_hold_image_token for f in FAMILIES}
    assert {n for n, v in hold.items() if not v} == {"mmada", "lumina-dimoo"}
