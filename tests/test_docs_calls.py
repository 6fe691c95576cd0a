"""Every call of a dcam function that README.md and docs/*.md write inline (`dcam.models.load_model(DIR,
device, trust_remote_code, dtype)`, or `setup(device)` beside `from dcam.runs.distributed import setup`)
binds to that function's signature: the arguments it shows are arguments the function takes, and none it
needs is left out. RUNS.md told users to call `setup()`, a TypeError: it takes the device."""
import ast
import importlib
import inspect
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md") and f != "RESULTS.md")  # (RESULTS.md: records of past sessions)


def resolve(dotted, imports):
    """The object a dotted name in the docs stands for: `dcam.X.f`, or a name a nearby
    `from dcam.X import f` brings in; None for anything else (torch's, the authors' code)."""
    import dcam

    head = dotted.split(".")[0]
    if head in imports:
        dotted = imports[head] + "." + dotted
    elif head != "dcam" and head in getattr(dcam, "__all__", ()):  # Explainer, CamConfig, load_run, ...
        dotted = "dcam." + dotted
    elif head != "dcam":
        return None
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        return obj
    return None


def inline_calls():
    """(where, span, callee, call node, the paragraph's imports) of every inline span that is one Python call."""
    found = []
    for name in DOCS:
        text = open(os.path.join(ROOT, name)).read()
        prose = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
        for paragraph in re.finditer(r"(?:.+\n?)+", prose):
            spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", paragraph.group(0))]
            imports = {n.strip(): m for s in spans for m, ns in re.findall(r"^from (dcam[\w.]*) import ([\w, ]+)$", s)
                       for n in ns.split(",")}
            for m in re.finditer(r"`([^`]+)`", paragraph.group(0)):
                span = m.group(1).replace("\n", " ")
                try:
                    node = ast.parse(span, mode="eval").body
                except SyntaxError:
                    continue
                if not isinstance(node, ast.Call):
                    continue
                callee = ast.unparse(node.func)
                line = prose[:paragraph.start() + m.start()].count("\n") + 1
                found.append((f"{name}:{line}", span, callee, node, imports))
    return found


CALLS = [c for c in inline_calls() if callable(resolve(c[2], c[4]))]


def test_the_docs_show_dcam_calls():
    assert len(CALLS) >= 8  # the extraction itself still finds them


@pytest.mark.parametrize("where,span,callee,node,imports", CALLS, ids=[f"{c[0]} {c[1][:50]}" for c in CALLS])
def test_every_documented_call_binds(where, span, callee, node, imports):
    target = resolve(callee, imports)
    sig = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    if inspect.isclass(target):
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # (self)
    keywords = {k.arg: None for k in node.keywords if k.arg}
    if keywords and (not node.args or any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in node.args)):
        # `Explainer(layer=N)`, `explain(..., targets="tokens")`: a mention of those keywords
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        unknown = [k for k in keywords if k not in sig.parameters and not takes_any]
        assert not unknown, f"{where}: `{span}`: {callee} takes no {', '.join(unknown)}"
        return
    try:
        sig.bind(*[None] * len(node.args), **keywords)
    except TypeError as exc:
        pytest.fail(f"{where}: `{span}`: {callee}{sig}: {exc}")
