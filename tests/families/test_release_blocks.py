"""MMaDA and Lumina-DiMOO decode a response in the releases' blocks, and a note says when a length is not
parted in the documented 4 (docs/FAMILIES.md: "4 blocks, as released").

A length 4 did not divide was sampled in one block with no note. The releases' rules, read from their code:
MMaDA's inference_mmu.py calls mmu_generate with block_length = max(1, L // 4), which mmu_generate asserts
divides L (10 slots: 5 blocks of 2; 9: refused, dcam decodes one block); Lumina-DiMOO's
generate_text_understanding takes a fixed block length (1024 slots in blocks of 256) and asserts it divides
the length, so it has no rule for a length 4 does not divide (dcam: one block)."""
import json

import numpy as np
import pytest

from dcam.cli import main
from dcam.explain import Explainer
from dcam.probe import auto_adapter
from dcam.testing.standins import save_standin

MMADA_10 = ("blocks: 5 blocks of 2 slots: 4 blocks need a length that 4 divides, and MMaDA's release "
            "(inference_mmu.py) decodes 10 slots in blocks of 10 // 4")
MMADA_9 = ("blocks: one block of 9 slots: 4 blocks need a length that 4 divides; MMaDA's release (inference_mmu.py) "
           "decodes in blocks of 9 // 4 = 2, which do not divide 9 (its mmu_generate refuses that length)")
DIMOO_10 = ("blocks: one block of 10 slots: 4 blocks need a length that 4 divides (Lumina-DiMOO's release decodes "
            "1024 slots in 4 blocks of 256)")


@pytest.mark.parametrize("name, length, plan", [
    # (steps, block length): L // 2 steps, rounded down to whole steps per block, at least one each
    ("mmada", 8, (4, 2)), ("mmada", 10, (5, 2)), ("mmada", 9, (4, 9)), ("mmada", 6, (6, 1)), ("mmada", 12, (4, 3)),
    ("lumina-dimoo", 8, (4, 2)), ("lumina-dimoo", 10, (5, 10)), ("lumina-dimoo", 6, (3, 6)),
])
def test_the_blocks_follow_the_releases_rule(name, length, plan, models):
    assert auto_adapter(*models(name)).steps_and_blocks(None, length) == plan


@pytest.mark.parametrize("name, length, note", [("mmada", 10, MMADA_10), ("mmada", 9, MMADA_9),
                                                ("mmada", 8, None), ("lumina-dimoo", 10, DIMOO_10),
                                                ("lumina-dimoo", 8, None)])
def test_a_generation_outside_four_blocks_says_how_it_ran(name, length, note, models, landscape, tmp_path):
    e = Explainer(*models(name)).explain(landscape, response_length=length)
    assert e.notes == ([note] if note else [])  # (no steps asked: no steps note)
    e.save(tmp_path / "x")
    assert json.loads((tmp_path / "x" / "meta.json").read_text())["notes"] == e.notes


def test_a_block_length_that_does_not_divide_is_noted_whatever_the_steps(models, landscape):
    # it was said only inside a note of fewer steps than asked, so a generation without steps= said nothing
    e = Explainer(*models("lumina-dimoo"), block_length=3).explain(landscape, response_length=10)
    assert e.notes == ["blocks: one block of 10 slots: the block length 3 does not divide the 10 response slots"]
    # steps asked too: both notes, each its own (5 steps of one block, none idle at 10 slots)
    e = Explainer(*models("mmada")).explain(landscape, response_length=10, steps=3)
    assert e.notes == [MMADA_10, "steps: 3 requested, the sampler used 5 (5 blocks of 2 slots take the same "
                                 "number of steps each, at least one: 5 in all)"]


def test_the_cli_prints_the_blocks_note(tmp_path, capsys):
    folder = save_standin("mmada", str(tmp_path / "mmada"))
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(image)
    rc = main(["explain", str(image), "--model", folder, "--response-length", "10", "--tokens", "0",
               "--out", str(tmp_path / "x"), "--quiet"])
    assert rc == 0
    assert f"note: {MMADA_10}" in capsys.readouterr().out.splitlines()
