"""Word-level tokenizer and the (image, prompt) -> model-inputs processor.

Sequence layout (one row)::

    [BOS] prompt words  <image> x (h*w)  response slots x response_length
    |----- prefix -----|--- image span ---|------------ response ------------|

Response slots are ``[MASK]`` for generation (``processor(image)``) or given
ids (``processor.build(image, prompt, response_ids)``). A reference response is
the caption words followed by ``[EOS]`` up to ``response_length`` (LLaDA-style
fixed-length responses; everything after the caption is ``[EOS]``).
"""
from __future__ import annotations

import json
import os
import unicodedata
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..errors import InputError
from ..words import strip_punctuation
from .data import COLOURS, FILLER_WORDS, MAX_CAPTION_WORDS, SHAPES

PAD, BOS, EOS, MASK, IMAGE, UNK = "[PAD]", "[BOS]", "[EOS]", "[MASK]", "<image>", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, MASK, IMAGE, UNK)
PROMPT_WORDS = ("describe", "the", "image", "what", "is", "in", "this", "name", "objects", "shapes")
DEFAULT_PROMPT = "describe the image"
PROCESSOR_CONFIG = "processor_config.json"


def normalise_words(text: str, vocab) -> tuple:
    """``(words, unknown)``: the whitespace words of ``text`` as the tokenizer
    knows them. A word not in ``vocab`` is tried lower-cased and without the
    punctuation at its ends, in any script, as :func:`dcam.words.split_words`
    (the evaluation's caption words) strips it (``"A"`` -> ``"a"``,
    ``"square."`` -> ``"square"``, ``"(and)"``, ``"“and”"`` -> ``"and"``); a word
    of sentence punctuation only (``"—"``, ``"…"``, ``","``, a spaced ``"-"``) is
    dropped (:func:`sentence_punctuation`), as it is at a word's ends; what is still
    unknown, a symbol alone or at a word's ends (``"&"``, ``"&blue"``, ``"+"``,
    ``"€"``, an emoji) too, is listed in
    ``unknown`` (as the user typed it, each once)."""
    words, unknown = [], []
    for raw in text.split():
        # (only ASCII ".,;:!?" at the end was stripped: a caption's "—" or "(and)" was refused as
        # out of the vocabulary, its words in it; the evaluation's loaders had read them as words)
        bare = strip_punctuation(raw)
        # (every mark without a letter or digit was dropped: "a red circle & a blue square" was
        # explained as "a red circle a blue square", the "&" the user wrote silently gone)
        ends = raw.replace(bare, "", 1) if bare else raw
        bare_ones = (bare, bare.lower()) if not ends or sentence_punctuation(ends) else ()
        for cand in (raw, raw.lower()) + bare_ones:
            if cand in vocab:
                words.append(cand)
                break
        else:
            if bare == "" and bare_ones:
                continue
            if raw not in unknown:
                unknown.append(raw)
    return words, unknown


#: punctuation that reads as a word or a sign, not as a pause: "&" is "and", "%" "percent",
#: "#" "number", "@" "at", "*" and "/" and "\\" stand for operators or alternatives
_WORDLIKE_PUNCTUATION = frozenset("&%#@*/\\§¶†‡‰‱※⁂")


def sentence_punctuation(word: str) -> bool:
    """Whether ``word`` (a word of no letter or digit) is sentence punctuation, which the bundled
    model never writes and the evaluation's caption words leave out: every character a
    Unicode punctuation mark (dashes, brackets, quotes, ``.,;:!?…``, their full-width forms),
    none of those that read as a word (``"&"``, ``"%"``, ``"#"``, ``"@"``, ``"*"``, ``"/"``).
    A symbol (``"+"``, ``"="``, ``"€"``, an emoji: Unicode's S categories) is not."""
    text = unicodedata.normalize("NFKC", word)
    return bool(text) and all(unicodedata.category(ch).startswith("P") and ch not in _WORDLIKE_PUNCTUATION
                              for ch in text)


