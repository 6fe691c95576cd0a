"""One example made ready for a probe: image read, response generated or
encoded, inputs built, items selected, views resolved (used by
:class:`dcam.explain.Explainer`)."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import InputError
from .images import load_image_with_notes
from .probe.adapters.base import ImageView, Prepared
from .probe.adapters.checks import check_head_rows, check_mask_id
from .probe.hooks import generating, generation_watch
from .profiling import stage
from .targets import Item, explainable_slots, items_asked, response_items, select_items, targets_asked
from .words import CLOSING_TOKEN, GIVE_IDS, IMAGE_MARK, PLACEHOLDER, SPECIAL_TOKEN, refuse_ids, token_spans


@dataclass
class Example:
    prep: Prepared  # image_positions: the probed span (every view's tokens, views concatenated)
    prompt: Optional[str]
    items: List[Item]
    steps: int
    steps_source: str
    granularity: str
    views: List[ImageView]
    view_slices: Dict[str, slice]
    view_name: Optional[str]
    notes: List[str] = field(default_factory=list)
    #: the text of the explained tokens (up to the first eos; special tokens and ids past the
    #: tokenizer shown, as each has a map): ``Explanation.response``
    response_text: str = ""
    #: how many words (items at this granularity) the whole response has, explained or not: a
    #: negative word number counts from its end
    word_count: int = 0

    @property
    def response_ids(self) -> List[int]:
        return self.prep.response_ids

    @property
    def explainable_ids(self) -> List[int]:
        return [self.response_ids[i] for i in self._explainable]

    @property
    def positions(self) -> List[int]:
        """Absolute positions of every explained token, item after item."""
        return [self.prep.response_start + s for it in self.items for s in it.slots]

    @property
    def token_ids(self) -> List[int]:
        return [self.response_ids[s] for it in self.items for s in it.slots]

    @property
    def groups(self) -> List[List[int]]:
        out, k = [], 0
        for it in self.items:
            out.append(list(range(k, k + len(it.slots))))
            k += len(it.slots)
        return out

    @property
    def item_ids(self) -> List[int]:
        """The first token id of each item (TAM's class rows, context weights)."""
        return [self.response_ids[it.slots[0]] for it in self.items]

    def word_fields(self) -> Dict[str, list]:
        """The explained items as the result objects hold them (Explanation, Trajectory): their
        texts, first token ids, word numbers, first response slots and all their slots."""
        return dict(tokens=[it.text for it in self.items], token_ids=self.item_ids,
                    word_numbers=[it.number for it in self.items],
                    response_indices=[it.slots[0] for it in self.items],
                    pieces=[list(it.slots) for it in self.items])

    @property
    def n_tokens(self) -> int:
        return sum(len(it.slots) for it in self.items)

    _explainable: List[int] = field(default_factory=list)


def _token_ids(response) -> List[int]:
    """A response given as token ids: whole numbers only. ``int()`` read 5.9 as id 5, True as
    id 1 and the bytes b"abc" as ids 97, 98, 99."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        raise InputError(f"response must be text or a list of token ids, got {type(response).__name__} "
                         "(decode it to text first)")
    if isinstance(response, torch.Tensor) and response.dim() != 1:
        raise InputError(f"response: token ids must be one row, got a tensor of shape {tuple(response.shape)}")
    try:
        items = list(response)
    except TypeError:
        raise InputError(f"response must be text or a list of token ids, got {type(response).__name__}") from None
    ids = []
    for k, v in enumerate(items):
        try:
            # (numpy's bool refuses operator.index itself)
            if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
                raise TypeError
            ids.append(operator.index(v))
        except TypeError:
            raise InputError(f"response: token ids must be whole numbers, got {v!r} at position {k}") from None
    return ids


class ExampleBuilder:
    """Builds :class:`Example` s with one explainer's adapter and the call's options."""

    def __init__(self, explainer, steps: Optional[int], response_length: Optional[int], background,
                 granularity: str, view: Optional[str], generated: bool = False):
        self.x, self.steps, self.response_length = explainer, steps, response_length
        self.background, self.granularity, self.view = background, granularity, view
        # the responses are ids the model generated before (a trajectory's, handed back by dcam itself, never
        # by the public API: a caller's list is a given response, whatever its class): checked as a generation
        self.generated = generated

    def _response(self, img, prompt, prep0: Optional[Prepared], response):
        """(response ids, steps for AKD, where the steps came from, notes)."""
        a, steps = self.x.adapter, self.steps
        if response is None:
            check_mask_id(a)  # (the sampler writes it: a bad one failed first inside the adapter's generate())
            with generating(a.model, watch=generation_watch(a)), stage("dcam.generate"):
                gen = a.generate(prep0, steps, self.response_length)
            ids = check_generated(a, gen.response_ids, self.response_length, prep0)
            notes = a.generation_notes(steps, len(ids), int(gen.steps))  # other steps or blocks than asked, and why
            return ids, int(gen.steps), "given" if gen.steps_given else "generation", notes
        if self.generated:  # generated before (a trajectory's): the adapter's mistake, not the user's
            ids = check_generated(a, response, self.response_length)
            return ids, (steps if steps is not None else int(a.default_steps)), \
                ("given" if steps is not None else "default"), []
        placeholder = {int(a.image_token_id)} if getattr(a, "image_token_id", None) is not None else set()
        if isinstance(response, str):
            ids = [int(i) for i in a.encode_response(response)]
        else:
            ids = _token_ids(response)
        # (text an adapter encodes to ids past its vocabulary too); an example of end tokens for a
        # forward that finds the logits' width, should an id lie past lm_head_weight()'s rows
        _check_ids_in_vocabulary(a, ids, prep_of=lambda: a.prepare(img, prompt, _ends(a, len(ids)),
                                                                   self.response_length))
        refuse_ids(a.token_strings, placeholder, PLACEHOLDER, response=ids)
        if isinstance(response, str):
            # the tokens an adapter writes itself and refuses in any response (DiffusionGemma's <boi>, which its
            # sampler never writes): its prepare() says so, without offering ids it refuses too
            placed = set(a.placed_ids()) if hasattr(a, "placed_ids") else set()
            # given ids are exact (typically the model's own, an explanation's response_ids given back): its
            # special tokens and image marks are what it wrote, left out of the words with a note as a
            # generation's are. Text is not: "<video>" written in it silently became a modality token
            marks = image_marks(a) - placeholder - placed
            refuse_ids(a.token_strings, marks, IMAGE_MARK + GIVE_IDS, response=ids)
            refuse_special_tokens(a, ids, placeholder | marks | placed)
            # an end, padding or mask token written in the text: the words after an end were dropped and the
            # others left out, without a word (as ids, masked and padded slots are a response's gaps, on purpose;
            # the ends an adapter's encoding appends are fine)
            skip = a.skip_ids() - placed
            last = max((k for k, i in enumerate(ids) if i not in skip), default=-1)
            refuse_ids(a.token_strings, skip, "ends a response or marks an empty slot; give the text without it "
                       "(or token ids)", response=ids[:last])
        return ids, (steps if steps is not None else int(a.default_steps)), \
            ("given" if steps is not None else "default"), _unknown_note(a, ids) if isinstance(response, str) else []

    def _views(self, prep: Prepared):
        """(the prepared example over the explained views' tokens, the views, their
        slices of the probed span, the view name the explanation reports, notes)."""
        if self.view == "all":
            views = list(prep.views.values()) or [prep.view(None)]
        else:
            views = [prep.view(self.view)]
        view_name, notes = self.view, []
        empty = [v for v in views if v.positions.numel() == 0]
        if empty:
            # an image so elongated that cropping the padding off the high-resolution grid leaves
            # no row (or column): the model sees its base view alone (transformers counts no tile token)
            v = empty[0]
            w, h = prep.image.size
            why = f"the {v.name} view of this {w}x{h} image has no tokens (its grid is {v.grid[0]}x{v.grid[1]})"
            rest = [u for u in (prep.views.values() if self.view in (None, "all") else ()) if u.positions.numel()]
            if not rest:
                named = sorted(n for n, u in prep.views.items() if u.positions.numel())
                raise InputError(f"view: {why}" + (f"; views with tokens: {', '.join(named)}" if named else ""))
            if self.view is None:
                views, view_name = rest[:1], rest[0].name
                notes.append(f"{why}: the maps are the {view_name} view's")
            else:
                views = [u for u in views if u.positions.numel()]
                notes.append(f"{why}: view='all' gives the others")
        offsets, k = {}, 0
        for v in views:
            offsets[v.name] = slice(k, k + int(v.positions.numel()))
            k += int(v.positions.numel())
        span = torch.cat([v.positions for v in views])
        probed = prep if len(views) == 1 and torch.equal(span, prep.image_positions) else \
            replace(prep, image_positions=span, grid=tuple(views[0].grid) if len(views) == 1 else (1, k))
        return probed, views, offsets, view_name, notes

    def load(self, image, prompt) -> Tuple[Any, List[str]]:
        """(RGB image, notes on its conversion), with ``prompt``'s type checked: what a batch
        checks of every example before the first one's response is generated."""
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt: must be a string or None, got {type(prompt).__name__}")
        with stage("dcam.prepare"):
            return load_image_with_notes(image, self.background)

    def __call__(self, image, prompt: Optional[str], response, targets, loaded=None) -> Example:
        """The example of ``image`` (``loaded``: its :meth:`load` already made)."""
        if targets is None:
            raise InputError("targets must be 'all', word numbers or words, got None")
        a = self.x.adapter
        img, notes = loaded if loaded is not None else self.load(image, prompt)
        with stage("dcam.prepare"):
            prep0 = a.prepare(img, prompt, None, self.response_length) if response is None else None
        resp_ids, S, source, more = self._response(img, prompt, prep0, response)
        with stage("dcam.prepare"):
            prep = check_prepared(a, a.prepare(img, prompt, resp_ids, self.response_length))
        ids = prep.response_ids
        slots = explainable_slots(ids, a.skip_ids(), a.eos_token_ids)
        given = response is not None and not self.generated
        where = f"response: {response!r}" if given else "the response"
        if not slots:  # (the user's response named as such: a generated one is the model's doing)
            raise InputError(f"{where} has no word to explain ({_why_no_word(ids, a.skip_ids(), a.eos_token_ids)})")
        granularity, targets = items_asked(targets, self.granularity)
        # special tokens are no words: targets="words" leaves them out, as eos and pad slots (a note counts
        # them); targets="tokens" explains every token
        special, not_text = a.special_token_ids(), special_ids(a)
        # an image mark given as an id (refused in text above) is the model's own too, and no word, whether or
        # not its tokenizer calls it special (Lumina-DiMOO's <boi> became a word with a map of its own)
        not_text = not_text | image_marks(a)
        left_out = [i for i in slots if ids[i] in not_text] if granularity == "words" else []
        explained = [i for i in slots if ids[i] not in not_text] if left_out else slots
        if not explained:
            raise InputError(f"{where} has no word to explain (its tokens are special tokens only; "
                             "targets='tokens' explains them)")
        kept = [ids[i] for i in explained]
        # a special token stands alone; after a slot that is not explained (masked, padded) text resumes
        strings = a.token_strings(kept)
        # an id the tokenizer does not know (named "<id N>") has no text either: a word of its own
        breaks = [True if ids[i] in special or strings[k] == f"<id {ids[i]}>" else
                  ("gap" if k and i != explained[k - 1] + 1 else False) for k, i in enumerate(explained)]
        spans = token_spans(a.decode_tokens, kept, breaks)
        every = response_items(explained, strings, granularity, *spans)
        if not every:  # tokens of whitespace only ("  ", "\n\n"): the error named eos/pad tokens
            raise InputError(f"{where} has no word to explain (its tokens are whitespace only)")
        try:
            items = select_items(every, targets, text_of=_text_of(explained, *spans[:2]))
        except InputError:  # "'<row_2_col_4>' is not in the response": it is, as a token that is no word
            _refuse_special_target(a, targets, ids, slots, left_out)
            raise
        # a closing token is the response's end, unsaid as an eos is, only where nothing but closing tokens
        # follows it among the explained slots (Idefics3's sampler may write <end_of_utterance> mid-response)
        closing, end = closing_ids(a, not_text), len(slots)
        while end and ids[slots[end - 1]] in closing:
            end -= 1
        trailing = set(slots[end:])
        more = more + _left_out_note(a, [ids[i] for i in left_out if i not in trailing])
        probed, views, offsets, view_name, view_notes = self._views(prep)
        return Example(prep=probed, prompt=prompt, items=items, steps=S, steps_source=source,
                       granularity=granularity, views=views, view_slices=offsets, view_name=view_name,
                       notes=notes + more + view_notes, response_text=a.decode_tokens([ids[i] for i in slots]),
                       word_count=len(every),
                       _explainable=slots)


def image_marks(adapter) -> set:
    """The ids of the tokens the adapter writes around an image's features (its ``image_mark_ids``; dcam's
    adapters say which, one of the user's need not: none)."""
    marks = getattr(adapter, "image_mark_ids", None)
    return set(marks()) if marks is not None else set()


def _unknown_id(adapter) -> Optional[int]:
    """The tokenizer's unknown token id, its spelling of text it has no token for (None: it has none)."""
    try:
        return getattr(adapter.tokenizer, "unk_token_id", None)
    except (AttributeError, InputError):  # no Hugging Face tokenizer: no special token either
        return None


def special_ids(adapter) -> set:
    """The adapter's special token ids (:meth:`~dcam.probe.adapters.base.ModelAdapter.special_token_ids`) that
    stand for no text: all but the unknown token (:func:`_unknown_id`)."""
    return set(adapter.special_token_ids()) - {_unknown_id(adapter)}


def _unknown_note(adapter, ids: Sequence[int]) -> List[str]:
    """A note when a given text holds what the tokenizer has no token for (Chinese given to a
    tokenizer of English words): explained as the unknown token, which was said nowhere."""
    unknown = _unknown_id(adapter)
    if unknown is None:
        return []
    count = sum(1 for i in ids if int(i) == int(unknown))
    if not count:
        return []
    name = adapter.token_strings([int(unknown)])[0]
    return [f"response: the tokenizer has no token for {count} piece(s) of the given text, each explained as the "
            f"unknown token {name!r}"]


def closing_ids(adapter, special: set) -> set:
    """The ids among ``special`` of the tokens the adapter's ``closing_tokens`` name (Dream-VL's <|im_end|>)."""
    names = set(getattr(adapter, "closing_tokens", ()))  # (an adapter of the user's need not subclass ModelAdapter)
    ordered = sorted(special) if names else []
    return {i for i, name in zip(ordered, adapter.token_strings(ordered)) if name in names}


def refuse_special_tokens(adapter, ids: List[int], refused: set) -> None:
    """One rule for every family: a response given as TEXT is text the user says the model wrote, and a chat,
    role or modality token in it (LLaVA's <video>, Dream-VL's <|im_end|>, Lumina-DiMOO's <user>) would change
    what the model sees without a word, so a special token is refused (an InputError naming ``response``, that
    says how to give the model's own response back: as token ids) but for the pad, eos and mask slots the
    response format uses (:meth:`skip_ids`, checked apart), the unknown token (:func:`special_ids`), ``refused``
    (the image's, refused with their own reason) and, at the response's end only (followed by ends or pads
    alone), the adapter's ``closing_tokens``. ``ids``: the text's encoding; given ids are not refused them."""
    skip = adapter.skip_ids()
    special = special_ids(adapter) - skip - set(refused)
    closing = closing_ids(adapter, special)
    refuse_ids(adapter.token_strings, special - closing, SPECIAL_TOKEN + GIVE_IDS, response=ids)
    end = len(ids)
    while end and (ids[end - 1] in closing or ids[end - 1] in skip):
        end -= 1
    refuse_ids(adapter.token_strings, closing, CLOSING_TOKEN + GIVE_IDS, response=ids[:end])


def _refuse_special_target(adapter, targets, ids: List[int], slots: List[int], left_out: List[int]) -> None:
    """Refuse the first word of ``targets`` that names a special token ``left_out`` of the words (at
    ``slots``, the explainable ones, of the response ``ids``), saying which token number reaches it."""
    wanted = targets_asked(targets) if left_out else "all"
    names = [n.lower() for n in adapter.token_strings([ids[i] for i in left_out])]
    for asked in (wanted if wanted != "all" else ()):
        if not isinstance(asked, str):
            continue
        text = " ".join(asked.split()).lower()
        # the target itself, else the first special token a phrase holds ("a <row_2_col_4> cat" was only
        # "not in the response")
        held = text if text in names else next((n for n in sorted(set(names), key=text.find) if n in text), None)
        if held is None:
            continue
        numbers = [slots.index(i) for i, name in zip(left_out, names) if name == held]
        which = f"token {numbers[0]}" if len(numbers) == 1 else \
            f"tokens {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}"
        what = f"{asked!r} is" if held == text else \
            f"phrase {asked!r} holds {adapter.token_strings([ids[left_out[names.index(held)]]])[0]!r},"
        raise InputError(f"targets: {what} a special token of the response, not a word: granularity "
                         f"'tokens' explains it, as {which}") from None


def _left_out_note(adapter, shown: List[int]) -> List[str]:
    """The note of the special tokens ``shown`` targets="words" left out (the closing ones at the response's
    end, an end as an eos is, are not among them)."""
    if not shown:
        return []
    names = list(dict.fromkeys(adapter.token_strings(shown)))
    listed = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    n = len(shown)
    return [f"targets: {n} special token{'s' if n != 1 else ''} of the response ({listed}) "
            f"{'are not words' if n != 1 else 'is not a word'}: left out (targets='tokens' explains "
            f"{'them' if n != 1 else 'it'})"]


def _text_of(slots: List[int], text: str, spans):
    """``text_of(slots)`` for :func:`select_items`: the decoded text the slots' tokens complete,
    from the first one's start to the last one's end, its whitespace runs made single spaces, lower
    case as its words' texts are (a phrase was "Red Circle" among the words "red" and "circle")."""
    where = {slot: k for k, slot in enumerate(slots)}

    def text_of(chosen: List[int]) -> str:
        cover = [spans[where[s]] for s in chosen if s in where and spans[where[s]][1] > spans[where[s]][0]]
        if not cover:
            return ""
        return " ".join(text[min(a for a, _ in cover):max(b for _, b in cover)].split()).lower()
    return text_of


def check_prepared(adapter, prep):
    """An adapter's ``prepare()`` result checked where a mistake would give wrong maps without a word
    (negative image positions wrapped round to the text, positions in the response were taken as
    image tokens) or a deep IndexError; a bug of the adapter, not the user's input: RuntimeError."""
    who = f"{type(adapter).__name__}.prepare()"
    ids, pos = prep.input_ids, prep.image_positions
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[0] == 1 and not ids.is_floating_point()):
        raise RuntimeError(f"{who}: input_ids must be an integer tensor [1, L], got "
                           f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    L, start = int(ids.shape[1]), int(prep.response_start)
    if not 0 <= start <= start + int(prep.response_length) <= L:
        raise RuntimeError(f"{who}: response_start {start} and response_length {prep.response_length} do not fit "
                           f"a sequence of {L}")
    _check_positions(f"{who}: image_positions", pos, start)
    h, w = (int(n) for n in prep.grid)
    if pos.numel() != h * w:  # (was an InputError of the ops' arguments, "grid 8x8 = 64 tokens does not match")
        raise RuntimeError(f"{who}: image_positions are {pos.numel()} tokens; its grid {h}x{w} needs {h * w}")
    for name, v in prep.views.items():  # a view's span replaces image_positions when it is explained
        what = f"{who}: view {name!r} positions"
        _check_positions(what, v.positions, start)
        h, w = (int(n) for n in v.grid)
        if v.positions.numel() != h * w:
            raise RuntimeError(f"{what} are {v.positions.numel()} tokens; its grid {h}x{w} needs {h * w}")
    return prep


def _check_positions(what: str, pos, start: int) -> None:
    """Image-token positions (``what`` names them and the adapter): a 1-D integer tensor of distinct
    positions in the prompt, before ``start`` (the response's first position)."""
    if not (isinstance(pos, torch.Tensor) and pos.dim() == 1 and pos.dtype in (torch.int32, torch.int64)):
        raise RuntimeError(f"{what} must be a 1-D integer tensor, got "
                           f"{pos.dtype if isinstance(pos, torch.Tensor) else type(pos).__name__}")
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= start):
        raise RuntimeError(f"{what} run from {int(pos.min())} to {int(pos.max())}; image tokens lie "
                           f"in the prompt, positions 0..{start - 1}")
    if torch.unique(pos).numel() != pos.numel():
        raise RuntimeError(f"{what} repeat a position")


