"""docs/FAMILIES.md's "Bring your own dMLLM" example, run as written: a
custom model and its ~60-line adapter, registered, explained and generated."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_documented_example_runs():
    from dcam.probe.adapters import ADAPTERS

    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "class MyAdapter" in b]
    assert len(blocks) == 1
    adapter_lines = blocks[0][blocks[0].index("class MyAdapter"):blocks[0].index("register_adapter(")]
    assert 40 <= len(adapter_lines.strip().splitlines()) <= 80  # "about 60 lines"
    before = list(ADAPTERS)
    space = {}
    try:
        exec(compile(blocks[0], "FAMILIES.md", "exec"), space)
        e = space["e"]
        assert e.steps == 4 and e.steps_source == "generation" and len(e.response_ids) == 8
        model = space["model"]
        import dcam

        assert type(dcam.Explainer(model).adapter).__name__ == "MyAdapter"
        # its special_token_ids() (no Hugging Face tokenizer): BOS in a given response is refused, not a word "w1"
        import pytest

        with pytest.raises(dcam.InputError, match=r"^response: holds 'w1' \(id 1\), which is a special token"):
            space["exp"].explain(space["image"], response="10 1 11")
    finally:
        ADAPTERS[:] = before  # the example's registration must not leak into other tests


def test_an_adapters_mistakes_are_named_not_turned_into_maps(documented_adapter):
    # negative image positions wrapped round to the prompt's text and the response and gave a normal-looking
    # map; text an adapter encodes to ids past its vocabulary was a torch IndexError (CLI exit 1); an
    # adapter without a mask token still defaulted to the masked probe; adapter=<the class> was a TypeError
    from dataclasses import replace

    import pytest
    import torch

    import dcam
    from dcam.errors import InputError

    My, model, image = documented_adapter()

    def shifted(shift):
        class Wrong(My):
            def prepare(self, *a, **k):
                p = super().prepare(*a, **k)
                return replace(p, image_positions=p.image_positions + shift)
        return Wrong(model)
    for shift, why in ((-80, "run from -79 to -16; image tokens lie in the prompt, positions 0..66"),
                       (3, "run from 4 to 67; image tokens lie in the prompt, positions 0..66")):
        with pytest.raises(RuntimeError, match=r"^Wrong\.prepare\(\): image_positions " + re.escape(why)):
            dcam.Explainer(adapter=shifted(shift)).explain(image, response="10 11")
    with pytest.raises(InputError, match=r"^response: token id 99 is not in the model's vocabulary \(ids 0..63\)"):
        dcam.Explainer(adapter=My(model)).explain(image, response="10 99")

    class Cut(My):  # logits cut at the front: every score read one position off
        def forward_logits(self, input_ids, model_inputs):
            return super().forward_logits(input_ids, model_inputs)[:, 1:]

    class CutNoHead(Cut):
        def lm_head_weight(self):
            raise NotImplementedError
    with pytest.raises(RuntimeError, match=r"^Cut\.forward_logits: the LM head ran 1 times and the model returned a "
                                           r"tensor of shape \(1, 1, 64\)"):
        dcam.Explainer(adapter=Cut(model)).explain(image, response="10 11")
    with pytest.raises(RuntimeError, match=r"^CutNoHead\.forward_logits returned a tensor of shape \(1, 68, 64\); "
                                           r"expected logits \[B, 69, V\]"):
        dcam.Explainer(adapter=CutNoHead(model)).explain(image, response="10 11")

    class NoMask(My):
        mask_token_id = None
    assert dcam.Explainer(adapter=NoMask(model)).explain(image, response="10 11").probe == "full"
    with pytest.raises(InputError, match="^adapter must be a ModelAdapter instance, got type"):
        dcam.Explainer(adapter=My)
    with pytest.raises(InputError, match="^adapter: it wraps another model"):
        dcam.Explainer(type(model)().eval(), adapter=My(model))
    assert torch.equal(dcam.Explainer(model, adapter=My(model)).explain(image, response="10 11").maps,
                       dcam.Explainer(adapter=My(model)).explain(image, response="10 11").maps)


def test_what_an_adapter_leaves_out_is_named_and_a_missing_mask_token_is_said_before_generating(documented_adapter):
    # a left-out blocks() was a NotImplementedError with no message, left-out word methods (no tokenizer) an
    # AttributeError about 'tokenizer'; probe="masked" without a mask token was refused only after the
    # model had generated its response, with "masked" in its list of supported probes
    import pytest

    import dcam
    from dcam.errors import InputError
    from dcam.probe.adapters import ModelAdapter

    My, model, image = documented_adapter()

    class NoBlocks(My):
        blocks = ModelAdapter.blocks

    class NoWords(My):
        encode_response, token_strings, decode = (ModelAdapter.encode_response, ModelAdapter.token_strings,
                                                  ModelAdapter.decode)
    tail = r" which dcam needs of an adapter \(docs/FAMILIES\.md, 'Bring your own dMLLM'\)$"
    with pytest.raises(NotImplementedError, match=r"^NoBlocks does not implement blocks\(\)" + tail):
        dcam.Explainer(adapter=NoBlocks(model)).explain(image, response="10 11")
    with pytest.raises(NotImplementedError, match=r"^NoWords does not implement encode_response\(\), token_strings\(\) "
                                                  r"and decode\(\), or keep a Hugging Face tokenizer in "
                                                  r"self\.tokenizer," + tail):
        dcam.Explainer(adapter=NoWords(model)).explain(image, response="10 11")

    class NoMask(My):
        mask_token_id = None

        def generate(self, *a, **k):
            raise AssertionError("generated before the probe was refused")
    for probe in ("masked", "remask"):
        with pytest.raises(InputError, match=rf"^probe='{probe}' needs a mask token and the my-dmllm model has none "
                                             r"\(supported probes without one: full\)$"):
            dcam.Explainer(adapter=NoMask(model)).explain(image, probe=probe)


def test_an_adapter_whose_logits_ignore_the_hooked_block_is_an_error_not_zero_maps(documented_adapter):
    # logits detached from the hooked block have no graph to it: the probe handed back
    # zero gradients, and the explanation was a set of all-zero maps with no word of why
    import pytest
    import torch

    import dcam

    My, model, image = documented_adapter()

    class Detached(My):
        def forward_logits(self, input_ids, model_inputs):
            return super().forward_logits(input_ids, model_inputs).detach()
    for probe in ("full", "remask"):
        with pytest.raises(RuntimeError, match="^the words' scores do not depend on the hooked block's output"):
            dcam.Explainer(adapter=Detached(model)).explain(image, response="10 11", probe=probe)
    # (under torch.no_grad the hooked block switches autograd back on from its output: that runs)
    with torch.no_grad():
        assert dcam.Explainer(adapter=My(model)).explain(image, response="10 11").scores.shape == (2,)


def test_an_adapters_views_are_checked_as_its_image_positions_are(documented_adapter):
    # a view's positions were never checked (the explained view's span replaces image_positions): negative ones
    # wrapped round to the text, ones in the response or repeated gave normal-looking maps, ones past the end a
    # raw IndexError, a view whose grid its positions do not fill was called the user's bad input
    import pytest
    import torch

    import dcam
    from dcam.probe.adapters import ImageView

    My, model, image = documented_adapter()  # BOS at 0, image at 1..64, text 65, 66, response from 67

    def with_view(positions, grid=(2, 3)):
        class Viewed(My):
            def prepare(self, *a, **k):
                p = super().prepare(*a, **k)
                p.views["top"] = ImageView("top", positions, grid)
                return p
        return Viewed(model)
    for positions, grid, why in (
            (torch.arange(-6, 0), (2, 3), "run from -6 to -1; image tokens lie in the prompt, positions 0..66"),
            (torch.arange(67, 73), (2, 3), "run from 67 to 72; image tokens lie in the prompt, positions 0..66"),
            (torch.arange(100, 106), (2, 3), "run from 100 to 105; image tokens lie in the prompt, positions 0..66"),
            (torch.tensor([1, 1, 2, 3, 4, 5]), (2, 3), "repeat a position"),
            (torch.arange(1, 7), (3, 3), "are 6 tokens; its grid 3x3 needs 9"),
            (torch.arange(1, 7).float(), (2, 3), "must be a 1-D integer tensor, got torch.float32")):
        for view in ("top", None):  # refused whether or not the view is the one explained
            with pytest.raises(RuntimeError, match=r"^Viewed\.prepare\(\): view 'top' positions " + re.escape(why)):
                dcam.Explainer(adapter=with_view(positions, grid)).explain(image, response="10 11", view=view)
    # a right view is still explained: two words, each a map over its 2x3 grid
    e = dcam.Explainer(adapter=with_view(torch.arange(1, 7))).explain(image, response="10 11", view="top")
    assert e.maps.shape == (2, 2, 3)


def test_what_an_adapters_generate_returns_is_checked_as_a_given_response_is(documented_adapter):
    # generated ids past the vocabulary were a raw IndexError, a generated image token was called the user's bad
    # input ("image span has 65 tokens"), and 20 ids for response_length=4 were explained as 20 words
    import pytest

    import dcam

    My, model, image = documented_adapter()  # vocabulary 64 (ids 0..63), image token 3 ("w3")

    def generating(ids):
        class Gen(My):
            def generate(self, prep, steps=None, response_length=None, record=False):
                from dcam.probe.adapters import Generation
                return Generation(list(ids), 4)
        return Gen(model)
    for ids, length, why in (
            ([10, 64, 12, 13], None, "in the response it returned, token id 64 is not in the model's vocabulary "
                                     "(ids 0..63)"),
            ([10, -1, 12, 13], None, "in the response it returned, token id -1 is not in the model's vocabulary"),
            ([10, 3, 12, 13], None, "the response it returned holds 'w3' (id 3), which is the image placeholder"),
            (list(range(10, 30)), 4, "returned 20 token ids for response_length=4"),
            ([10, 11.0], None, "response_ids must be whole numbers")):
        with pytest.raises(RuntimeError, match=r"^Gen\.generate\(\): " + re.escape(why)):
            dcam.Explainer(adapter=generating(ids)).explain(image, response_length=length)
    # fewer ids than asked (an early end) are the response: words w10 w11 w12
    e = dcam.Explainer(adapter=generating([10, 11, 12, 2])).explain(image, response_length=8)
    assert e.tokens == ["w10", "w11", "w12"] and e.response_ids == [10, 11, 12, 2]


def test_an_adapters_default_layer_is_resolved_as_layer_is(documented_adapter):
    # default_layer()=-2 stayed -2 in exp.layer and e.layer (layer=-2 is 1 of the 3 blocks), and 1.0, True and
    # "1" were turned into block 1 without a word; one out of range was called the user's layer
    import pytest
    import torch

    import dcam

    My, model, image = documented_adapter()  # 3 blocks: -2 is block 1

    def defaulting(layer):
        class Default(My):
            def default_layer(self):
                return layer
        return Default(model)
    exp = dcam.Explainer(adapter=defaulting(-2))
    e = exp.explain(image, response="10 11")
    assert exp.layer == 1 and e.layer == 1
    assert torch.equal(e.maps, dcam.Explainer(adapter=My(model), layer=1).explain(image, response="10 11").maps)
    for layer, why in ((1.0, "must be an int, got 1.0"), (True, "must be an int, got True"),
                       ("1", "must be an int, got '1'"), (-4, "-4 out of range for a model with 3 blocks")):
        with pytest.raises(RuntimeError, match=r"^Default\.default_layer\(\): layer " + re.escape(why)):
            dcam.Explainer(adapter=defaulting(layer))


def test_a_look_alike_of_llavas_blocks_without_a_config_is_named():
    # a model of one's own with .lm_head and .model.language_model.layers is detected as llava: without a .config
    # that was a raw AttributeError ('Mine' object has no attribute 'config'), and family="llava" said it
    # "lacks the transformer blocks" it has
    import pytest
    from torch import nn

    import dcam
    from dcam.errors import InputError
    from dcam.probe.adapters import detect_family

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        language_model = property(lambda self: self)

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.lm_head = Inner(), nn.Linear(4, 8)
    assert detect_family(Mine()).name == "llava"
    for kw in ({}, {"family": "llava"}):
        with pytest.raises(InputError, match=r"^model: Mine has no config, which LlavaAdapter reads \(image token id, "
                                             r"image size\); for a model of your own write an adapter \(docs/FAMILIES"
                                             r"\.md, 'Bring your own dMLLM'\)$"):
            dcam.Explainer(Mine(), **kw)


def test_an_adapters_ids_and_blocks_of_the_wrong_kind_are_named(documented_adapter):
    # eos_token_ids=2 (an int, not a set) was "TypeError: 'int' object is not iterable" from dcam's skip_ids, and
    # blocks() returning one block "TypeError: object of type 'TransformerEncoderLayer' has no len()"
    import pytest
    import torch

    import dcam

    My, model, image = documented_adapter()

    def with_member(name, value):
        return type("Wrong", (My,), {name: property(lambda self: value) if name != "blocks" else lambda self: value})
    for name, value, why in (
            ("eos_token_ids", 2, "eos_token_ids must be a set of token ids (ints), got 2"),
            ("pad_token_ids", torch.tensor([0]), "pad_token_ids must be a set of token ids (ints), got tensor([0])"),
            ("pad_token_ids", {0.0}, "pad_token_ids must be a set of token ids (ints), got {0.0}"),
            ("blocks", model.blocks[0], "blocks() must return the hookable blocks in order (a list or "
                                        "nn.ModuleList of modules), got TransformerEncoderLayer"),
            ("blocks", [model.blocks[0], "x"], "blocks() must return the hookable blocks in order (a list or "
                                               "nn.ModuleList of modules), got a list holding a str")):
        with pytest.raises(RuntimeError, match=r"^Wrong\." + re.escape(why) + "$"):
            dcam.Explainer(adapter=with_member(name, value)(model))
    # the same ids as a list, a tuple or a frozenset are fine: the same maps as the example's set
    e = dcam.Explainer(adapter=My(model)).explain(image, response="10 11 2")
    for ids in ([2], (2,), frozenset({2})):
        assert torch.equal(dcam.Explainer(adapter=with_member("eos_token_ids", ids)(model)).explain(
            image, response="10 11 2").maps, e.maps)


def test_the_documented_traced_adapter_records_its_trajectory(documented_adapter):
    # the page said nothing of what a user's adapter needs for trajectory=True (records_trajectory and
    # generate(record=True)'s states); states given as a list were "AttributeError: 'list' object has no
    # attribute 'shape'" from inside dcam
    import pytest
    import torch

    import dcam

    My, model, image = documented_adapter()
    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    block = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "class MyTracedAdapter" in b]
    assert len(block) == 1
    space = dict(My.generate.__globals__)  # the example's names: MyAdapter, Generation, low_confidence_remasking
    exec(compile(block[0], "FAMILIES.md", "exec"), space)
    Traced = space["MyTracedAdapter"]
    torch.manual_seed(0)
    e = dcam.Explainer(adapter=Traced(model)).explain(image, trajectory=True, response_length=6, steps=3)
    t = e.trajectory
    # by hand: the slot each step commits, read off the canvas after every step of a sampler run apart
    prep = Traced(model).prepare(image, response_length=6)
    s, x = prep.response_start, prep.input_ids.clone()
    after = []
    for step in range(3):  # 2 slots a step, the most confident masked ones
        with torch.no_grad():
            logits = model(x, prep.model_inputs["pixel_values"])[0]
        conf, pred = torch.softmax(logits.double(), -1).max(-1)
        masked = (x[0] == 4) & (torch.arange(x.shape[1]) >= s)
        pick = torch.topk(torch.where(masked, conf, torch.tensor(-1.0, dtype=torch.float64)), 2).indices
        x[0, pick] = pred[pick]
        after.append(x[0, s:].clone())
    assert e.response_ids == after[-1].tolist() and t.states.shape == (3, 6)
    assert t.slot_decided_at.tolist() == [min(k for k in range(3) if after[k][j] != 4) for j in range(6)]
    assert t.maps.shape == (3, len(e.tokens), 8, 8)

    class ListStates(Traced):
        def generate(self, *a, **k):
            g = super().generate(*a, **k)
            g.states = g.states.tolist()
            return g
    with pytest.raises(RuntimeError, match=r"^the my-dmllm adapter's generate\(record=True\) returned states list "
                                           r"and decided_at Tensor; both must be int64 tensors"):
        dcam.Explainer(adapter=ListStates(model)).explain(image, trajectory=True, response_length=6, steps=3)


def test_tam_on_an_adapter_without_a_final_norm_is_refused_naming_it(documented_adapter):
    # the protocol's final_norm() defaults to None: method="tam" then failed inside tam with
    # "TypeError: 'NoneType' object is not subscriptable" (the CLI's exit 1, as a bug of dcam)
    import pytest

    import dcam

    My, model, image = documented_adapter()
    with pytest.raises(dcam.InputError, match=r"^method: tam reads the model's final hidden states, and "
                                              r"MyAdapter\.final_norm\(\) names no module"):
        dcam.Explainer(adapter=My(model), method="tam")

    class Normed(My):  # the example's last block's output is what its head reads
        def final_norm(self):
            return self.model.blocks[-1]
    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    e = dcam.Explainer(adapter=Normed(model), method="tam").explain(noise, response="10 11")
    assert e.maps.shape == (2, 8, 8) and float(e.maps.max()) == 1.0  # min-max normalised, not degenerate
