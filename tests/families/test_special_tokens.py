"""Special tokens in a response, one rule for every family (dcam.example).

* A response given as TEXT is text the user says the model wrote: a chat, role or modality token in it (LLaVA's
  ``<video>``, Dream-VL's ``<|im_end|>``, Lumina-DiMOO's ``<user>``) silently changed what the model saw and was
  explained as a word; only the image's own tokens were refused. Now every special token is refused, one line
  naming ``response`` that says how to give the model's response back (as token ids), but for the pad/eos/mask
  slots, the unknown token and, at the response's end only, the tokens an adapter's ``closing_tokens`` name.
* A GENERATED response's special tokens (the random Idefics3 stand-in writes ``<row_2_col_4>``) were explained
  as words. Now targets="words" leaves them out, as eos and pad slots, with a note; targets="tokens" keeps them.
  A closing token is unsaid at the response's end only; one the model wrote mid-response is counted in the note.
  explain(trajectory=True) re-explains the generated ids: they keep the generated rule (its <user> was refused
  as a given response's).
* Given token IDS are exact (typically the model's own: an explanation's ``response_ids``, kept in meta.json):
  their special tokens and image marks are what the model wrote, left out of the words with a note as a
  generation's are (re-explaining a saved explanation of the Idefics3 stand-in was refused); only the image
  placeholder, which the model cannot read back, is refused. The video placeholder is not the image's: with no
  video the model reads it as any token (LLaVA-OneVision's ``<video>``, Qwen-VL's and Dream-VL's
  ``<|video_pad|>`` were refused as ids, the text's line offering ids all the same). DiffusionGemma's
  ``<start_of_image>`` / ``<end_of_image>``, which dcam writes before the prompt and its sampler never writes, are
  refused as text and as ids with one line that offers no ids (the text's offered them).
* The marker the trajectory handed its generated ids to explain() with (a ``list`` subclass) was honoured from
  the public API: a caller's list of that class skipped the given response's checks. Now ids the public API
  receives, whatever their class, get them; dcam's own route for generated ids is private.
* ``targets=["<row_2_col_4>"]`` said the token "is not in the response"; now the line says it is a special token
  of the response, not a word, and which token number reaches it (the API and ``--tokens``); a phrase holding
  one ("square <row_2_col_2>") names it the same way (it said the phrase is not in the response).
"""
import numpy as np
import pytest

import dcam
import dcam.example
from dcam.cli import main
from dcam.explain import Explainer
from dcam.probe.adapters.base import Generation
from dcam.testing.support import one_line_refusal
from dcam.testing.standins import save_standin

#: the reasons of the refusals of a given text, as the user reads them
GIVE_IDS = "; a response the model wrote is given as its token ids (response_ids of its explanation or meta.json)"
SPECIAL = "is a special token of the tokenizer (a chat, role or modality mark), not text; give the response " \
          "without it" + GIVE_IDS
CLOSING = "closes a response: only the response's end may hold it" + GIVE_IDS

#: stand-in -> (special token, its id in the stand-in's tokenizer) that a given response may not hold; the
#: stand-ins of LLaDA-V, LaViDa, Gemma 3 / 4, DiffusionGemma and dcam's toy have no special token beyond their
#: pad, eos, mask, image and unknown ones
SPECIALS = {
    "llava": [("<video>", 56)],
    "llava-next": [("<video>", 56)],
    "llava-onevision": [("<video>", 56)],
    "qwen-vl": [("<|video_pad|>", 55)],
    "qwen2.5-vl": [("<|video_pad|>", 55)],
    "qwen3-vl": [("<|video_pad|>", 55)],
    "dream-vl": [("<|video_pad|>", 151656)],
    "mmada": [("<|mmu|>", 126089)],
    "lumina-dimoo": [("<system>", 500), ("</system>", 501), ("<user>", 502), ("</user>", 503)],
}

