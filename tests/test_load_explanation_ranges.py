"""dcam.load_explanation refuses a meta.json whose values lie outside what Explanation.save writes: each
damaged copy of a real save (a response_ids list of another length than its tokens, a view the save has
no maps of, pieces outside the response, a repeat ratio outside [0, 1], a word count below the traced
words, a layer that is no block number) loaded without complaint before (all but the layer)."""
import json
import shutil

import pytest
import torch

from dcam.errors import InputError
from dcam.explain import Explainer
from dcam.saved import load_explanation
from dcam.testing import tiny_toy
from dcam.testing.views import TwoViewAdapter
from dcam.zoo.data import generate_sample



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"traj": (an explanation with its trajectory, its folder), "views": (one of every view, its folder)}"""
    root = tmp_path_factory.mktemp("saves")
    model, proc = tiny_toy(seed=2)
    sample = generate_sample((0, 2, 21), image_size=32, n_objects=2)
    e = Explainer(model, proc).explain(sample.image, steps=4, trajectory=True)
    e.save(root / "traj")
    v = Explainer(adapter=TwoViewAdapter(model, proc), view="all").explain(sample.image, response=sample.caption,
                                                                          probe="full")
    v.save(root / "views")
    return {"traj": (e, root / "traj"), "views": (v, root / "views")}


def _damaged(saved, which, tmp_path, edit):
    folder = tmp_path / which
    shutil.copytree(saved[which][1], folder)
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _refused(folder, where, message):
    with pytest.raises(InputError) as info:
        load_explanation(folder)
    text = str(info.value)
    assert text.startswith(f"folder: {str(folder)!r}'s {where}: ") and message in text and "\n" not in text, text


def test_a_valid_save_still_loads_with_equal_maps(saved):
    e, folder = saved["traj"]
    back = load_explanation(folder)
    assert torch.equal(back.maps, e.maps.float()) and torch.equal(back.trajectory.maps, e.trajectory.maps.float())
    assert (back.response_ids, back.pieces, back.layer, back.view) == (e.response_ids, e.pieces, e.layer, None)
    assert back.repeat_ratio == e.repeat_ratio and back.trajectory.word_count == e.trajectory.word_count
    v, folder = saved["views"]
    back = load_explanation(folder)
    assert back.view == "top" and sorted(back.view_maps) == ["bottom", "top"]
    for name in ("top", "bottom"):
        assert torch.equal(back.view_maps[name], v.view_maps[name])
    assert torch.equal(back.maps, v.maps)


def test_the_ends_of_the_ranges_still_load(saved, tmp_path):
    # repeat_ratio's range is [0, 1] (dcam.refine's); a word count one past the last traced word's number
    e = saved["traj"][0]
    last = max(e.trajectory.word_numbers)

    def edit(meta):
        meta["repeat_ratio"], meta["trajectory"]["repeat_ratio"] = 1, 0.0
        meta["trajectory"]["word_count"] = last + 1

    back = load_explanation(_damaged(saved, "traj", tmp_path, edit))
    assert (back.repeat_ratio, back.trajectory.repeat_ratio, back.trajectory.word_count) == (1.0, 0.0, last + 1)


def test_response_ids_of_another_length_than_its_tokens_are_refused(saved, tmp_path):
    e = saved["traj"][0]
    n = len(e.response_tokens)  # one id per token of the response
    for ids, got in ((e.response_ids[:-1], n - 1), (e.response_ids + [3], n + 1)):
        folder = _damaged(saved, "traj", tmp_path / str(got), lambda meta: meta.__setitem__("response_ids", ids))
        _refused(folder, "meta.json", f"response_ids must have one id per token of response_tokens ({n}), got {got}")


@pytest.mark.parametrize("which,view,message", [
    ("views", "left", "view must be one of the saved views (bottom, top), got 'left'"),
    ("views", None, "view must be one of the saved views (bottom, top), got None"),
    # without every view's maps: the words of a request are never what a save records
    ("traj", "all", "view must be null or the name of the view explained"),
    ("traj", "default", "view must be null or the name of the view explained"),
])
def test_a_view_the_save_cannot_have_is_refused(saved, tmp_path, which, view, message):
    _refused(_damaged(saved, which, tmp_path, lambda meta: meta.__setitem__("view", view)), "meta.json", message)


def _pieces_cases(n_items, length):
    last = n_items - 1
    return [("negative", lambda p: [[-1]] + p[1:], 0, "[-1]"),
            ("past the response", lambda p: p[:-1] + [[p[-1][0], length]], last, None),
            ("empty", lambda p: p[:-1] + [[]], last, "[]"),
            ("not starting at response_indices", lambda p: p[:-1] + [p[-2]], last, None)]


@pytest.mark.parametrize("where", ["meta.json", "meta.json trajectory"])
def test_pieces_outside_the_response_are_refused(saved, tmp_path, where):
    e = saved["traj"][0]
    items = e if where == "meta.json" else e.trajectory
    length = len(e.response_ids)  # 12 slots: 0..11
    for name, change, k, shown in _pieces_cases(len(items.pieces), length):
        def edit(meta):
            holder = meta if where == "meta.json" else meta["trajectory"]
            holder["pieces"] = change(holder["pieces"])

        folder = _damaged(saved, "traj", tmp_path / name.replace(" ", "_"), edit)
        message = f"pieces[{k}] must be slots of the {length}-token response starting at response_indices[{k}] " \
                  f"({items.response_indices[k]}), got "
        _refused(folder, where, message + (shown or ""))


@pytest.mark.parametrize("where,value", [("meta.json", 7), ("meta.json", -0.25), ("meta.json trajectory", 7),
                                         ("meta.json trajectory", 1.5)])
def test_a_repeat_ratio_outside_zero_one_is_refused(saved, tmp_path, where, value):
    def edit(meta):
        (meta if where == "meta.json" else meta["trajectory"])["repeat_ratio"] = value

    _refused(_damaged(saved, "traj", tmp_path, edit), where,
             f"repeat_ratio must be a finite number in [0, 1], got {value!r}")


@pytest.mark.parametrize("value", [-3, 2, 0])
def test_a_word_count_below_the_traced_words_is_refused(saved, tmp_path, value):
    need = max(saved["traj"][0].trajectory.word_numbers) + 1  # the words are numbered from 0

    def edit(meta):
        meta["trajectory"]["word_count"] = value

    _refused(_damaged(saved, "traj", tmp_path, edit), "meta.json trajectory",
             f"word_count must be a whole number >= {need}, got {value}")


@pytest.mark.parametrize("where,value", [("meta.json", -1), ("meta.json", 2.5), ("meta.json trajectory", -2),
                                         ("meta.json trajectory", 1.0)])
def test_a_layer_that_is_no_block_number_is_refused(saved, tmp_path, where, value):
    # the save does not record how many blocks the model has: a block number is a whole number >= 0
    def edit(meta):
        (meta if where == "meta.json" else meta["trajectory"])["layer"] = value

    _refused(_damaged(saved, "traj", tmp_path, edit), where, "layer must be a whole number >= 0")


@pytest.mark.parametrize("boxes,where,message", [
    ({"left": [0, 0, 1, 1]}, "meta.json", "view_boxes must be a box for some of the saved views (bottom, top)"),
    ({"top": [0, 0.5, 1, 0.5]}, "meta.json view_boxes", "top must be 4 finite numbers"),
    ([1, 2], "meta.json", "view_boxes must be a box for some of the saved views"),
])
def test_view_boxes_of_views_not_saved_or_not_boxes_are_refused(saved, tmp_path, boxes, where, message):
    _refused(_damaged(saved, "views", tmp_path, lambda meta: meta.__setitem__("view_boxes", boxes)), where, message)


def test_a_save_from_before_view_boxes_loads_without_them(saved, tmp_path):
    back = load_explanation(_damaged(saved, "views", tmp_path, lambda meta: meta.pop("view_boxes")))
    assert back.view_boxes == {} and torch.equal(back.map(1, view="top"), back.view_maps["top"][1])
    with pytest.raises(InputError, match=r"^view: where the 'bottom' view lies on the image was not saved"):
        back.overlay(1, view="bottom")
