"""Adapters registered under a name (``register_adapter(..., name=...)``): listed by ``dcam families
--markdown``; a bundled family's or another registered adapter's name in other case is refused."""
import pytest

from dcam.cli import main
from dcam.probe import register_adapter
from dcam.probe.adapters import FAMILIES, ShapesAdapter, markdown_table


class SecondBlock(ShapesAdapter):
    """A user's adapter: the bundled toy's, hooking block 1."""

    def default_layer(self):
        return 1


def test_families_markdown_lists_a_registered_adapter_after_the_bundled_families(registry, capsys):
    # the plain listing named it; --markdown printed the bundled families only
    register_adapter(lambda m: False, SecondBlock, name="second-block")
    assert main(["families", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:-1] == markdown_table().splitlines()  # docs/FAMILIES.md's table, as it was
    assert len(lines) == 2 + len(FAMILIES) + 1
    own = "its adapter's"
    want = ["second-block", f"registered adapter {__name__}.SecondBlock",
            "register_adapter's predicate; family='second-block' forces it; on the command line --adapter "
            f"{__name__}:SecondBlock",
            own, own, own, own, own, own, own]
    assert lines[-1] == "| " + " | ".join(want) + " |"
    assert lines[-1].count("|") == lines[0].count("|")  # one cell under each column


def test_a_name_that_is_a_bundled_familys_in_other_case_is_refused_and_a_new_name_registers(registry):
    # "LLaDA-V" was taken beside the bundled "llada-v": family= matches exactly, so the two names forced
    # two adapters that differ by the case of a letter
    from dcam.errors import InputError
    from dcam.probe.adapters import ADAPTERS, REGISTERED

    n = len(ADAPTERS)
    for name, bundled in (("LLaDA-V", "llada-v"), ("Shapes", "shapes"), ("QWEN-VL", "qwen-vl")):
        with pytest.raises(InputError) as caught:
            register_adapter(lambda m: False, SecondBlock, name=name)
        assert str(caught.value) == (
            f"name: '{name}' is the bundled family '{bundled}' in other case (family= and --family match names "
            f"exactly: '{bundled}' would force the bundled adapter, '{name}' this one); register the adapter under "
            "another")
    assert len(ADAPTERS) == n and not set(REGISTERED) & {"LLaDA-V", "Shapes", "QWEN-VL"}  # nothing registered
    register_adapter(lambda m: False, SecondBlock, name="LLaDA-V-mine")  # a new name, whatever its case
    assert REGISTERED["LLaDA-V-mine"] is SecondBlock and len(ADAPTERS) == n + 1


class OtherBlock(ShapesAdapter):
    """Another user's adapter."""


def test_a_name_that_is_a_registered_adapters_in_other_case_is_refused(registry):
    # "Mine" and "mine" were both taken: family= matches exactly, so the case of a letter chose the adapter
    from dcam.errors import InputError
    from dcam.probe.adapters import ADAPTERS, REGISTERED

    n = len(ADAPTERS)
    register_adapter(lambda m: False, SecondBlock, name="Mine")
    for cls in (OtherBlock, SecondBlock):  # another class, or the same one, under the name in other case
        for name in ("mine", "MINE", "mInE"):
            with pytest.raises(InputError) as caught:
                register_adapter(lambda m: False, cls, name=name)
            assert str(caught.value) == (
                f"name: '{name}' is the registered adapter 'Mine' ({__name__}.SecondBlock) in other case (family= "
                "and --family match names exactly, so the case of a letter would choose between them); register the "
                "adapter as 'Mine' or under another name")
    # nothing registered by the refused calls
    assert [k for k in REGISTERED if k.casefold() == "mine"] == ["Mine"] and REGISTERED["Mine"] is SecondBlock
    assert len(ADAPTERS) == n + 1
    # the same class under the same exact name again replaces its registration (one entry, not two)
    again = (lambda m: True)
    register_adapter(again, SecondBlock, name="Mine")
    assert len(ADAPTERS) == n + 1 and ADAPTERS[0] == (again, SecondBlock) and REGISTERED["Mine"] is SecondBlock
    # an unrelated name still registers
    register_adapter(lambda m: False, OtherBlock, name="mine-too")
    assert REGISTERED["mine-too"] is OtherBlock and REGISTERED["Mine"] is SecondBlock and len(ADAPTERS) == n + 2


REGISTERS = """
from dcam.probe import register_adapter
from dcam.probe.adapters import ShapesAdapter


class LabAdapter(ShapesAdapter):
    def default_layer(self):
        return 1


register_adapter(lambda m: False, LabAdapter, name="lab")
"""


def test_dcam_families_says_how_a_command_reaches_a_registered_adapter(in_folder, capsys):
    # the listing said "--family lab forces it"; a dcam command never imports the module that registers it, so
    # there --family lab is an unknown family: the route a command has is --adapter MODULE:CLASS
    import importlib
    import json
    import sys

    from PIL import Image

    from dcam.probe.adapters import REGISTERED

    (in_folder / "lab_registers.py").write_text(REGISTERS)
    sys.path.insert(0, str(in_folder))  # (restored by in_folder)
    importlib.invalidate_caches()
    importlib.import_module("lab_registers")  # what the user's Python process does
    assert main(["families"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == "lab: registered adapter lab_registers.LabAdapter (register_adapter; family='lab' forces it; on " \
                   "the command line --adapter lab_registers:LabAdapter)"
    # a dcam command in a shell: a new process, where nothing registered it
    del REGISTERED["lab"], sys.modules["lab_registers"]
    Image.new("RGB", (64, 64), (220, 30, 30)).save(in_folder / "red.png")
    assert main(["explain", "red.png", "--family", "lab", "--response", "red", "--out", "a", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("dcam explain: error: --family: unknown family 'lab'")
    offered = line.rsplit("--adapter ", 1)[1].rstrip(")")
    assert main(["explain", "red.png", "--adapter", offered, "--response", "red", "--out", "b", "--quiet"]) == 0
    assert json.loads((in_folder / "b" / "meta.json").read_text())["layer"] == 1  # LabAdapter's block


def test_a_class_without_an_importable_name_is_said_as_module_and_class():
    from dcam.probe.adapters.families import adapter_option_for

    Nested = type("Nested", (SecondBlock,), {"__qualname__": "make.<locals>.Nested"})
    Scripted = type("Scripted", (SecondBlock,), {"__module__": "__main__"})
    for cls in (Nested, Scripted):
        assert adapter_option_for(cls) == "on the command line --adapter MODULE:CLASS, the module that defines it"
