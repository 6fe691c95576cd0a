"""docs/FAMILIES.md's "Bring your own dMLLM" example, run as written: a
custom model and its ~60-line adapter, registered, explained and generated."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_documented_example_runs():
    from dcam.probe.adapters import ADAPTERS

    doc = (ROOT / "docs" / "FAMILIES.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "class MyAdapter" in b]
    assert len(blocks) == 1
    adapter_lines = blocks[0][blocks[0].index("class MyAdapter"):blocks[0].index("register_adapter(")]
    assert 40 <= len(adapter_lines.strip().splitlines()) <= 80  # "about 60 lines"
    before = list(ADAPTERS)
    space = {}
    try:
        exec(compile(blocks[0], "FAMILIES.md", "exec"), space)
        e = space["e"]
        assert e.steps == 4 and e.steps_source == "generation" and len(e.response_ids) == 8
        model = space["model"]
        import dcam

        assert type(dcam.Explainer(model).adapter).__name__ == "MyAdapter"
    finally:
        ADAPTERS[:] = before  # the example's registration must not leak into other tests
