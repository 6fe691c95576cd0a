"""The Python API side of the new-user trial: values checked (not clamped) and
refused with one InputError line naming the argument."""
import json
import os

import pytest
import torch
from PIL import Image

from dcam import CamConfig, Explainer, refine
from dcam.errors import InputError

RESPONSE = "a red circle and a blue square"


@pytest.fixture(scope="module")
def explainer():
    from dcam.testing import tiny_toy

    return Explainer(*tiny_toy())


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (32, 32), (200, 30, 30))


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and isinstance(exc_info.value, ValueError)  # InputError is a ValueError
    return msg


@pytest.mark.parametrize("steps", [2.5, True, 0, -3, "4"])
def test_steps_must_be_a_positive_int(explainer, image, steps):
    with pytest.raises(InputError) as info:
        explainer.explain(image, response=RESPONSE, steps=steps)
    assert _one_line(info) == f"steps must be an int >= 1, got {steps!r}"


@pytest.mark.parametrize("length", [0, 2.0, False])
def test_response_length_must_be_a_positive_int(explainer, image, length):
    with pytest.raises(InputError) as info:
        explainer.explain(image, response_length=length)
    assert _one_line(info) == f"response_length must be an int >= 1, got {length!r}"


def test_targets_none_and_word_numbers(explainer, image):
    with pytest.raises(InputError) as info:
        explainer.explain(image, response=RESPONSE, targets=None)
    assert _one_line(info) == "targets must be 'all', word numbers or words, got None"
    e = explainer.explain(image, response=RESPONSE, targets=[-1, "red"])
    # word numbers count the response's words (7 here), not its 12 slots with eos padding
    assert e.word_numbers == [1, 6] and [t for t in e.tokens] == ["red", "square"]
    with pytest.raises(InputError) as info:
        explainer.explain(image, response=RESPONSE, targets=7)
    assert _one_line(info) == f"targets: word number 7 is out of range for a response of 7 words ({RESPONSE})"


@pytest.mark.parametrize("targets", [5.5, 2.0])
def test_targets_that_are_not_words_or_numbers(explainer, image, targets):
    # a float was a TypeError traceback ("'float' object is not iterable")
    with pytest.raises(InputError) as info:
        explainer.explain(image, response=RESPONSE, targets=targets)
    assert _one_line(info) == f"targets must be 'all', word numbers or words, got {targets!r}"


@pytest.mark.parametrize("layer", [1.5, 1.0, True, "1"])
def test_layer_must_be_an_int(layer):
    # 1.5 was accepted and truncated to block 1
    from dcam.testing import tiny_toy

    with pytest.raises(InputError) as info:
        Explainer(*tiny_toy(), layer=layer)
    assert _one_line(info) == f"layer must be an int, got {layer!r}"


def test_response_encoding_messages(explainer, image):
    proc = explainer.processor
    assert proc.encode_response("A Red circle,  and a blue SQUARE.")[:7] == proc.encode_response(RESPONSE)[:7]
    with pytest.raises(InputError) as info:
        proc.encode_response(list(range(6, 20)))
    assert _one_line(info) == "response: 14 tokens, more than the 12 this model writes (its response length)"
    with pytest.raises(InputError) as info:
        explainer.explain(image, response="a purple hexagon")
    assert _one_line(info).startswith("response: 2 words not in the model's vocabulary: 'purple', 'hexagon'")


def test_cam_config_ranges():
    cases = [(dict(cba_floor=7), "CamConfig.cba_floor must be a finite number in [0, 1], got 7"),
             (dict(cba_weights=(0.15, -0.1, 0.2, 0.015)),
              "CamConfig.cba_weights must be 4 finite numbers >= 0 summing to at most 3.4e38 (float32)"),
             # each float32, but the threshold (their weighted sum of statistics up to 1) was inf
             (dict(cba_weights=(3.4e38,) * 4),
              "CamConfig.cba_weights must be 4 finite numbers >= 0 summing to at most 3.4e38 (float32)"),
             (dict(dacg_mean_high=0.2, dacg_mean_low=0.5), "CamConfig.dacg_mean_low (0.5) must not exceed "
                                                            "dacg_mean_high (0.2)"),
             # the kernels take an int32: 2**31 + 1 was accepted, then every backend failed with a traceback
             (dict(akd_kernel=2 ** 31 + 1), "CamConfig.akd_kernel must be at most 2147483647 (2**31 - 1), got "
                                            "2147483649")]
    for kwargs, msg in cases:
        with pytest.raises(InputError) as info:
            CamConfig(**kwargs)
        assert _one_line(info).startswith(msg)
    # at the bound the threshold stays finite on every backend (worked: at most 3e38 times statistics <= 1)
    raw = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    from dcam import available_backends

    for backend in available_backends():
        out = refine(raw, config=CamConfig(cba_weights=(1e38, 1e38, 1e38, 0.0)), backend=backend)
        assert bool(torch.isfinite(out.cba_threshold).all()), backend


