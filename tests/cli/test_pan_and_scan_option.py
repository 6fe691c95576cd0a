"""Gemma 3's pan-and-scan for a model picked by its folder (``--model DIR``, ``dcam.models.load_model``).

transformers 5.24's Gemma3Processor call hands its image processor the class's own settings
(``do_pan_and_scan`` False, ``pan_and_scan_min_crop_size`` 256, ...) over the ones the checkpoint's
preprocessor_config.json saved, so a checkpoint saved with ``do_pan_and_scan: true`` ran without crops and
no CLI option turned them on. Here a checkpoint's choice holds with no flag, ``--pan-and-scan`` /
``--no-pan-and-scan`` override it, and either option for a model whose processor cannot crop is one line,
exit 2, nothing written.

The references are worked outside dcam: the crop counts by hand from the processor's rule (transformers
5.24, ``Gemma3ImageProcessor.pan_and_scan_batched``: a long / short ratio of at least
``min_ratio_to_activate``; ``k = clamp(min(floor(long / short + 0.5), floor(long / min_crop)), 2, max_crops)``
crops of ``ceil(long / k)`` pixels, none where a crop's short side is under ``min_crop``) and from the
processor or image processor called directly; the map's grid from the crop geometry (``S`` tokens a side
per crop, crops side by side along the long side)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dcam.errors import InputError

S = 4  # tokens a side of the whole image and of each crop: mm_tokens_per_image 16 in tiny_gemma3
PROMPT = "<start_of_image> describe"
RESPONSE = "a red circle"
#: the checkpoint's own settings: crops down to 16 px (transformers' default, 256, crops no small image)
CHOSEN = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=16, pan_and_scan_max_num_crops=4,
              pan_and_scan_min_ratio_to_activate=1.2)
#: (width, height) -> crops, by hand:
#: with CHOSEN: 100 x 40: floor(2.5 + 0.5) = 3, floor(100 / 16) = 6 -> 3 crops of 34 px (the last 32); 50 x 50:
#: ratio 1 < 1.2, none.
#: with transformers' defaults (min crop 256): 512 x 256: floor(2 + 0.5) = 2, floor(512 / 256) = 2 -> 2 crops of
#: 256 x 256; 100 x 40: 3 crops of 34 x 40, under 256 -> none.
WIDE, SQUARE, LARGE = (100, 40), (50, 50), (512, 256)
CHOSEN_CROPS = {WIDE: 3, SQUARE: 0}
DEFAULT_CROPS = {LARGE: 2, WIDE: 0}
#: the column centres of the 100 x 40 image's stitched map: S cells over each crop (34, 34 and 32 px)
WIDE_X = [(x0 + (j + 0.5) * (x1 - x0) / S) / 100 for x0, x1 in ((0, 34), (34, 68), (68, 100)) for j in range(S)]


def _image(wh, seed=0):
    w, h = wh
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _save_gemma3(folder, settings=None, hub_layout=True):
    """A tiny random Gemma 3 and its processor saved into ``folder``, the image processor with ``settings``;
    ``hub_layout``: its settings in preprocessor_config.json, as the published checkpoints keep them
    (transformers 5.24's save_pretrained nests them in processor_config.json)."""
    from dcam.testing.hf_tiny import tiny_gemma3

    model, proc = tiny_gemma3()
    for k, v in (settings or {}).items():
        setattr(proc.image_processor, k, v)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    if hub_layout:
        path = os.path.join(folder, "processor_config.json")
        with open(path) as f:
            config = json.load(f)
        image = dict(config.pop("image_processor"), processor_class="Gemma3Processor")
        with open(path, "w") as f:
            json.dump(config, f)
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
            json.dump(image, f)
    return str(folder)


@pytest.fixture(scope="module")
def chosen_dir(tmp_path_factory):
    """A Gemma 3 checkpoint whose preprocessor_config.json turns pan-and-scan on (crops down to 16 px)."""
    return _save_gemma3(tmp_path_factory.mktemp("gemma3_chosen"), CHOSEN)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """A Gemma 3 checkpoint that leaves pan-and-scan to transformers' defaults (off; 256 px crops)."""
    return _save_gemma3(tmp_path_factory.mktemp("gemma3_plain"))


def _rows(processor, wh):
    return int(processor(images=_image(wh), text=PROMPT, return_tensors="pt")["pixel_values"].shape[0])


@pytest.mark.parametrize("hub_layout", [True, False])
def test_a_checkpoint_that_chose_pan_and_scan_is_loaded_with_it(tmp_path, hub_layout):
    import transformers

    from dcam.models import load_model

    folder = _save_gemma3(tmp_path / "ckpt", CHOSEN, hub_layout)
    # outside dcam: transformers' own processor of the folder ignores the choice; its image processor alone,
    # which reads the saved settings, crops as the hand-worked counts say
    own = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    assert _rows(own, WIDE) == 1
    for wh, k in CHOSEN_CROPS.items():
        assert own.image_processor(images=_image(wh), return_tensors="pt")["num_crops"].tolist() == [k]
    _, proc = load_model(folder)
    assert {wh: _rows(proc, wh) - 1 for wh in CHOSEN_CROPS} == CHOSEN_CROPS
    _, off = load_model(folder, pan_and_scan=False)
    assert _rows(off, WIDE) == 1


def test_load_model_turns_pan_and_scan_on_and_refuses_a_bad_choice(plain_dir):
    import transformers

    from dcam.models import load_model

    own = transformers.AutoProcessor.from_pretrained(plain_dir, local_files_only=True)
    # the processor called directly with do_pan_and_scan=True (its default crop settings): the reference count
    assert {wh: int(own(images=_image(wh), text=PROMPT, return_tensors="pt", do_pan_and_scan=True)
                    ["pixel_values"].shape[0]) - 1 for wh in DEFAULT_CROPS} == DEFAULT_CROPS
    _, default = load_model(plain_dir)
    assert _rows(default, LARGE) == 1  # the checkpoint chose nothing: transformers' default, off
    _, on = load_model(plain_dir, pan_and_scan=True)
    assert {wh: _rows(on, wh) - 1 for wh in DEFAULT_CROPS} == DEFAULT_CROPS
    with pytest.raises(InputError, match=r"^pan_and_scan: expected True, False or None \(the checkpoint's "
                                         r"choice\), got 'yes'$"):
        load_model(plain_dir, pan_and_scan="yes")


def _explain(cli, tmp_path, folder, wh, *options):
    path = tmp_path / f"{wh[0]}x{wh[1]}.png"
    _image(wh).save(path)
    out = tmp_path / "out"
    rc, _, err = cli("explain", path, "--model", folder, "--prompt", PROMPT, "--response", RESPONSE, "--out", out,
                     "--quiet", *options)
    assert rc == 0, err
    with open(out / "meta.json") as f:
        return json.load(f)


def _grid(wh, crops):
    """The default view's grid: the whole image's S x S alone, or the crops' side by side along the long side."""
    if not crops:
        return [S, S]
    return [S, S * crops] if wh[0] >= wh[1] else [S * crops, S]


@pytest.mark.parametrize("view", [None, "highres", "all"])
def test_the_cli_crops_as_the_checkpoint_chose_with_no_flag(cli, tmp_path, chosen_dir, view):
    meta = _explain(cli, tmp_path, chosen_dir, WIDE, *(["--view", view] if view else []))
    hi = _grid(WIDE, CHOSEN_CROPS[WIDE])
    assert hi == [4, 12]
    assert meta["view"] == "highres" and meta["grid"] == hi
    assert meta["cells"]["x"] == pytest.approx(WIDE_X, abs=1e-12)
    if view == "all":
        assert meta["views"] == {"highres": hi, "base": [S, S]}


@pytest.mark.parametrize("view", [None, "base"])
def test_the_cli_maps_are_the_explainers_on_the_processor_cropping(cli, tmp_path, chosen_dir, view):
    # the maps of `dcam explain --model DIR` are those of an Explainer on transformers' own model and processor
    # of the folder, crops turned on by hand with the call settings transformers documents (images_kwargs);
    # the base view's too: the model saw the crops after the whole image, which changes every map
    import transformers
    from safetensors.torch import load_file

    from dcam.explain import Explainer

    _explain(cli, tmp_path, chosen_dir, WIDE, *(["--view", view] if view else []))
    model = transformers.AutoModelForImageTextToText.from_pretrained(chosen_dir, local_files_only=True).eval()
    proc = transformers.AutoProcessor.from_pretrained(chosen_dir, local_files_only=True)
    proc.images_kwargs = dict(proc.images_kwargs, **CHOSEN)
    want = Explainer(model, proc, view=view).explain(_image(WIDE), PROMPT, response=RESPONSE)
    got = load_file(str(tmp_path / "out" / "maps.safetensors"))
    assert tuple(want.maps.shape[1:]) == ((S, S) if view == "base" else (4, 12))
    torch.testing.assert_close(got["maps"], want.maps, atol=0, rtol=0)


@pytest.mark.parametrize("checkpoint, wh, option, crops", [
    ("chosen", WIDE, "--no-pan-and-scan", 0),   # the checkpoint's crops turned off
    ("chosen", WIDE, "--pan-and-scan", 3),      # asked for what it chose: the same (its crop settings kept)
    ("plain", LARGE, "--pan-and-scan", 2),      # turned on (off by default), with transformers' crop settings
    ("plain", WIDE, "--pan-and-scan", 0),       # too small for 256-pixel crops: the one grid, as "base"
])
def test_the_option_overrides_the_checkpoint(cli, tmp_path, chosen_dir, plain_dir, checkpoint, wh, option, crops):
    folder = chosen_dir if checkpoint == "chosen" else plain_dir
    meta = _explain(cli, tmp_path, folder, wh, option, "--view", "all")
    assert meta["grid"] == _grid(wh, crops)
    if crops:
        assert meta["view"] == "highres" and meta["views"] == {"highres": _grid(wh, crops), "base": [S, S]}
    else:
        assert meta["view"] == "base" and meta["views"] == {"base": [S, S]}
        (tmp_path / "base").mkdir()
        base = _explain(cli, tmp_path / "base", folder, wh, option, "--view", "base")
        assert base["view"] == "base" and base["grid"] == [S, S]
    if checkpoint == "plain":  # without the option: transformers' default, no crops
        (tmp_path / "plain").mkdir()
        assert _explain(cli, tmp_path / "plain", folder, wh)["grid"] == [S, S]


def _command(name, tmp_path, image):
    """(argv of ``dcam NAME`` on the bundled toy model, the files it would write)."""
    out = tmp_path / "out"
    if name == "explain":
        return ["explain", image, "--response", "red circle", "--out", out], [out]
    if name == "run":
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(json.dumps({"id": "a", "image": image}) + "\n")
        return ["run", manifest, "--out", out], [out]
    if name == "eval":
        return ["eval", "--n", 1, "--out", out], [out]
    return ["grounding", "--n", 1, "--json", tmp_path / "g.json"], [tmp_path / "g.json"]


@pytest.mark.parametrize("option", ["--pan-and-scan", "--no-pan-and-scan"])
@pytest.mark.parametrize("command", ["explain", "run", "eval", "grounding"])
def test_the_option_for_a_model_without_pan_and_scan_is_one_line(cli, error_line, tmp_path, shapes_png, command,
                                                                  option):
    argv, outputs = _command(command, tmp_path, shapes_png)
    rc, out, err = cli(*argv, option, "--quiet")
    assert rc == 2
    assert error_line(err, command) == (f"dcam {command}: error: {option}: this dcam_shapes_dmllm model's processor "
                                        "(ShapesProcessor) has no pan-and-scan (Gemma 3's crops); leave it out")
    assert len(err) == 1 and out == ""
    assert [p for p in outputs if os.path.lexists(p)] == []


def test_a_transformers_model_without_pan_and_scan_is_named_by_its_type(cli, error_line, tmp_path):
    from dcam.testing.hf_tiny import tiny_llava

    model, proc = tiny_llava()
    model.save_pretrained(tmp_path / "llava")
    proc.save_pretrained(tmp_path / "llava")
    _image(WIDE).save(tmp_path / "wide.png")
    rc, _, err = cli("explain", tmp_path / "wide.png", "--model", tmp_path / "llava", "--response", RESPONSE,
                     "--out", tmp_path / "out", "--pan-and-scan", "--quiet")
    assert rc == 2
    assert error_line(err) == ("dcam explain: error: --pan-and-scan: this llava model's processor (LlavaProcessor) "
                               "has no pan-and-scan (Gemma 3's crops); leave it out")
    assert not os.path.lexists(tmp_path / "out")


def test_both_options_at_once_are_refused(cli, tmp_path, shapes_png):
    rc, _, err = cli("explain", shapes_png, "--pan-and-scan", "--no-pan-and-scan", "--out", tmp_path / "out")
    assert rc == 2 and len(err) == 1
    assert err[0].endswith("error: argument --no-pan-and-scan: not allowed with argument --pan-and-scan")
    assert not os.path.lexists(tmp_path / "out")



def test_a_run_resumed_with_other_crops_is_refused(cli, tmp_path, chosen_dir):
    # the crop settings decide every map: a resume with --no-pan-and-scan of a run that cropped was taken as the
    # same run, mixing the two layouts in one folder
    imgs, out = tmp_path / "imgs", tmp_path / "run"
    imgs.mkdir()
    _image(WIDE, 1).save(imgs / "a.png")
    common = ["--model", chosen_dir, "--response-length", "2", "--threads", "1", "--quiet"]
    assert cli("run", imgs, "--out", out, *common)[0] == 0
    assert json.loads((out / "run.json").read_text())["identity"]["pan_and_scan"] == CHOSEN
    _image(WIDE, 2).save(imgs / "b.png")
    rc, _, err = cli("run", imgs, "--out", out, "--no-pan-and-scan", *common)
    assert rc == 2 and err == [f"dcam run: error: --out: {str(out)!r} holds a run of another model/method/config "
                               "(differs in: pan_and_scan.do_pan_and_scan); pass --overwrite to start over, or "
                               "choose a new folder"]
    assert cli("run", imgs, "--out", out, "--pan-and-scan", *common)[0] == 0  # what the checkpoint chose: the same
    grids = [json.loads(line)["grid"] for line in (out / "index.jsonl").read_text().splitlines() if line]
    assert grids == [[S, 12], [S, 12]]
    # a folder a dcam without the settings wrote (its identity and fingerprint lack them) still resumes
    from dcam.runs.folder import fingerprint

    run = json.loads((out / "run.json").read_text())
    run["identity"].pop("pan_and_scan")
    run["fingerprint"] = fingerprint(run["identity"])
    (out / "run.json").write_text(json.dumps(run))
    _image(WIDE, 3).save(imgs / "c.png")
    assert cli("run", imgs, "--out", out, *common)[0] == 0
    assert len((out / "index.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "run.json").read_text())["identity"]["pan_and_scan"] == CHOSEN  # recorded from then on
