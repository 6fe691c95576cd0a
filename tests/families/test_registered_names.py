"""Adapters registered under a name (``register_adapter(..., name=...)``) in ``dcam families --markdown``."""
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
            "register_adapter's predicate; family='second-block' and --family second-block force it",
            own, own, own, own, own, own, own]
    assert lines[-1] == "| " + " | ".join(want) + " |"
    assert lines[-1].count("|") == lines[0].count("|")  # one cell under each column
