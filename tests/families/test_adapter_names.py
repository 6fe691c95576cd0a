"""register_adapter(..., name=...): the name is a family that family= and --family force,
listed by `dcam families` as registered; a bundled or already registered name is refused."""
import json

import pytest


def test_a_registered_name_is_forced_by_family(registry, second_block_adapter):
    import dcam
    from dcam.probe import auto_adapter, register_adapter
    from dcam.zoo import load_default

    model, processor = load_default()
    SecondBlock = second_block_adapter()
    register_adapter(lambda m: False, SecondBlock, name="second-block")  # its predicate never matches
    assert type(auto_adapter(model, processor)).__name__ == "ShapesAdapter"
    assert type(auto_adapter(model, processor, family="second-block")) is SecondBlock
    exp = dcam.Explainer(model, processor, family="second-block")
    assert type(exp.adapter) is SecondBlock and exp.layer == 1
    assert dcam.Explainer(model, processor).layer == 0  # the bundled weights' own default


def test_a_name_that_is_taken_is_refused(registry, second_block_adapter):
    from dcam.errors import InputError
    from dcam.probe import register_adapter
    from dcam.probe.adapters import ADAPTERS, REGISTERED

    SecondBlock = second_block_adapter()
    with pytest.raises(InputError, match=r"^name: 'shapes' is a bundled family's name"):
        register_adapter(lambda m: False, SecondBlock, name="shapes")
    register_adapter(lambda m: False, SecondBlock, name="mine")
    n = len(ADAPTERS)
    with pytest.raises(InputError, match=r"^name: 'mine' is already the name of the registered adapter "
                                         r".*SecondBlock$"):
        register_adapter(lambda m: False, second_block_adapter(), name="mine")
    with pytest.raises(InputError, match=r"^name must be a non-empty string, got ''$"):
        register_adapter(lambda m: False, SecondBlock, name="")
    assert len(ADAPTERS) == n and REGISTERED["mine"] is SecondBlock  # a refused one registers nothing


def test_families_lists_it_and_family_option_forces_it(registry, tmp_path, capsys,
                                                         second_block_adapter):
    from PIL import Image

    from dcam.cli import main
    from dcam.probe import register_adapter

    SecondBlock = second_block_adapter()
    register_adapter(lambda m: False, SecondBlock, name="second-block")
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("second-block: registered adapter ") and "SecondBlock" in line
               for line in out.splitlines())
    Image.new("RGB", (64, 64), (220, 30, 30)).save(tmp_path / "red.png")
    for family, layer in (("second-block", 1), ("shapes", 0)):
        out_dir = tmp_path / family
        assert main(["explain", str(tmp_path / "red.png"), "--family", family, "--response", "red", "--out",
                     str(out_dir), "--quiet"]) == 0
        assert json.loads((out_dir / "meta.json").read_text())["layer"] == layer
