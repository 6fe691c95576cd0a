"""The VQ families' image slots hold codebook ids, not one image token id: each probe checks that
every image position holds an id of the adapter's image codes (its offset up to the end of the
vocabulary), so a span shifted onto text, a newline or a special token is named as the adapter's
mistake (it was explained quietly, over the wrong tokens). The ids are the stand-ins'
(dcam.testing.vq_dmllm): MMaDA's prompt is <|mmu|> <|soi|> 64 codes <|eoi|> chat (code offset
126464, vocabulary 126464 + 64 codes); Lumina-DiMOO's image is <boi>, rows of codes each ended by
the newline 126084, <eoi> (code offset 126356)."""
from dataclasses import replace

import pytest
import torch

import dcam
from dcam.probe.adapters import DiMOOAdapter, MMaDAAdapter
from dcam.testing.vq_dmllm import DIMOO_SPECIALS, MMADA_SPECIALS, tiny_dimoo, tiny_mmada


def _image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (200, 40, 40))


def _shifted(base, shift):
    class Shifted(base):
        def prepare(self, *a, **k):
            p = super().prepare(*a, **k)
            return replace(p, image_positions=shift(p.image_positions))
    return Shifted


def test_mmada_codes_range_is_its_offset_to_the_vocabulary_end():
    model, proc = tiny_mmada(layers=2)
    assert MMaDAAdapter(model, proc).image_code_ids() == range(126464, 126464 + 64)


def test_an_mmada_span_shifted_onto_its_end_of_image_token_is_named():
    model, proc = tiny_mmada(layers=2)
    # the codes sit at positions 2..65; shifted by one, the last (image_positions[63] = 66) is <|eoi|>
    adapter = _shifted(MMaDAAdapter, lambda p: p + 1)(model, proc)
    with pytest.raises(RuntimeError, match=rf"^Shifted\.prepare\(\): image_positions\[63\] = 66 holds id "
                                           rf"{MMADA_SPECIALS['<|eoi|>']}, not an image code id "
                                           rf"\(126464\.\.126527\)$"):
        dcam.Explainer(adapter=adapter).explain(_image(), response="red")
    # one back: the first (position 1) is <|soi|>
    adapter = _shifted(MMaDAAdapter, lambda p: p - 1)(model, proc)
    with pytest.raises(RuntimeError, match=rf"^Shifted\.prepare\(\): image_positions\[0\] = 1 holds id "
                                           rf"{MMADA_SPECIALS['<|soi|>']}, not an image code id"):
        dcam.Explainer(adapter=adapter).explain(_image(), response="red")


def test_a_dimoo_span_that_takes_a_newline_for_a_code_is_named():
    model, proc = tiny_dimoo(layers=2)
    prep = DiMOOAdapter(model, proc).prepare(_image(), response_ids=[5])
    pos = prep.image_positions
    h, w = prep.grid
    boi = int((prep.input_ids[0] == DIMOO_SPECIALS["boi"]).nonzero())
    # rows of w codes, each ended by the newline: row r's codes at boi + 1 + r * (w + 1) + c
    want = torch.tensor([boi + 1 + r * (w + 1) + c for r in range(h) for c in range(w)])
    assert torch.equal(pos, want)
    # shifted by one, the first row's last slot is its newline: image_positions[w - 1] = boi + 1 + w
    adapter = _shifted(DiMOOAdapter, lambda p: p + 1)(model, proc)
    with pytest.raises(RuntimeError, match=rf"^Shifted\.prepare\(\): image_positions\[{w - 1}\] = {boi + 1 + w} "
                                           rf"holds id {DIMOO_SPECIALS['newline']}, not an image code id "
                                           rf"\(126356\.\."):
        dcam.Explainer(adapter=adapter).explain(_image(), response="red")
    assert DiMOOAdapter(model, proc).image_code_ids() == range(126356, model.config.vocab_size)


def test_unshifted_vq_spans_are_explained():
    for base, (model, proc) in ((MMaDAAdapter, tiny_mmada(layers=2)), (DiMOOAdapter, tiny_dimoo(layers=2))):
        e = dcam.Explainer(adapter=base(model, proc)).explain(_image(), response="red")
        assert e.maps.shape[0] == 1
