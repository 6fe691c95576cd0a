"""transformers' autoregressive VLMs (their own classes, tiny configs):
LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL / Qwen3-VL, Idefics3,
SmolVLM, Gemma 3, Gemma 4. For each: detection, the grid hand-worked for a
40 x 72 image, gradients against the published procedure, the causal score
(logit read one position earlier), an explanation and a generation."""
import pytest
import torch

from dcam.explain import Explainer
from dcam.probe import auto_adapter
from dcam.probe.gradients import probe, published_gradients

RESPONSE = "a red circle and a blue square"
#: name -> (family, adapter class, blocks path, grid of the 40 x 72 image, views)
VLMS = {
    # (96, 96) fits 40 x 72 best (3 x 3 tiles of 4 x 4 tokens = 12 x 12); unpad keeps
    # int(round(40 * 12 / 72, 7)) = 6 rows, 3 off top and bottom -> 6 x 12; base 4 x 4
    "llava-next": ("llava-next", "LlavaNextAdapter", lambda m: m.model.language_model.layers, (6, 12),
                   {"base": (4, 4), "highres": (6, 12)}),
    # OneVision: same tiles; anyres_max_9: sqrt(6 * 12 / (9 * 16)) = 0.71 <= 1.1, no shrink
    "llava-onevision": ("llava-onevision", "LlavaNextAdapter", lambda m: m.model.language_model.layers, (6, 12),
                        {"base": (4, 4), "highres": (6, 12)}),
    # 4-pixel patches merged 2x2: 40 x 72 is kept (multiples of 8): 10 x 18 patches, 5 x 9 tokens
    "qwen-vl": ("qwen-vl", "QwenVLAdapter", lambda m: m.model.language_model.layers, (5, 9), {}),
    "qwen2.5-vl": ("qwen-vl", "QwenVLAdapter", lambda m: m.model.language_model.layers, (5, 9), {}),
    "qwen3-vl": ("qwen-vl", "QwenVLAdapter", lambda m: m.model.language_model.layers, (5, 9), {}),
    # longest edge to 64 (36 x 64), 32-pixel tiles: 2 x 2 tiles of 2 x 2 tokens (8-pixel patches,
    # pixel shuffle 2) -> 4 x 4 stitched; the global image 2 x 2
    "idefics3": ("idefics3", "Idefics3Adapter", lambda m: m.model.text_model.layers, (4, 4),
                 {"base": (2, 2), "highres": (4, 4)}),
    "smolvlm": ("idefics3", "Idefics3Adapter", lambda m: m.model.text_model.layers, (4, 4),
                {"base": (2, 2), "highres": (4, 4)}),
    # no pan-and-scan crops: the whole image's one grid, its "base" view
    "gemma3": ("gemma3", "Gemma3Adapter", lambda m: m.model.language_model.layers, (4, 4), {"base": (4, 4)}),
    # at most 70 soft tokens of 8 x 8 pixels, aspect kept: 6 x 11 = 66
    "gemma4": ("gemma4", "Gemma4Adapter", lambda m: m.model.language_model.layers, (6, 11), {}),
}


@pytest.mark.parametrize("name", list(VLMS))
def test_detected_and_located(name, models, landscape):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    fam, cls, blocks, grid, views = VLMS[name]
    assert a.family == fam and type(a).__name__ == cls and a.blocks() is blocks(model)
    assert a.probes == ("full",) and a.mask_token_id is None and a.default_layer() == 1
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    assert prep.grid == grid and prep.image_positions.numel() == grid[0] * grid[1]
    assert {k: v.grid for k, v in prep.views.items()} == views
    assert (prep.input_ids[0, prep.image_positions] == a.image_token_id).all()


@pytest.mark.parametrize("name", list(VLMS))
def test_gradients_scores_explanation_generation(name, models, landscape):
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    pos, ids = [prep.response_start + i for i in (1, 2)], prep.response_ids[1:3]
    r = probe(a, prep, pos, ids, 1)
    ref = published_gradients(a, prep, pos, ids, 1)
    assert ref.abs().max() > 0
    torch.testing.assert_close(r.per_target_grads(), ref, atol=1e-7, rtol=1e-5)
    with torch.no_grad():
        logits = model(input_ids=prep.input_ids, **prep.model_inputs).logits[0].float()
    torch.testing.assert_close(r.scores, torch.stack([logits[p - 1, t] for p, t in zip(pos, ids)]))
    e = Explainer(model, proc).explain(landscape, response=RESPONSE)
    assert e.tokens == RESPONSE.split() and e.maps.shape == (7, *VLMS[name][3]) and e.probe == "full"
    g = Explainer(model, proc).explain(landscape, response_length=5)
    assert g.steps == 5 and len(g.response_ids) == 5  # autoregressive: one token per step


