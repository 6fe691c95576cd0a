"""A target that names nothing because its accents, where its words break or the punctuation it
spaces differ from the response's is still refused (matching stays exact: "cafe" is not "café"),
and the refusal says what the response writes and what differs, so the user can type it.

The messages are written out by hand from each response."""
import re

import pytest

from dcam.errors import InputError
from dcam.phrases import closest_item
from dcam.targets import Item, select_items
from dcam.testing.support import byte_level_llada_v


def refusal(words, target):
    with pytest.raises(InputError) as info:
        select_items([Item(w, k, [k]) for k, w in enumerate(words)], [target])
    return str(info.value)


@pytest.mark.parametrize("words, target, message", [
    (["un", "café", "noir"], "cafe",
     "targets: word 'cafe' is not in the response; the response writes 'café' (give it as written: accents must "
     "be the response's) (words: un café noir)"),
    (["un", "cafe", "noir"], "Café",
     "targets: word 'Café' is not in the response; the response writes 'cafe' (give it as written: accents must "
     "be the response's) (words: un cafe noir)"),
    (["a", "red", "circle"], "red , circle",
     "targets: phrase 'red , circle' is not in the response; the response writes 'red circle' (give it as "
     "written: the punctuation or symbols standing alone between the words must be the response's) "
     "(words: a red circle)"),
    (["a", "red", ",", "circle"], "red circle",
     "targets: phrase 'red circle' is not in the response; the response writes 'red , circle' (give it as "
     "written: the punctuation or symbols standing alone between the words must be the response's) "
     "(words: a red , circle)"),
    (["a", "red", "circle"], "red circle .",
     "targets: phrase 'red circle .' is not in the response; the response writes 'red circle' (give it as "
     "written: the punctuation or symbols standing alone between the words must be the response's) "
     "(words: a red circle)"),
    (["a", "red", "circle"], "redcircle",
     "targets: word 'redcircle' is not in the response; the response writes 'red circle' (give it as written: "
     "where the words break must be the response's) (words: a red circle)"),
    (["un", "café", "crème"], "cafecreme",
     "targets: word 'cafecreme' is not in the response; the response writes 'café crème' (give it as written: "
     "accents and where the words break must be the response's) (words: un café crème)"),
    (["the", "Ångström", "unit"], "angstrom",
     "targets: word 'angstrom' is not in the response; the response writes 'Ångström' (give it as written: accents "
     "must be the response's) (words: the Ångström unit)"),
    # nothing close: the line as before (a vowel sign of Devanagari is no accent: "कताब" is another word)
    (["किताब"], "कताब", "targets: word 'कताब' is not in the response (words: किताब)"),
    (["a", "red", "circle"], "circles", "targets: word 'circles' is not in the response (words: a red circle)"),
    (["a", "red", "circle"], "zebra", "targets: word 'zebra' is not in the response (words: a red circle)"),
])
def test_a_near_miss_is_refused_naming_what_the_response_writes(words, target, message):
    assert refusal(words, target) == message


@pytest.mark.parametrize("words, target, found", [
    # what matched before still matches, and only that
    (["a", "red", "circle."], "red circle .", ["red circle."]),
    (["a", "red", "circle", "."], "red circle.", ["red circle"]),
    (["un", "Café", "noir"], "CAFÉ", ["Café"]),
])
def test_what_matched_still_matches(words, target, found):
    assert [it.text for it in select_items([Item(w, k, [k]) for k, w in enumerate(words)], [target])] == found


def test_an_explained_items_near_miss():
    assert closest_item(["un", "café noir"], "cafe noir") == "café noir"
    assert closest_item(["un", "café noir"], "cafe") == ""  # part of an item: no item is it


def test_near_misses_through_the_explainer():
    # "un café - noir" of a byte-level tokenizer: "é" is the two byte pieces "Ã©"
    explain = byte_level_llada_v(["un", "\u0120caf\u00c3\u00a9", "\u0120-", "\u0120noir"])
    assert explain("all").tokens == ["un", "café", "-", "noir"]
    with pytest.raises(InputError, match="^" + re.escape(
            "targets: phrase 'cafe noir' is not in the response; the response writes 'café - noir' (give it as "
            "written: accents and the punctuation or symbols standing alone between the words must be the "
            "response's) (words: un café - noir)") + "$"):
        explain(["cafe noir"])
    e = explain(["café - noir"])
    assert e.tokens == ["café - noir"]
    with pytest.raises(InputError, match="^" + re.escape(
            "word 'cafe' is not among the explained tokens; the response writes 'café' (give it as written: "
            "accents must be the response's) ['un', 'café', '-', 'noir']") + "$"):
        explain("all").index("cafe")


def test_a_long_near_miss_is_quoted_by_its_ends():
    """The run a near miss names holds every symbol standing alone between the target's words: "red", 2,000
    spaced "." and "circle" (a degenerate response) were quoted whole, a line of 4,300 characters where the
    response's own words are listed up to 40. Now its first and last 20 words, and how many were left out."""
    words = ["a", "red"] + ["."] * 2000 + ["circle"]
    run = "red " + ". " * 19 + "... " + ". " * 19 + "circle"  # 2,002 words: 20 + 20 quoted
    assert refusal(words, "red circle") == (
        f"targets: phrase 'red circle' is not in the response; the response writes '{run}' (2002 words, the middle "
        "1962 left out here; give it as written: the punctuation or symbols standing alone between the words must be "
        "the response's) (words: a red" + " ." * 38 + " ... and 1963 more)")
    # a run of 40 words is quoted whole
    words = ["a", "red"] + ["."] * 38 + ["circle"]
    assert refusal(words, "red circle") == (
        "targets: phrase 'red circle' is not in the response; the response writes 'red" + " ." * 38 + " circle' (give "
        "it as written: the punctuation or symbols standing alone between the words must be the response's) (words: "
        "a red" + " ." * 38 + " ... and 1 more)")