def build_vocab() -> Dict[str, int]:
    """Special tokens first (pad 0, bos 1, eos 2, mask 3, image 4, unk 5), then words."""
    words = list(SPECIAL_TOKENS) + list(FILLER_WORDS) + list(COLOURS) + list(SHAPES)
    words += [w for w in PROMPT_WORDS if w not in words]
    return {w: i for i, w in enumerate(words)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over the grounded-shapes vocabulary."""
    tok = Tokenizer(models.WordLevel(build_vocab(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   mask_token=MASK, unk_token=UNK, extra_special_tokens={"image_token": IMAGE})


ImageLike = Union[Image.Image, np.ndarray]


class ShapesProcessor:
    """Turns ``(image, prompt)`` into model inputs, and ids back into text.

    ``processor(image, prompt=None)`` returns a dict with ``input_ids`` [B, L]
    (response slots filled with ``[MASK]``), ``pixel_values`` [B, 3, H, W],
    ``response_start`` (int), ``response_length`` (int) and ``image_span``
    ``(start, end)`` (end exclusive). ``image`` may be one image or a list of
    images (then B = len(list)); PIL images of any mode/size and uint8 arrays
    (H x W or H x W x 3/4) are converted to RGB and resized to ``image_size``.
    """

    def __init__(self, tokenizer: Optional[PreTrainedTokenizerFast] = None, image_size: int = 64,
                 patch_size: int = 4, response_length: int = 12, default_prompt: str = DEFAULT_PROMPT,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5)):
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        if response_length < MAX_CAPTION_WORDS + 1:
            raise ValueError(f"response_length must be >= {MAX_CAPTION_WORDS + 1}, got {response_length}")
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.response_length = int(response_length)
        self.default_prompt = default_prompt
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        t = self.tokenizer
        self.pad_token_id = t.pad_token_id
        self.bos_token_id = t.bos_token_id
        self.eos_token_id = t.eos_token_id
        self.mask_token_id = t.mask_token_id
        self.unk_token_id = t.unk_token_id
        self.image_token_id = t.convert_tokens_to_ids(IMAGE)

    # ------------------------------------------------------------------ basics
    @property
    def grid(self):
        n = self.image_size // self.patch_size
        return (n, n)

    @property
    def num_image_tokens(self) -> int:
        h, w = self.grid
        return h * w

    def preprocess_image(self, image: ImageLike) -> torch.Tensor:
        """One image -> float tensor [3, image_size, image_size], normalised."""
        if isinstance(image, np.ndarray):
            arr = image
            if arr.dtype != np.uint8:
                raise ValueError(f"image: numpy arrays must be uint8, got dtype {arr.dtype}")
            if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
                image = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
            else:
                raise ValueError(f"image: expected an H x W or H x W x 3/4 array, got shape {arr.shape}")
        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL.Image or a uint8 numpy array, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (x - mean) / std

    def _known_words(self) -> str:
        """The vocabulary's plain words (no specials), for error messages."""
        words = [w for w in self.tokenizer.get_vocab() if w not in SPECIAL_TOKENS]
        return " ".join(sorted(words)) if len(words) <= 80 else f"{len(words)} words"

    def _encode_words(self, text: str, what: str) -> List[int]:
        """Ids of the words of ``text`` (:func:`normalise_words`); unknown words
        are an InputError naming them."""
        words, unknown = normalise_words(text, self.tokenizer.get_vocab())
        if unknown:
            raise InputError(f"{what}: {len(unknown)} word{'s' if len(unknown) > 1 else ''} not in the model's "
                             f"vocabulary: {', '.join(repr(w) for w in unknown)} (known words: "
                             f"{self._known_words()})")
        if not words:
            raise InputError(f"{what}: {text!r} holds no word")
        ids = self.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        if self.unk_token_id in ids:  # a tokenizer that splits words further: name the whole text
            raise InputError(f"{what}: {text!r} holds text outside the model's vocabulary")
        specials = set(self.tokenizer.all_special_ids)
        special = [i for i in ids if i in specials]
        if special:  # "<image>" made the image span 257 long; "[EOS]" cut the words after it
            tok = self.tokenizer.convert_ids_to_tokens(special[0])
            raise InputError(f"{what}: holds {tok!r}, a special token (the image, ends, padding and masks are "
                             "placed by the processor); give the text without it")
        return list(ids)

    def prompt_ids(self, prompt: Optional[str]) -> List[int]:
        """Token ids of the prompt words (no specials); case and the punctuation
        at the words' ends normalised, unknown words an InputError naming them."""
        if prompt is None:
            prompt = self.default_prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompt: must be a non-empty string or None, got {prompt!r}")
        return self._encode_words(prompt, "prompt")

    def encode_response(self, response: Union[str, Sequence[int], torch.Tensor]) -> List[int]:
        """A response (text or ids) as exactly ``response_length`` ids (eos-filled).

        Text: case and the punctuation at the words' ends are normalised where
        the tokenizer cannot see them (``"A red square."`` -> ``a red square``);
        words outside the vocabulary, and a response longer than the model's
        ``response_length`` slots, are an InputError in the caller's terms."""
        if isinstance(response, str):
            ids = self._encode_words(response, "response")
            unit = "words"
        elif isinstance(response, torch.Tensor):
            if response.dim() != 1:
                raise InputError(f"response: token ids must be 1-D, got shape {tuple(response.shape)}")
            ids, unit = [int(v) for v in response.tolist()], "tokens"
        else:
            ids, unit = [int(v) for v in response], "tokens"
        if len(ids) > self.response_length:
            raise InputError(f"response: {len(ids)} {unit}, more than the {self.response_length} this model "
                             "writes (its response length)")
        return ids + [self.eos_token_id] * (self.response_length - len(ids))

    # ------------------------------------------------------------------ encode
    def _layout(self, prompt: Optional[str]):
        prefix = [self.bos_token_id] + self.prompt_ids(prompt)
        s0 = len(prefix)
        s1 = s0 + self.num_image_tokens
        return prefix, (s0, s1)

    def build(self, image: Union[ImageLike, Sequence[ImageLike]], prompt: Optional[str] = None,
              response_ids=None) -> dict:
        """Like ``__call__`` but with the response slots filled with ``response_ids``.

        response_ids: caption text, a list/1-D tensor of ids (eos-filled to
        ``response_length``), a 2-D tensor/list of lists (one row per image),
        or None (all ``[MASK]``).
        """
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("image: got an empty list")
        B = len(images)
        pix = torch.stack([self.preprocess_image(im) for im in images])
        prefix, (s0, s1) = self._layout(prompt)
        if response_ids is None:
            rows = [[self.mask_token_id] * self.response_length] * B
        elif isinstance(response_ids, torch.Tensor) and response_ids.dim() == 2 or (
                isinstance(response_ids, (list, tuple)) and response_ids and isinstance(response_ids[0], (list, tuple))):
            rows = [self.encode_response(r) for r in response_ids]
            if len(rows) != B:
                raise InputError(f"response: {len(rows)} responses for {B} images")
        else:
            rows = [self.encode_response(response_ids)] * B
        ids = torch.tensor([prefix + [self.image_token_id] * self.num_image_tokens + r for r in rows],
                           dtype=torch.long)
        return dict(input_ids=ids, pixel_values=pix, response_start=s1,
                    response_length=self.response_length, image_span=(s0, s1))

    def __call__(self, image: Union[ImageLike, Sequence[ImageLike]], prompt: Optional[str] = None) -> dict:
        return self.build(image, prompt, None)

    # ------------------------------------------------------------------ decode
    def decode(self, ids) -> str:
        """Text of response ids: stops at the first [EOS], drops pad/bos."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                if ids.shape[0] != 1:
                    raise ValueError("decode takes one sequence; use batch_decode for a batch")
                ids = ids[0]
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id:
                break
            if i in (self.pad_token_id, self.bos_token_id):
                continue
            out.append(self.tokenizer.convert_ids_to_tokens(i))
        return " ".join(out)

    def batch_decode(self, ids) -> List[str]:
        return [self.decode(row) for row in ids]

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return dict(processor_class=type(self).__name__, image_size=self.image_size, patch_size=self.patch_size,
                    response_length=self.response_length, default_prompt=self.default_prompt,
                    image_mean=list(self.image_mean), image_std=list(self.image_std))

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        with open(os.path.join(directory, PROCESSOR_CONFIG), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str) -> "ShapesProcessor":
        path = os.path.join(directory, PROCESSOR_CONFIG)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {PROCESSOR_CONFIG} in {directory}")
        with open(path) as f:
            cfg = json.load(f)
        cfg.pop("processor_class", None)
        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        return cls(tokenizer=tok, **cfg)