@pytest.mark.parametrize("name", ["llava-next", "llava-onevision"])
def test_anyres_views_match_where_the_model_puts_its_newlines(name, models, landscape):
    """The model's own packing writes ``image_newline`` after every row of the
    high-resolution grid; the located views must leave exactly those slots out."""
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, None, a.encode_response(RESPONSE))
    seen = {}

    def grab(mod, args, kwargs):
        seen["emb"] = kwargs["inputs_embeds"][0].detach()

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=prep.input_ids, **prep.model_inputs)
    finally:
        hook.remove()
    emb = seen["emb"]
    span = torch.nonzero(prep.input_ids[0] == a.image_token_id).reshape(-1)
    is_newline = (emb[span] == model.model.image_newline).all(-1)
    located = set(prep.views["base"].positions.tolist()) | set(prep.image_positions.tolist())
    assert set(span[is_newline].tolist()) == set(span.tolist()) - located
    assert int(is_newline.sum()) == prep.grid[0]  # one newline per row
    assert prep.views["base"].positions.tolist() == span[:16].tolist()  # the base view comes first


@pytest.mark.parametrize("name", ["llava-next", "llava-onevision"])
def test_an_image_too_elongated_for_a_highres_grid_is_explained_on_its_base_view(name, models):
    """300 x 20 pixels: the padded high-resolution grid is 12 tokens wide, and cropped
    to the image's aspect it keeps int(20 * 12 / 300) = int(0.8) = 0 rows, so the model
    sees the 4 x 4 base view alone (transformers' processor writes 16 image tokens).
    Before, the default view failed ("grads is empty") and took view="all" with it."""
    from PIL import Image

    from dcam.errors import InputError

    model, proc = models(name)
    a = auto_adapter(model, proc)
    img = Image.new("RGB", (300, 20), (200, 40, 40))
    prep = a.prepare(img, None, a.encode_response(RESPONSE))
    assert int((prep.input_ids[0] == a.image_token_id).sum()) == 16  # the processor's own count
    exp = Explainer(model, proc)
    e = exp.explain(img, response=RESPONSE)
    base = exp.explain(img, response=RESPONSE, view="base")
    assert e.view == "base" and e.grid == (4, 4)
    assert e.notes[-1] == ("the highres view of this 300x20 image has no tokens (its grid is 0x12): "
                           "the maps are the base view's")
    torch.testing.assert_close(e.maps, base.maps, atol=0, rtol=0)
    every = exp.explain(img, response=RESPONSE, view="all")
    torch.testing.assert_close(every.maps, base.maps, atol=0, rtol=0)
    # view="all" lists every view with tokens, also when only one has any (view_maps was {} here)
    assert list(every.view_maps) == ["base"] and every.view == "base"
    torch.testing.assert_close(every.view_maps["base"], base.maps, atol=0, rtol=0)
    # an image with both views names the default one it explained (it was None)
    wide = Image.new("RGB", (72, 40), (200, 40, 40))
    d, h = exp.explain(wide, response=RESPONSE), exp.explain(wide, response=RESPONSE, view="highres")
    assert d.view == h.view == "highres" and d.grid == h.grid
    with pytest.raises(InputError) as info:
        exp.explain(img, response=RESPONSE, view="highres")
    assert str(info.value) == ("view: the highres view of this 300x20 image has no tokens (its grid is 0x12); "
                               "views with tokens: base")