#: stand-in -> (its closing token, id, its eos id): a given response may end with it, nowhere else
CLOSINGS = {"dream-vl": ("<|im_end|>", 151645, 151643), "idefics3": ("<end_of_utterance>", 58, 54),
            "smolvlm": ("<end_of_utterance>", 58, 54)}


def left_out(name):
    """The note of the special token ``name`` left out of the words."""
    return f"targets: 1 special token of the response ({name!r}) is not a word: left out (targets='tokens' explains it)"


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_a_special_token_is_refused_in_given_text_and_left_out_of_given_ids(models, landscape, name):
    exp = Explainer(*models(name))
    red = exp.adapter.encode_response("red")
    for token, token_id in SPECIALS[name]:
        line = f"response: holds {token!r} (id {token_id}), which {SPECIAL}"
        assert one_line_refusal(lambda: exp.explain(landscape, response=f"a red {token} circle", steps=2)) == line
        # as ids, the model's own: no word, counted in the note; a token of its own. The video placeholder of
        # LLaVA-OneVision, Qwen-VL and Dream-VL too: with no video the model reads it as any token (it was refused
        # as "the image placeholder", the text's line offering ids all the same)
        e = exp.explain(landscape, response=[*red, token_id, *red], steps=2)
        assert (e.tokens, e.word_numbers, e.notes) == (["red", "red"], [0, 1], [left_out(token)])
        e = exp.explain(landscape, response=[*red, token_id, *red], steps=2, targets="tokens")
        assert (e.tokens, e.notes) == (["red", token, "red"], [])
    # "<" and "|" the tokenizer makes no special token of are text (this word-level one spells them <unk>)
    e = exp.explain(landscape, response="a red <videos> | circle", steps=2)
    assert e.tokens == ["a", "red", "<unk>", "<unk>", "circle"] and e.notes == [
        "response: the tokenizer has no token for 2 piece(s) of the given text, each explained as the unknown "
        "token '<unk>'"]


@pytest.mark.parametrize("name", sorted(CLOSINGS))
def test_a_closing_token_may_end_given_text_only_and_is_left_out_of_ids_elsewhere(models, landscape, name):
    exp = Explainer(*models(name))
    token, token_id, eos = CLOSINGS[name]
    red, circle = exp.adapter.encode_response("red"), exp.adapter.encode_response("circle")
    for response in (f"a red circle{token}", f"a red circle {token}", [*red, *circle, token_id, eos, eos]):
        e = exp.explain(landscape, response=response, steps=2)
        # the response's close, as an eos is: neither a word nor a note
        assert (e.tokens, e.notes) == ((["a", "red", "circle"] if isinstance(response, str) else ["red", "circle"]),
                                      [])
    line = f"response: holds {token!r} (id {token_id}), which {CLOSING}"
    assert one_line_refusal(lambda: exp.explain(landscape, response=f"a red {token} circle", steps=2)) == line
    # as ids mid-response, one the model wrote: counted in the note, as a generation's
    e = exp.explain(landscape, response=[*red, token_id, *circle, eos], steps=2)
    assert (e.tokens, e.notes) == (["red", "circle"], [left_out(token)])


def test_diffusion_gemmas_image_marks_are_refused_alike_as_text_and_as_ids(models, landscape):
    # dcam writes [BOS] <boi> image <eoi> before the prompt and its sampler never writes them: refused as ids, and
    # the text's line no longer tells the user to give them as ids
    exp = Explainer(*models("diffusion-gemma"))  # its stand-in: <start_of_image> 56, <end_of_image> 57
    red = exp.adapter.encode_response("red")
    for token, token_id in (("<start_of_image>", 56), ("<end_of_image>", 57)):
        line = f"response: holds {token!r} (id {token_id}), which dcam places itself ([BOS] <boi> image <eoi> come " \
               "before the prompt); give the text without it"
        for response in (f"a red {token} circle", f"a red circle {token}", [*red, token_id, *red]):
            assert one_line_refusal(lambda: exp.explain(landscape, response=response, steps=2)) == line


