"""An image span whose token count is not its grid's. Where the adapter made both (its grid and the
sequence its prepare() built) the mismatch is the adapter's bug: a RuntimeError naming the adapter,
locate() and both counts (a traceback on the command line), not the user's input. Where the grid or
the sequence comes from the user (a processor of another layout, grid= given by hand) it stays an
InputError naming that argument. The counts are worked by hand: 7x8 = 56, 8 x (8 + 1) = 72."""
import re

import pytest

import dcam
from dcam.errors import InputError


def _bug(call) -> str:
    """The one-line message of the RuntimeError ``call()`` raises, checked not to be an InputError."""
    with pytest.raises(RuntimeError) as info:
        call()
    assert not isinstance(info.value, InputError)
    return str(info.value)


def test_a_grid_that_miscounts_the_adapters_own_span_is_the_adapters_bug(documented_adapter):
    # was "InputError: image span has 64 tokens; a 7x8 grid needs 56", which the CLI printed as a mistake of
    # the IMAGE argument, exit 2
    My, model, image = documented_adapter()  # a BOS, 64 image tokens (id 3), 2 prompt ids; grid 8x8

    class Miscounted(My):
        grid = (7, 8)
    assert _bug(lambda: dcam.Explainer(adapter=Miscounted(model)).explain(image, response="10 11")) == \
        "Miscounted.locate(): the grid it was given, 7x8, needs 56 image tokens, but the sequence holds 64 " \
        "(image token id 3): the adapter's grid and the sequence its prepare() built disagree"
    # with a newline column: 7 rows of 8 + 1 slots
    assert _bug(lambda: dcam.Explainer(adapter=Miscounted(model, newline_column=True)).explain(image,
                                                                                              response="10 11")) == \
        "Miscounted.locate(): the grid it was given, 7x8 with a newline column, needs 63 image tokens, but the " \
        "sequence holds 64 (image token id 3): the adapter's grid and the sequence its prepare() built disagree"

    class Short(My):  # positions of its own, without locate(): 60 of the 64
        def prepare(self, *a, **k):
            p = super().prepare(*a, **k)
            p.image_positions = p.image_positions[:60]
            return p
    # was "InputError: grid 8x8 = 64 tokens does not match the image-token span of 60 tokens" (the ops' check)
    assert _bug(lambda: dcam.Explainer(adapter=Short(model)).explain(image, response="10 11")) == \
        "Short.prepare(): image_positions are 60 tokens; its grid 8x8 needs 64"
    # the adapter's right grid still explains: two words over 8x8
    assert dcam.Explainer(adapter=My(model)).explain(image, response="10 11").maps.shape == (2, 8, 8)


def test_the_users_own_mistakes_stay_input_errors(documented_adapter):
    # a response holding the image token is the user's (refused before prepare(): it would make the span 65 long)
    My, model, image = documented_adapter()
    with pytest.raises(InputError, match=r"^response: holds 'w3' \(id 3\), which is the image placeholder"):
        dcam.Explainer(adapter=My(model)).explain(image, response="10 3 11")
    # newline_column, the caller's option, where the span fits the grid with the other setting: 8x8 = 64 held
    with pytest.raises(InputError, match=r"^newline_column: True, but the image span has 64 tokens, a 8x8 grid "
                                         r"without a newline slot; leave newline_column out$"):
        dcam.Explainer(adapter=My(model, newline_column=True)).explain(image, response="10 11")
    # the toy model (64-pixel images of 4-pixel patches: 16x16) with a processor of another layout (32-pixel
    # images: 8x8 tokens): the processor is the argument to change
    from dcam.zoo import load_default
    from dcam.zoo.processing import ShapesProcessor

    model, processor = load_default()
    assert (model.config.image_size, model.config.patch_size) == (64, 4)
    other = ShapesProcessor(image_size=32, patch_size=model.config.patch_size)
    with pytest.raises(InputError) as info:
        dcam.Explainer(model, other)
    assert str(info.value) == "processor: it lays an image out as 8x8 tokens and the model's grid is 16x16; " \
                              "pass the model's own processor (dcam.zoo.load_default() returns both)"


def test_a_llava_grid_or_processor_of_another_layout_is_named(models):
    # LLaVA's grid is the config's (32-pixel tower, 8-pixel patches: 4x4 = 16) or grid='s; the span is what the
    # user's processor placed. Both said "image span has 16 tokens; a 3x3 grid needs 9", read as the IMAGE's
    from PIL import Image

    model, processor = models("llava")
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    with pytest.raises(InputError, match=r"^grid: 3x3 \(given\) needs 9 image tokens, but the processor placed "
                                         r"16$"):
        dcam.Explainer(model, processor, grid=(3, 3)).explain(image, response="a")
    import copy

    other = copy.deepcopy(processor)
    other.patch_size = 4  # (32 / 4)^2 = 64 image tokens
    with pytest.raises(InputError, match=re.escape("processor: it placed 64 image tokens, and the model's 4x4 grid "
                                                   "needs 16; pass the processor of the model's own checkpoint")):
        dcam.Explainer(model, other).explain(image, response="a")


def test_the_command_line_shows_an_adapters_miscount_as_a_bug(in_folder):
    # exit 2 "IMAGE: span has 256 tokens; a 7x8 grid needs 56" blamed the user's image for the adapter's grid
    from PIL import Image

    from dcam.cli import main

    (in_folder / "span_mod.py").write_text(
        "from dcam.probe.adapters import ShapesAdapter\n\n\n"
        "class Miscounted(ShapesAdapter):\n    grid = (7, 8)\n")
    Image.new("RGB", (64, 64), (220, 30, 30)).save(in_folder / "image.png")
    message = _bug(lambda: main(["explain", "image.png", "--adapter", "span_mod:Miscounted", "--response",
                                 "red circle", "--out", "out", "--quiet"]))
    assert message.startswith("Miscounted.locate(): the grid it was given, 7x8, needs 56 image tokens, but the "
                              "sequence holds 256")  # the toy's 16x16
    assert not (in_folder / "out").exists()