def test_view_default_is_no_view(models, tmp_path):
    """dcam lists "default" among the views; it refused the 300 x 20 image whose highres grid
    has no tokens ("view: the highres view ... has no tokens"), where no view falls back to the
    base view with a note, and an Explainer(view="default") was another run than one without."""
    from PIL import Image

    model, proc = models("llava-next")
    img = Image.new("RGB", (300, 20), (200, 40, 40))
    exp = Explainer(model, proc)
    assert Explainer(model, proc, view="default").view is None
    none = exp.explain(img, response=RESPONSE)
    base = exp.explain(img, response=RESPONSE, view="base")
    for d in (exp.explain(img, response=RESPONSE, view="default"),
              Explainer(model, proc, view="default").explain(img, response=RESPONSE),
              exp.explain_batch([img], responses=[RESPONSE], view="default")[0]):
        assert d.view == "base" and d.grid == (4, 4) and d.notes == none.notes and d.view_maps == {}
        assert d.notes[-1] == ("the highres view of this 300x20 image has no tokens (its grid is 0x12): "
                               "the maps are the base view's")
        torch.testing.assert_close(d.maps, base.maps, atol=0, rtol=0)
    # saved and loaded, the explanation names the view it explained, as without a view
    from dcam.saved import load_explanation

    d.save(str(tmp_path / "d"))
    assert load_explanation(str(tmp_path / "d")).view == "base"
    # "default" at a call is the model's default, not the explainer's view
    wide = Image.new("RGB", (72, 40), (200, 40, 40))
    d = Explainer(model, proc, view="base").explain(wide, response=RESPONSE, view="default")
    h = exp.explain(wide, response=RESPONSE, view="highres")
    assert d.view == "highres" and d.grid == h.grid == (6, 12)
    torch.testing.assert_close(d.maps, h.maps, atol=0, rtol=0)


def test_onevision_shrinks_large_maps():
    """anyres_max_1 on a 96 x 96 image: 3 x 3 tiles, a 12 x 12 map, ratio
    sqrt(144 / 16) = 3 > 1.1 -> shrunk to 12 // 3 = 4 per side."""
    from PIL import Image

    from dcam.testing.hf_tiny import tiny_llava_onevision

    model, proc = tiny_llava_onevision(aspect="anyres_max_1")
    a = auto_adapter(model, proc)
    prep = a.prepare(Image.new("RGB", (96, 96), (90, 120, 30)), None, a.encode_response("a red circle"))
    assert prep.grid == (4, 4) and prep.views["base"].grid == (4, 4)


@pytest.mark.parametrize("name", ["gemma4", "diffusion-gemma"])
def test_gemma4_image_past_the_position_table_is_refused_naming_the_image(name, models):
    """1000 x 50 pixels: the image processor keeps the aspect, so patch x positions reach 73,
    past the tiny config's table of 64 per axis; transformers' own vision tower raises an
    IndexError there (checked below), which reached the user as a traceback."""
    from PIL import Image

    from dcam.errors import InputError

    model, proc = models(name)
    img = Image.new("RGB", (1000, 50), (90, 120, 30))
    out = proc.image_processor(images=[img], return_tensors="pt")
    table = model.config.vision_config.position_embedding_size
    assert int(out["image_position_ids"].max()) == 73 >= table == 64
    with pytest.raises(IndexError):
        with torch.no_grad():
            tower = next(m for n, m in model.named_modules() if n.endswith("vision_tower"))
            tower(pixel_values=out["pixel_values"], pixel_position_ids=out["image_position_ids"])
    with pytest.raises(InputError) as info:
        Explainer(model, proc).explain(img, response=[13, 1, 26, 13] if name == "diffusion-gemma" else RESPONSE)
    assert str(info.value) == ("image: at 1000x50 pixels the vision tower's patches reach position 73, past its "
                               "table of 64 per axis (vision_config.position_embedding_size); crop or pad the image "
                               "closer to square")


def test_batch_of_images_with_one_token_layout_but_different_tiles(models):
    """A 7 x 4 image (1 x 2 tiles) and a 67 x 31 one (1 x 3 tiles) both unpad to a 4 x 8
    grid, so their token layouts are equal, but their pixel_values are [1, 3, ...] and
    [1, 4, ...] (base view + tiles). explain_batch grouped them by layout alone and failed
    in torch.cat ("Sizes of tensors must match"). The smaller one is now padded with an
    all-zero tile (the model keeps the tiles its image size implies): one forward, and the
    maps equal one explain() per image."""
    import numpy as np
    from PIL import Image

    from dcam.probe import layout_key

    model, proc = models("llava-next")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((4, 7), (31, 67))]
    a = auto_adapter(model, proc)
    preps = [a.prepare(img, None, a.encode_response("red")) for img in imgs]
    assert layout_key(preps[0]) == layout_key(preps[1])  # the same sequence layout ...
    assert [tuple(p.model_inputs["pixel_values"].shape[:2]) for p in preps] == [(1, 3), (1, 4)]  # ... not tiles
    stacked = a.stack_inputs(preps)["pixel_values"]
    assert tuple(stacked.shape[:2]) == (2, 4) and not bool(stacked[0, 3].any())  # one zero tile
    torch.testing.assert_close(stacked[0, :3], preps[0].model_inputs["pixel_values"][0], atol=0, rtol=0)
    exp = Explainer(model, proc)
    seen = []
    h = exp.adapter.blocks()[exp.layer].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        batch = exp.explain_batch(imgs, responses=["red", "red"])
    finally:
        h.remove()
    assert seen[-1] == 2  # one forward of both
    for img, e in zip(imgs, batch):
        one = exp.explain(img, response="red")
        assert e.grid == one.grid == (4, 8)
        torch.testing.assert_close(e.maps, one.maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["llava-next", "qwen-vl", "gemma3"])