def _check_ids_in_vocabulary(adapter, ids: List[int], error=InputError, where: str = "response: ",
                             prep_of=None) -> None:
    """Given token ids must be rows of the LM head (an unknown id ended in a tokenizer's
    AttributeError or OverflowError, or an embedding IndexError). Before an id past
    ``lm_head_weight()``'s rows is refused, ``prep_of()`` (an example the model can run) finds the
    logits' width, once per adapter: a head of fewer rows than the logits is the adapter's mistake
    (RuntimeError naming it), not a valid id's (the head's shape was checked at the first probe only,
    after the response)."""
    try:
        vocab = int(adapter.lm_head_weight().shape[0])
    except NotImplementedError:  # an adapter of the user's without an LM head accessor: ids unchecked
        vocab = None
    for i in ids:
        if i < 0 or (vocab is not None and i >= vocab):
            if i >= 0 and prep_of is not None:
                check_head_rows(adapter, prep_of)
            raise error(f"{where}token id {i} is not in the model's vocabulary"
                        + (f" (ids 0..{vocab - 1})" if vocab is not None else " (ids are >= 0)"))


def _ends(adapter, n: int) -> List[int]:
    """``n`` (at least one) copies of the adapter's smallest end token id: a response any model
    can read (no end id: none, and the adapter's prepare() decides what an empty response is)."""
    ends = sorted(int(i) for i in adapter.eos_token_ids)
    return ends[:1] * max(n, 1)


