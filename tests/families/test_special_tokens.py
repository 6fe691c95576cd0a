"""Special tokens in a response, one rule for every family (dcam.example).

* A GIVEN response is text the user says the model wrote: a chat, role or modality token in it (LLaVA's
  ``<video>``, Dream-VL's ``<|im_end|>``, Lumina-DiMOO's ``<user>``) silently changed what the model saw and was
  explained as a word; only the image's own tokens were refused. Now every special token is refused, one line
  naming ``response``, but for the pad/eos/mask slots, the unknown token and, at the response's end only, the
  tokens an adapter's ``closing_tokens`` name.
* A GENERATED response's special tokens (the random Idefics3 stand-in writes ``<row_2_col_4>``) were explained
  as words. Now targets="words" leaves them out, as eos and pad slots, with a note; targets="tokens" keeps them.
  A closing token is unsaid at the response's end only; one the model wrote mid-response is counted in the note.
  explain(trajectory=True) re-explains the generated ids: they keep the generated rule (its <user> was refused
  as a given response's).
"""
import numpy as np
import pytest

from dcam.cli import main
from dcam.explain import Explainer
from dcam.probe.adapters.base import Generation
from dcam.testing.support import one_line_refusal
from dcam.testing.standins import save_standin

#: the reasons of the refusals, as the user reads them
SPECIAL = "is a special token of the tokenizer (a chat, role or modality mark), not text; give the response without it"
CLOSING = "closes a response: only the response's end may hold it"

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


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_a_given_response_holding_a_special_token_is_refused_naming_it(models, landscape, name):
    exp = Explainer(*models(name))
    red = exp.adapter.encode_response("red")
    for token, token_id in SPECIALS[name]:
        line = f"response: holds {token!r} (id {token_id}), which {SPECIAL}"
        assert one_line_refusal(lambda: exp.explain(landscape, response=f"a red {token} circle", steps=2)) == line
        assert one_line_refusal(lambda: exp.explain(landscape, response=[*red, token_id, *red], steps=2)) == line
    # "<" and "|" the tokenizer makes no special token of are text (this word-level one spells them <unk>)
    e = exp.explain(landscape, response="a red <videos> | circle", steps=2)
    assert e.tokens == ["a", "red", "<unk>", "<unk>", "circle"] and e.notes == []


@pytest.mark.parametrize("name", sorted(CLOSINGS))
def test_a_closing_token_may_end_a_given_response_only(models, landscape, name):
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
    assert one_line_refusal(lambda: exp.explain(landscape, response=[*red, token_id, eos, *circle], steps=2)) == line


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