def test_a_prompt_with_two_image_markers_is_refused_naming_the_prompt(name, models, landscape):
    """One image per prompt. Two markers reached the processor, whose ValueError
    ("Found total 2 <image> tokens and 1 images") was no InputError (the CLI printed a
    traceback and exited 1)."""
    from dcam.errors import InputError

    model, proc = models(name)
    a = auto_adapter(model, proc)
    marker = {"llava-next": "<image>", "qwen-vl": "<|vision_start|><|image_pad|><|vision_end|>",
              "gemma3": "<start_of_image>"}[name]
    with pytest.raises(InputError, match=r"^prompt: exactly one image marker \(.*\) is supported, got 2$"):
        a.prepare(landscape, f"{marker} {marker} describe", a.encode_response("red"))
    a.prepare(landscape, f"{marker} describe", a.encode_response("red"))  # one is the usual prompt


@pytest.mark.parametrize("name", list(VLMS))
def test_no_word_of_the_stand_in_vocabulary_is_an_end_of_sequence_id(name, models, landscape):
    """The stand-ins' text configs left bos/eos/pad at transformers' defaults (1, 2), which
    are ordinary words of their vocabulary: "the" (id 2) was an eos id, so "a dog on the
    table" was explained as a, dog, on, with no warning."""
    from dcam.testing.vocab import WORDS

    model, proc = models(name)
    a = auto_adapter(model, proc)
    words = set(a.tokenizer.convert_tokens_to_ids(list(WORDS)))
    assert not words & set(a.skip_ids())
    e = Explainer(model, proc).explain(landscape, response="a dog on the table")
    assert e.tokens == ["a", "dog", "on", "the", "table"]


def test_llava_maps_lie_in_the_centre_crop_its_processor_keeps(models):
    """LLaVA-1.5's CLIP processor resizes the shortest edge to 32 and keeps the centre
    32 x 32: a 72 x 40 image becomes 57 x 32 (int(32 * 72 / 40)), cropped at x = 12
    ((57 - 32) // 2), so the model sees x from 12/57 to 44/57 of the image. The box was
    the whole image, and every map of a non-square image was stretched over it."""
    import numpy as np
    from PIL import Image

    model, proc = models("llava")
    a = auto_adapter(model, proc)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
    prep = a.prepare(Image.fromarray(pixels), None, a.encode_response(RESPONSE))
    assert prep.view(None).box == pytest.approx((12 / 57, 0.0, 44 / 57, 1.0))
    # what lies outside the box does not reach the model; what lies inside does
    outside, inside = pixels.copy(), pixels.copy()
    outside[:, :10], outside[:, 62:] = 0, 255
    inside[:, 30:40] = 0
    for changed, same in ((outside, True), (inside, False)):
        p = a.prepare(Image.fromarray(changed), None, a.encode_response(RESPONSE))
        assert torch.equal(p.model_inputs["pixel_values"], prep.model_inputs["pixel_values"]) == same
    e = Explainer(model, proc).explain(Image.fromarray(pixels), response=RESPONSE)
    assert e.box == pytest.approx((12 / 57, 0.0, 44 / 57, 1.0)) and e.view is None and e.view_maps == {}
    square = a.prepare(Image.fromarray(pixels[:, :40]), None, a.encode_response(RESPONSE))
    assert square.view(None).box == (0.0, 0.0, 1.0, 1.0)


