"""A model writes any text, markup included: an explanation's page (index.html, and the Jupyter fragment of
``_repr_html_`` in a page of its own) shows every word as the text it is, in real headless Chromium, and
runs none of it. Each payload would set ``window.pwned`` (a ``</script>`` that ends the page's own script
block, an ``<img onerror>``, an attribute break-out). Checked, not fixed: no page of dcam ran one (the page
data is JSON with ``<`` escaped, the viewer sets text with ``textContent``); tests/runs/test_view.py checks a
run's page alike."""
import numpy as np
import pytest

from dcam.explain import Explainer
from dcam.render.html import explanation_html
from dcam.testing.llada import LLADA_EOS_ID, LLADA_MASK_ID
from dcam.testing.llava_dmllm import tiny_llada_v
from dcam.testing.vocab import word_tokenizer

#: The response's words (the word tokenizer lower-cases them: the payloads use no capitals).
HOSTILE = ["</script><script>window.pwned=1</script>", "<img/src=x/onerror=window.pwned=2>",
           "\"'><svg/onload=window.pwned=3>", "red", "circle"]


@pytest.fixture(scope="module")
def hostile():
    """An explanation of a tiny LLaDA-V whose response is the words of HOSTILE."""
    model, proc = tiny_llada_v(0, layers=2)
    proc.tokenizer = word_tokenizer({"<|endoftext|>": LLADA_EOS_ID, "<|mdm_mask|>": LLADA_MASK_ID},
                                    words=HOSTILE + ["describe", "the", "image"],
                                    named={"eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"})
    ids = proc.tokenizer.convert_tokens_to_ids(HOSTILE)
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    e = Explainer(model, proc).explain(image, prompt="describe the image", response=ids, targets="tokens")
    assert e.tokens == HOSTILE
    return e


@pytest.mark.parametrize("page", ["index.html", "fragment"])
def test_the_words_are_shown_as_text_and_none_runs(browser, hostile, tmp_path, page):
    if page == "index.html":
        hostile.save(tmp_path / "e")
        path = tmp_path / "e" / "index.html"
    else:  # Jupyter puts the fragment into its page as it is
        path = tmp_path / "fragment.html"
        path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                        + explanation_html(hostile) + "</body></html>", encoding="utf-8")
    browser.open(path.as_uri())
    assert browser.js("window.pwned === undefined") is True
    assert browser.problems() == []
    assert browser.js("Array.from(document.querySelectorAll('.words button')).map(function(b){"
                      "return b.textContent;})") == HOSTILE
    assert browser.js("document.querySelector('.resp').textContent") == " ".join(HOSTILE)
    # the page's elements are its own: one image (the explained one), no svg, one script block
    assert browser.js("[document.querySelectorAll('img').length, document.querySelectorAll('svg').length, "
                      "document.querySelectorAll('script').length]") == [1, 0, 1]
    if page == "index.html":
        assert browser.js("document.title") == " ".join(HOSTILE)