def test_the_cli_refuses_a_special_token_in_response_naming_the_option(tmp_path, coco_dir, capsys):
    folder = save_standin("llava-next", str(tmp_path / "llava-next"))
    out = tmp_path / "out"
    rc = main(["explain", str(coco_dir / "images" / "0.png"), "--model", folder, "--response", "a <video> dog",
               "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err == [f"dcam explain: error: --response: holds '<video>' (id 56), which {SPECIAL}"]


#: what the model below writes: tile markers among its words, its turn's close, then its eos (Idefics3 stand-in ids)
WRITTEN = ["<row_2_col_4>", "blue", "square", "<row_1_col_2>", "with", "<global-img>", "cross", "<row_1_col_2>",
           "<end_of_utterance>", "</s>"]


@pytest.fixture(scope="module")
def writer(models):
    """An Idefics3 adapter whose sampler writes :data:`WRITTEN` (a user's adapter, ``adapter=``)."""
    model, processor = models("idefics3")
    base = type(Explainer(model, processor).adapter)

    class Writer(base):
        def generate(self, prep, steps=None, response_length=None, record=False):
            return Generation(self.tokenizer.convert_tokens_to_ids(WRITTEN), 1)

    return Explainer(adapter=Writer(model, processor))


def test_a_generated_responses_special_tokens_are_no_words(writer, landscape):
    e = writer.explain(landscape)
    assert e.tokens == ["blue", "square", "with", "cross"]
    assert e.word_numbers == [0, 1, 2, 3]
    # the closing token is the response's end, unsaid; the others are counted, each name once
    assert e.notes == ["targets: 4 special tokens of the response ('<row_2_col_4>', '<row_1_col_2>', '<global-img>') "
                       "are not words: left out (targets='tokens' explains them)"]
    assert e.response == "<row_2_col_4> blue square <row_1_col_2> with <global-img> cross <row_1_col_2> " \
                         "<end_of_utterance>"  # the response as written
    assert writer.explain(landscape, targets=[-1, "square"]).tokens == ["square", "cross"]
    t = writer.explain(landscape, targets="tokens")
    assert t.tokens == ["<row_2_col_4>", "blue", "square", "<row_1_col_2>", "with", "<global-img>", "cross",
                        "<row_1_col_2>", "<end_of_utterance>"] and t.notes == []


def test_tokens_granularity_reaches_a_special_token_by_its_number(models, landscape, writer):
    exp = Explainer(adapter=writer.adapter, granularity="tokens")
    assert exp.explain(landscape, targets=[0, 5]).tokens == ["<row_2_col_4>", "<global-img>"]


def test_a_response_of_special_tokens_only_has_no_word(models, landscape):
    model, processor = models("idefics3")
    base = type(Explainer(model, processor).adapter)

    class Marks(base):
        def generate(self, prep, steps=None, response_length=None, record=False):
            return Generation(self.tokenizer.convert_tokens_to_ids(["<row_1_col_1>", "<global-img>", "</s>"]), 1)

    exp = Explainer(adapter=Marks(model, processor))
    assert one_line_refusal(lambda: exp.explain(landscape)) == \
        "the response has no word to explain (its tokens are special tokens only; targets='tokens' explains them)"
    assert exp.explain(landscape, targets="tokens").tokens == ["<row_1_col_1>", "<global-img>"]


def test_a_closing_token_the_model_wrote_mid_response_is_counted_in_the_note(models, landscape):
    model, processor = models("idefics3")
    base = type(Explainer(model, processor).adapter)

    class Midway(base):  # <end_of_utterance> closes nothing here: words follow it
        def generate(self, prep, steps=None, response_length=None, record=False):
            return Generation(self.tokenizer.convert_tokens_to_ids(
                ["blue", "<end_of_utterance>", "square", "<row_1_col_2>", "cross", "<end_of_utterance>",
                 "<end_of_utterance>", "</s>"]), 1)

    e = Explainer(adapter=Midway(model, processor)).explain(landscape)
    assert e.tokens == ["blue", "square", "cross"]
    # the two closing tokens at the end are the response's end (unsaid); the one after "blue" is not
    assert e.notes == ["targets: 2 special tokens of the response ('<end_of_utterance>', '<row_1_col_2>') are not "
                       "words: left out (targets='tokens' explains them)"]


def test_a_trajectory_leaves_out_a_special_token_its_model_wrote_as_a_plain_explain_does(models, landscape):
    model, processor = models("lumina-dimoo")
    user = SPECIALS["lumina-dimoo"][2][1]
    WritesUser = _writes_user()
    exp = Explainer(adapter=WritesUser(model, processor))
    plain = exp.explain(landscape, steps=2, response_length=6)
    traced = exp.explain(landscape, steps=2, response_length=6, trajectory=True)
    note = "targets: 1 special token of the response ('<user>') is not a word: left out (targets='tokens' explains it)"
    assert note in plain.notes and plain.notes == traced.notes
    assert note in traced.trajectory.notes
    assert traced.trajectory.response_ids[1] == user and "<user>" not in plain.tokens
    assert traced.tokens == plain.tokens == traced.trajectory.tokens


def _writes_user():
    """The adapter class of :data:`WRITES_USER` (the source the CLI test hands to --adapter)."""
    space = {}
    exec(WRITES_USER, space)
    return space["WritesUser"]


WRITES_USER = '''
from dcam.probe.adapters.vq import DiMOOAdapter


class WritesUser(DiMOOAdapter):
    """Lumina-DiMOO's adapter whose sampler writes <user> in slot 1 (states included)."""

    def generate(self, prep, steps=None, response_length=None, record=False):
        gen = super().generate(prep, steps, response_length, record=record)
        user = self.tokenizer.convert_tokens_to_ids("<user>")
        gen.response_ids = list(gen.response_ids)
        gen.response_ids[1] = user
        if record:
            gen.states = gen.states.clone()
            gen.states[:, 1] = user
        return gen
'''


def test_the_cli_trajectories_leave_out_a_special_token_the_model_wrote(in_folder, landscape):
    import json

    import dcam

    (in_folder / "dimoo_writes_user.py").write_text(WRITES_USER)
    folder = save_standin("lumina-dimoo", str(in_folder / "dimoo"))
    landscape.save(in_folder / "image.png")
    common = ["--model", folder, "--adapter", "dimoo_writes_user:WritesUser", "--trajectory", "--steps", "2",
              "--response-length", "6", "--quiet"]
    note = "targets: 1 special token of the response ('<user>') is not a word: left out (targets='tokens' explains it)"
    assert main(["explain", "image.png", "--out", "explained", *common]) == 0
    meta = json.loads((in_folder / "explained" / "meta.json").read_text())
    assert note in meta["notes"] and "trajectory" in meta
    (in_folder / "m.jsonl").write_text(json.dumps({"id": "a", "image": "image.png"}) + "\n")
    assert main(["run", "m.jsonl", "--out", "run", *common]) == 0
    (record,) = dcam.load_run("run")
    assert note in record.notes and record.trajectory is not None

#: what the random Idefics3 / SmolVLM stand-ins (seed 0) write about a black 32 x 32 image: tile markers among words
WRITTEN_IDS = [68, 77, 75, 89, 17, 20, 66, 94, 9, 60, 23, 34, 48, 62, 20, 66]
WRITTEN_TOKENS = ["<row_2_col_4>", "<row_4_col_1>", "<row_3_col_5>", "<row_6_col_1>", "blue", "square",
                  "<row_2_col_2>", "<row_6_col_6>", "with", "<row_1_col_2>", "cross", "left", "do", "<row_1_col_4>",
                  "square", "<row_2_col_2>"]
WORDS = ["blue", "square", "with", "cross", "left", "do", "square"]
NOTE = ("targets: 9 special tokens of the response ('<row_2_col_4>', '<row_4_col_1>', '<row_3_col_5>', "
        "'<row_6_col_1>', '<row_2_col_2>' and 3 more) are not words: left out (targets='tokens' explains them)")
#: the refusal of the same response given as its text
AS_TEXT = ("response: holds '<row_2_col_4>' (id 68), which is part of the image placeholder: it marks where the "
           "image features go; a response the model wrote is given as its token ids (response_ids of its "
           "explanation or meta.json)")


@pytest.mark.parametrize("name", ["idefics3", "smolvlm"])
def test_a_saved_explanation_is_re_explained_from_its_response_ids(models, tmp_path, name):
    exp = Explainer(*models(name))
    image = np.zeros((32, 32, 3), np.uint8)
    e = exp.explain(image)
    assert (e.response_ids, e.tokens, e.notes) == (WRITTEN_IDS, WORDS, [NOTE])
    e.save(str(tmp_path / "saved"))
    saved = dcam.load_explanation(str(tmp_path / "saved"))
    assert saved.response_ids == WRITTEN_IDS
    # the same ids and steps: the same words, note and maps, bit for bit
    again = exp.explain(image, response=saved.response_ids, steps=saved.steps)
    assert (again.tokens, again.notes) == (WORDS, [NOTE])
    assert np.array_equal(np.asarray(again.maps), np.asarray(e.maps))
    # other targets of the same response: a word's two occurrences, then every token, the markers included
    square = exp.explain(image, response=saved.response_ids, targets=["square"])
    assert (square.tokens, square.word_numbers) == (["square", "square"], [1, 6])
    tokens = exp.explain(image, response=saved.response_ids, targets="tokens")
    assert (tokens.tokens, tokens.notes) == (WRITTEN_TOKENS, [])
    # its text is refused, saying how to give it back
    assert one_line_refusal(lambda: exp.explain(image, response=saved.response)) == AS_TEXT


def test_a_diffusion_stand_ins_saved_explanation_is_re_explained_from_its_response_ids(models, landscape, tmp_path):
    # Lumina-DiMOO's stand-in, its sampler writing <user> (id 502) in slot 1; given back to the plain adapter
    model, processor = models("lumina-dimoo")
    e = Explainer(adapter=_writes_user()(model, processor)).explain(landscape, steps=2, response_length=6)
    assert e.response_ids == [15973, 502, 15973, 95937, 95937, 95937]
    e.save(str(tmp_path / "saved"))
    saved = dcam.load_explanation(str(tmp_path / "saved"))
    exp = Explainer(model, processor)
    again = exp.explain(landscape, response=saved.response_ids, steps=saved.steps)
    words = ["<id 15973>", "<id 15973>", "<id 95937>", "<id 95937>", "<id 95937>"]  # ids its tokenizer has no text for
    assert again.tokens == e.tokens == words
    assert again.notes == ["targets: 1 special token of the response ('<user>') is not a word: left out "
                           "(targets='tokens' explains it)"]
    assert np.array_equal(np.asarray(again.maps), np.asarray(e.maps))
    assert exp.explain(landscape, response=saved.response_ids, steps=2, targets="tokens").tokens == \
        ["<id 15973>", "<user>", "<id 15973>", "<id 95937>", "<id 95937>", "<id 95937>"]


class Marked(list):
    """A list subclass of the caller's."""


#: the class dcam.example once took as "generated before, no given response's checks", where it still exists
OLD_MARKER = getattr(dcam.example, "GeneratedIds", Marked)


@pytest.mark.parametrize("kind", [list, Marked, OLD_MARKER], ids=["list", "subclass", "old-marker"])
def test_ids_of_any_list_class_given_publicly_get_the_given_ids_checks(models, landscape, kind):
    exp = Explainer(*models("llava"))  # its stand-in: <image> is id 55, the vocabulary ids 0..56, eos </s> 54
    red = exp.adapter.encode_response("red")
    assert one_line_refusal(lambda: exp.explain(landscape, response=kind([*red, 55]), steps=2)) == \
        "response: holds '<image>' (id 55), which is the image placeholder the model fills with image features"
    assert one_line_refusal(lambda: exp.explain(landscape, response=kind([*red, 57]), steps=2)) == \
        "response: token id 57 is not in the model's vocabulary (ids 0..56)"
    assert one_line_refusal(lambda: exp.explain_batch([landscape], responses=[kind([54, *red])], steps=2)) == \
        "response: [54, 15] has no word to explain (it ends at its first end-of-text token, at position 0, " \
        "before any word)"


def test_a_target_naming_a_special_token_the_model_wrote_points_to_its_token_number(models):
    exp = Explainer(*models("idefics3"))
    image = np.zeros((32, 32, 3), np.uint8)
    assert one_line_refusal(lambda: exp.explain(image, targets=["<row_2_col_4>"])) == \
        "targets: '<row_2_col_4>' is a special token of the response, not a word: granularity 'tokens' " \
        "explains it, as token 0"
    assert one_line_refusal(lambda: exp.explain(image, targets=["blue", "<ROW_2_COL_2>"])) == \
        "targets: '<ROW_2_COL_2>' is a special token of the response, not a word: granularity 'tokens' " \
        "explains it, as tokens 6 and 15"
    # a word it did not write is said as before
    assert one_line_refusal(lambda: exp.explain(image, targets=["zebra"])) == \
        "targets: word 'zebra' is not in the response (words: blue square with cross left do square)"
    # the numbers the line gives reach them
    assert exp.explain(image, granularity="tokens", targets=[0, 6, 15]).tokens == \
        ["<row_2_col_4>", "<row_2_col_2>", "<row_2_col_2>"]


def test_the_cli_says_a_special_token_asked_by_tokens_is_no_word(tmp_path, capsys):
    from PIL import Image

    folder = save_standin("idefics3", str(tmp_path / "idefics3"))
    Image.new("RGB", (32, 32)).save(tmp_path / "black.png")
    out = tmp_path / "out"
    rc = main(["explain", str(tmp_path / "black.png"), "--model", folder, "--tokens", "<row_2_col_4>",
               "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err == ["dcam explain: error: --tokens: '<row_2_col_4>' is a special token of the response, not a word: "
                   "granularity 'tokens' explains it, as token 0"]


def test_a_phrase_holding_a_special_token_names_it(models):
    # "square <row_2_col_2>" said the phrase is not in the response, though the response holds both
    exp = Explainer(*models("idefics3"))
    image = np.zeros((32, 32, 3), np.uint8)  # the response of WRITTEN_TOKENS
    for phrase, token, which in (("square <row_2_col_2>", "<row_2_col_2>", "tokens 6 and 15"),
                                 ("a <ROW_2_COL_4> cat", "<row_2_col_4>", "token 0"),
                                 ("with <row_1_col_2> <row_2_col_2>", "<row_1_col_2>", "token 9")):
        assert one_line_refusal(lambda: exp.explain(image, targets=["blue", phrase])) == \
            f"targets: phrase {phrase!r} holds {token!r}, a special token of the response, not a word: granularity " \
            f"'tokens' explains it, as {which}"
    # a phrase of words alone is said as before
    assert one_line_refusal(lambda: exp.explain(image, targets=["blue cat"])) == \
        "targets: phrase 'blue cat' is not in the response (words: blue square with cross left do square)"
    # the numbers the line gives reach the tokens
    assert exp.explain(image, granularity="tokens", targets=[9]).tokens == ["<row_1_col_2>"]