def test_what_the_processor_or_the_model_would_refuse_is_refused_in_one_line(models, landscape):
    # each was a ValueError traceback from transformers (exit 1 in the CLI, losing a batch's other images)
    from PIL import Image

    from dcam.errors import InputError

    exp = Explainer(*models("qwen-vl"))
    for kw, line in (({"image": Image.new("RGB", (600, 2))},
                      "image: the processor refused the 600x2 image (absolute aspect ratio must be smaller than 200, "
                      "got 300.0)"),
                     ({"response": "a <|image_pad|> red"},
                      f"response: holds '<|image_pad|>' (id {exp.model.config.image_token_id}), which is the image "
                      "placeholder the model fills with image features"),
                     ({"prompt": "<|video_pad|> describe"},
                      "prompt: holds the video marker '<|video_pad|>'; dcam explains one image, not videos")):
        args = dict({"image": landscape, "response": "a red"}, **kw)
        with pytest.raises(InputError) as info:
            exp.explain(args.pop("image"), **args)
        assert str(info.value) == line


def test_a_processor_of_another_family_is_refused_naming_the_processor(models):
    # a LlavaProcessor beside a Qwen2-VL model ended in "KeyError: 'image_grid_thw'", a Gemma3Processor beside an
    # Idefics3 model in "ValueError: not enough values to unpack"
    from dcam.errors import InputError

    for model_name, proc_name, line in (
            ("qwen-vl", "llava", "a LlavaProcessor does not go with this qwen2_vl model"),
            ("idefics3", "gemma3", "a Gemma3Processor does not go with this idefics3 model"),
            ("llava", "llava-next", "a LlavaNextProcessor does not go with this llava model")):
        with pytest.raises(InputError) as info:
            auto_adapter(models(model_name)[0], models(proc_name)[1])
        assert str(info.value) == f"processor: {line}; pass the processor of the model's own checkpoint"


@pytest.mark.parametrize("name", ["diffusion-gemma", "gemma4"])
def test_gemma_adapters_refuse_the_tokens_they_place_themselves(name, models, landscape):
    # "<bos> <start_of_image> describe" gave <bos> <boi> [image] <eoi> <bos> <boi> describe, without a word
    from dcam.errors import InputError

    a = auto_adapter(*models(name))
    for prompt, tok in (("<bos> describe", "<bos>"), ("<start_of_image> describe", "<start_of_image>"),
                        ("<image_soft_token> describe", "<image_soft_token>")):
        with pytest.raises(InputError) as info:
            a.prepare(landscape, prompt, a.encode_response("red"))
        tid = a.tokenizer.convert_tokens_to_ids(tok)
        assert str(info.value) == (f"prompt: holds {tok!r} (id {tid}), which dcam places itself ([BOS] <boi> image "
                                   "<eoi> come before the prompt); give the text without it")
    a.prepare(landscape, "describe", a.encode_response("red"))


@pytest.mark.parametrize("name", ["idefics3", "smolvlm"])
def test_a_prompt_spelling_a_tile_marker_keeps_the_image_tiles(name, models, landscape):
    """The tokenizer makes a prompt's "<row_1_col_1>" the tile marker's own token: it was
    counted as a fifth tile of the 2 x 2, and the prompt failed blaming the image span.
    Only the markers inside the image block are tiles. The block, hand-laid (a tile's marker
    just before its 2 x 2 tokens): <fake> <row_1_col_1> 2..5 <fake> <row_1_col_2> 8..11
    <fake> <row_2_col_1> 14..17 <fake> <row_2_col_2> 20..23 <fake> <global-img> 26..29 <fake>."""
    model, proc = models(name)
    a = auto_adapter(model, proc)
    prep = a.prepare(landscape, "What is in <row_1_col_1> ?", a.encode_response("red"))
    marker = a.tokenizer.convert_tokens_to_ids("<row_1_col_1>")
    assert (prep.input_ids[0, 30:] == marker).sum() == 1  # the prompt's marker is in the sequence, after the image
    assert prep.views["base"].positions.tolist() == [26, 27, 28, 29]
    # stitched rows: tile (1,1) row 0 then tile (1,2) row 0, ...
    assert prep.views["highres"].positions.tolist() == [2, 3, 8, 9, 4, 5, 10, 11, 14, 15, 20, 21, 16, 17, 22, 23]
    assert prep.grid == (4, 4) and prep.image_positions.tolist() == prep.views["highres"].positions.tolist()
    e = Explainer(model, proc).explain(landscape, prompt="What is in <row_1_col_1> ?", response="red")
    assert e.maps.shape == (1, 4, 4) and e.view == "highres"
