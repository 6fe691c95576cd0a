"""README's dcam.Explainer(...) line names every keyword of Explainer, with its default."""
import inspect
import os
import re

from dcam import Explainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_explainer_signature_is_explainers():
    # batch_slack= was missing: users of the README did not learn of the knob
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    shown = re.search(r"`dcam\.Explainer\((.*?)\)`", text, re.S).group(1)
    documented = [p.strip() for p in shown.replace("\n", " ").split(",")]
    params = [p for p in inspect.signature(Explainer.__init__).parameters.values() if p.name != "self"]
    assert [d.split("=")[0] for d in documented] == [("**" if p.kind is p.VAR_KEYWORD else "") + p.name
                                                     for p in params]
    defaults = {p.name: p.default for p in params}
    for d in documented:  # (model and processor are shown without their None)
        if "=" in d:
            name, value = d.split("=")
            assert value == repr(defaults[name]).replace("'", '"'), name
