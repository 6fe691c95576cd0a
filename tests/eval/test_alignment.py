"""A caption's words aligned to the explained items by their decoded texts."""
from types import SimpleNamespace

import torch

from dcam.eval.alignment import word_maps, word_slots
from dcam.render.overlay import FULL_BOX
from dcam.words import align_words


def _explanation(tokens, pieces, response_tokens):
    maps = torch.arange(len(tokens) * 4, dtype=torch.float32).reshape(len(tokens), 2, 2)
    return SimpleNamespace(tokens=tokens, pieces=pieces, response_indices=[p[0] for p in pieces], maps=maps,
                           response_tokens=response_tokens, box=FULL_BOX)


def test_words_of_any_script_align_by_the_decoded_text():
    # byte-level BPE spells "猫" as "çĮ«" and "café" as "Ġcaf" "Ã©": on the token strings (kept to
    # ASCII letters) the cat had no map and was silently left out of the metrics
    e = _explanation(["a", "café", "猫", "Straße"], [[0], [1, 2], [3], [4]],
                     ["a", "Ġcaf", "Ã©", "çĮ«", "ĠStraÃŁe"])
    words = ["a", "café", "猫", "strasse"]
    got = word_maps(e, words)
    assert sorted(got) == [0, 1, 2, 3]
    for i in range(4):  # one item per word here: the word's map is its item's map
        torch.testing.assert_close(got[i], e.maps[i])
    assert word_slots(e, words) == [[0], [1, 2], [3], [4]]


def test_a_caption_word_several_items_cover_gets_their_mean():
    # granularity="tokens": "hotdog" explained as two pieces, each with its own map
    e = _explanation(["a", "hot", "dog"], [[0], [1], [2]], ["a", "Ġhot", "dog"])
    got = word_maps(e, ["a", "hotdog"])
    torch.testing.assert_close(got[1], (e.maps[1] + e.maps[2]) / 2)
    assert word_slots(e, ["a", "hotdog"]) == [[0], [1, 2]]


def test_only_the_explained_items_are_aligned():
    # targets=["red"]: both reds found in order, the other words have no map
    e = _explanation(["red", "red"], [[1], [4]], ["a", "red", "circle", "and", "red", "square"])
    got = word_maps(e, ["a", "red", "circle", "and", "red", "square"])
    assert sorted(got) == [1, 4]
    torch.testing.assert_close(got[4], e.maps[1])


def test_align_words_compares_letters_of_any_script():
    assert align_words(["日本", "の", "猫"], ["日本", "の", "猫"]) == [[0], [1], [2]]
    assert align_words(["café"], ["cafe\u0301"]) == [[0]]  # one Unicode form (NFC)