def check_generated(adapter, response_ids, response_length: Optional[int], prep=None) -> List[int]:
    """The ids an adapter's ``generate()`` returned, checked as a given response is (a wrong one was a
    raw IndexError, or its image token blamed on the user's input); its mistake, not the user's:
    RuntimeError (``prep``: the example it generated for, to tell a head of too few rows from an id
    past the vocabulary)."""
    who = f"{type(adapter).__name__}.generate()"
    try:
        ids = [operator.index(i) for i in response_ids]
    except TypeError:
        raise RuntimeError(f"{who}: response_ids must be whole numbers, got {list(response_ids)!r}") from None
    if response_length is not None and len(ids) > response_length:
        raise RuntimeError(f"{who}: returned {len(ids)} token ids for response_length={response_length}")
    _check_ids_in_vocabulary(adapter, ids, RuntimeError, f"{who}: in the response it returned, ",
                             prep_of=(lambda: prep) if prep is not None else None)
    image = getattr(adapter, "image_token_id", None)
    if image is not None and int(image) in ids:
        raise RuntimeError(f"{who}: the response it returned holds {adapter.token_strings([int(image)])[0]!r} "
                           f"(id {int(image)}), which {PLACEHOLDER}")
    return ids


def _why_no_word(ids, skip, eos) -> str:
    """Why a response has no explainable slot: all eos/pad, or words only after its first
    end-of-text token (the response ends there: "[eos] blue" read as "only eos/pad" misled)."""
    end = next((i for i, t in enumerate(ids) if t in eos), None)
    if end is not None and any(t not in skip for t in ids[end + 1:]):
        return f"it ends at its first end-of-text token, at position {end}, before any word"
    return "only eos/pad tokens"


__all__ = ["Example", "ExampleBuilder", "refuse_special_tokens", "special_ids"]