def test_refine_refuses_raw_maps_outside_unit_range():
    raw = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    lo, hi = float((raw - 5).min()), float((raw - 5).max())
    with pytest.raises(InputError) as info:
        refine(raw - 5)
    assert _one_line(info) == (f"raw_maps must lie in [0, 1] (min-max normalised pooled maps), got values in "
                               f"[{lo!r}, {hi!r}]")
    # just past 1: the values are shown in full (":g" showed them as [1, 1])
    with pytest.raises(InputError) as info:
        refine(torch.full((1, 1, 5, 6), 1.0000001))
    assert _one_line(info).endswith("got values in [1.0000001192092896, 1.0000001192092896]")
    # the largest fixed kernel every backend takes is capped by the map, as a smaller one is
    assert refine(raw, CamConfig(akd_kernel=2 ** 31 - 1)).kernel_size.unique().tolist() == [15]


def test_coco_polygon_with_two_points_is_reported(tmp_path):
    from dcam.eval.datasets import load_coco

    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        Image.new("RGB", (40, 30), (10, 10, 10)).save(images / f"{i}.png")
    square = [5, 5, 20, 5, 20, 20, 5, 20]
    inst = {"images": [{"id": 1, "file_name": "1.png", "height": 30, "width": 40},
                       {"id": 2, "file_name": "2.png", "height": 30, "width": 40}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": [square]},
                            {"id": 20, "image_id": 2, "category_id": 1, "segmentation": [square]},
                            {"id": 21, "image_id": 2, "category_id": 2, "segmentation": [[1, 1, 9, 9]]}],
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]}
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(inst))
    ds = load_coco(str(images), str(path))
    with pytest.warns(UserWarning, match="skipped record 2"):
        recs = list(ds.records(5))
    assert [r.image.size for r in recs] == [(40, 30)]
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == "2"
    assert "annotation 21" in ds.skipped[0][1] and "polygon with 4 coordinates (needs >= 3 x,y points)" in \
        ds.skipped[0][1]


def test_save_max_side_checked(explainer, image, tmp_path):
    e = explainer.explain(image, response=RESPONSE, targets="red")
    with pytest.raises(InputError) as info:
        e.save(str(tmp_path / "o"), max_side=4)
    assert _one_line(info) == "max_side must be an int in [16, 8192], got 4"
    assert not os.path.exists(tmp_path / "o")


def test_overlay_arguments_checked():
    import numpy as np

    from dcam.render.overlay import show_cam_on_image

    img = np.zeros((4, 4, 3), np.uint8)
    for alpha in (1.5, float("nan"), "0.3", True):
        with pytest.raises(InputError) as info:
            show_cam_on_image(img, np.zeros((2, 2)), alpha=alpha)
        assert _one_line(info) == f"alpha must be a number in [0, 1], got {alpha!r}"
    with pytest.raises(InputError, match=r"^cam: a map must be 2-D \[h, w\], got shape \(1, 2, 2\)$"):
        show_cam_on_image(img, np.zeros((1, 2, 2)))
    with pytest.raises(InputError, match="^image: a float image must be in"):
        show_cam_on_image(np.full((4, 4, 3), 2.0), np.zeros((2, 2)))
    # a name matplotlib does not know was its multi-line KeyError
    for bad in ("nope", 3):
        with pytest.raises(InputError) as info:
            show_cam_on_image(img, np.zeros((2, 2)), colormap=bad)
        assert _one_line(info) == (f"colormap: {bad!r} is not a matplotlib colormap name (e.g. jet, viridis, "
                                   "inferno, turbo) or Colormap")
    import matplotlib

    # a Colormap object is taken as it is: its colours, not jet's
    got = show_cam_on_image(img, np.ones((2, 2)), alpha=1.0, colormap=matplotlib.colormaps["gray"])
    assert (got == 255).all()


def test_special_tokens_written_in_the_text_and_the_placeholder_are_refused(explainer, image):
    # "<image>" in a prompt or response made the image span 257 long ("image span has 257 tokens", and the CLI
    # blamed IMAGE); "[EOS]" cut the words after it ("a red [EOS] circle" explained "a red"), without a word
    tok = explainer.processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    special = "a special token (the image, ends, padding and masks are placed by the processor); give the text without it"
    for kwargs, line in (({"response": "a red <image> circle"}, f"response: holds '<image>', {special}"),
                         ({"prompt": "describe <image>", "response": "a red circle"}, f"prompt: holds '<image>', {special}"),
                         ({"response": "a red [EOS] circle"}, f"response: holds '[EOS]', {special}"),
                         ({"response": [6, 8, image_id, 12]},
                          f"response: holds '<image>' (id {image_id}), which is the image placeholder the model fills "
                          "with image features")):
        with pytest.raises(InputError) as info:
            explainer.explain(image, **kwargs)
        assert _one_line(info) == line
    # bytes as targets were read as word numbers (b"red": 114, 101, 100)
    for bad in (b"red", bytearray(b"\x01"), memoryview(b"\x01")):
        with pytest.raises(InputError) as info:
            explainer.explain(image, response="a red circle", targets=bad)
        assert _one_line(info) == (f"targets must be 'all', word numbers or words, got {type(bad).__name__}; decode "
                                   "the bytes to text")
