"""The prompt ids of LaViDa and LLaDA-V, joined around ``<image>`` as the releases' own
``tokenizer_image_token`` joins them (both repositories' ``llava/mm_utils.py``): each chunk through
the tokenizer with its special tokens, and, when the first chunk opens with BOS, the first token of
the chunk after the image dropped. Running the LLaDA-V release showed the difference: its chat
template writes ``<|startoftext|>`` as text and its tokenizer adds no BOS, so the release cuts the
first real token after ``<image>``; dcam kept it, and the model read one token more than it was
trained and run on. With a tokenizer that adds BOS to every call, the release keeps two BOS at the
start and drops the second chunk's; dcam tokenized without special tokens and had one.

The expected ids are written out by hand from the words' ids of the stand-in tokenizer."""
import pytest

from dcam.probe import auto_adapter
from dcam.testing.llava_dmllm import tiny_llada_v
from dcam.testing.vocab import WORDS, word_tokenizer

BOS = 126080  # LLaDA's <|startoftext|>
SPECIALS = {"<|startoftext|>": BOS, "<|endoftext|>": 126081, "<|eot_id|>": 126348, "<|mdm_mask|>": 126336}
WORD = {w: i + 1 for i, w in enumerate(dict.fromkeys(WORDS))}  # word_tokenizer's ids: 1..n in order
IMG = -200


def _adapter(adds_bos: bool):
    model, proc = tiny_llada_v(seed=0, layers=1)
    tok = word_tokenizer(SPECIALS, named={"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                          "mask_token": "<|mdm_mask|>"})
    if adds_bos:  # a post-processor that opens every call with BOS, as a LLaMA-style tokenizer does
        from tokenizers import processors

        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", BOS)])
    proc.tokenizer = tok
    return auto_adapter(model, proc)


def _words(text):
    return [WORD[w] for w in text.split()]


@pytest.mark.parametrize("adds_bos, expected", [
    # the template's BOS opens the first chunk, the tokenizer adds none: "describe" after <image> is cut
    (False, [BOS] + _words("what do you see") + [IMG] + _words("the image .")),
    # the tokenizer opens each chunk with BOS: two at the start, the second chunk's BOS cut
    (True, [BOS, BOS] + _words("what do you see") + [IMG] + _words("describe the image .")),
])
def test_a_prompt_that_opens_with_bos_is_joined_as_the_release_joins_it(adds_bos, expected):
    a = _adapter(adds_bos)
    assert a.prompt_ids("<|startoftext|> what do you see <image>\ndescribe the image .") == expected


def test_a_prompt_without_bos_keeps_every_token():
    a = _adapter(False)
    assert a.prompt_ids("what do you see <image> describe the image .") == \
        _words("what do you see") + [IMG] + _words("describe the image .")
