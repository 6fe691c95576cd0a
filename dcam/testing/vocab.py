"""Word-level tokenizers for the stand-in models: ordinary words get small ids,
special tokens keep the ids of the published tokenizers (LLaDA's mask 126336,
Dream's 151666, ...), so the adapters meet the real ids offline."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

#: Words every stand-in knows: the prompt, the bundled shapes vocabulary and
#: the COCO-style categories of the test fixtures.
WORDS = ("describe the image . a an and of with in on is are there red green blue yellow circle square triangle "
         "star cross ring dog cat person car bus chair table cup bird on left right top bottom picture photo "
         "small big large two three one this what do you see").split()


def word_tokenizer(specials: Dict[str, int], words: Sequence[str] = WORDS, unk: str = "<unk>",
                   named: Optional[Dict[str, str]] = None, extra_special: Optional[Dict[str, str]] = None,
                   decoder=None):
    """A ``PreTrainedTokenizerFast`` over whitespace-separated ``words`` (ids
    1..n, ``unk`` = 0) plus ``specials`` at their given ids. ``named``: the
    tokenizer roles (``eos_token``, ``pad_token``, ...) by special token;
    ``extra_special``: named extra special tokens (``image_token``, ...);
    ``decoder``: a ``tokenizers`` decoder (default: words joined by spaces), so
    that ``words`` can be another tokenizer's pieces ("Ġcaf", "Ã©", "<0x0A>")
    decoded as that tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {unk: 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    top = max(vocab.values())
    for tok, i in specials.items():
        if i <= top and vocab.get(tok) != i:
            raise ValueError(f"special token {tok!r} id {i} collides with the word ids (1..{top})")
        vocab[tok] = int(i)
    model = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.decoder = decoder if decoder is not None else decoders.WordPiece(prefix="##")  # words, single spaces
    kw = dict(named or {})
    extra = dict(extra_special or {})
    roles = set(kw.values()) | set(extra.values())
    others = [t for t in specials if t not in roles]
    tok = PreTrainedTokenizerFast(tokenizer_object=model, unk_token=unk, additional_special_tokens=others,
                                  extra_special_tokens=extra or None, **kw)
    # transformers 5 keeps additional_special_tokens as names only: marked special here, at their ids, as
    # the published tokenizers mark <|eot_id|>, <image> and the like
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(t, special=True) for t in others], special_tokens=True)
    return tok


__all__ = ["word_tokenizer", "WORDS"]
