"""`dcam --help`: every option has help text and shows its default, --cam lists
the CamConfig fields with their ranges, descriptions are plain text, and
building the help imports nothing heavy (no torch)."""
import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

from dcam.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction, argparse._VersionAction)


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def _help_of(parser, action) -> str:
    """The help text of one option as ``--help`` prints it (one line)."""
    text = parser.format_help()
    opt = action.option_strings[-1]
    block = re.search(rf"^  (?:-\w, )?{re.escape(opt)}\b.*?(?=^  -|\Z)", text, re.S | re.M)
    assert block, opt
    return " ".join(block.group(0).split())


#: Every subcommand (run, view and families were left out, and view --limit showed no default).
CHECKED = ("demo", "explain", "eval", "grounding", "bench", "backends", "run", "view", "families")


def test_every_option_has_help_and_shows_its_default():
    _, subs = _subparsers()
    assert set(subs) >= set(CHECKED)
    missing = []
    for name, p in ((n, subs[n]) for n in CHECKED):
        for action in p._actions:
            if (not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, FLAGS)
                    or action.required):  # run --out: a required option has no default to show
                continue
            text = _help_of(p, action)
            if not action.help or not action.help.strip():
                missing.append(f"{name} {action.option_strings[-1]}: no help")
            elif "default:" not in text:
                missing.append(f"{name} {action.option_strings[-1]}: no default shown")
            elif action.default is not None and not isinstance(action.default, (list, tuple)):
                if f"(default: {action.default})" not in text:
                    missing.append(f"{name} {action.option_strings[-1]}: default {action.default!r} not shown")
    assert missing == []


def test_cam_lists_every_field_with_its_range():
    from dcam.ops.config import CamConfig

    _, subs = _subparsers()
    for name in ("explain", "demo", "eval", "grounding"):
        cam = next(a for a in subs[name]._actions if "--cam" in a.option_strings)
        text = _help_of(subs[name], cam)
        for f in dataclasses.fields(CamConfig):
            assert re.search(rf"\b{f.name}: \S", text), (name, f.name)
        assert "cba_floor: number in [0, 1]" in text and "dacg_mean_low: number in [0, 1], <= dacg_mean_high" in text


def test_descriptions_are_plain_text():
    parser, subs = _subparsers()
    for name, p in [("dcam", parser)] + list(subs.items()):
        text = p.format_help()
        for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", "**"):
            assert markup not in text, (name, markup)


def test_help_imports_no_torch():
    code = ("import sys, io, contextlib\nfrom dcam.cli import main\nout = {}\n"
            "for argv in (['--help'], ['explain', '--help'], ['eval', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
            "        rc = main(argv)\n"
            "    out[argv[0]] = (rc, len(buf.getvalue()))\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'transformers', 'safetensors') if m in sys.modules)\n"
            "import json; print(json.dumps({'heavy': heavy, 'out': out}))\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["heavy"] == []
    assert all(rc == 0 and n > 500 for rc, n in got["out"].values())


def test_bench_backends_help_says_the_reference_is_always_timed(monkeypatch, capsys):
    # "a subset of the available backends", yet --backends cpp timed torch too (the ratios' baseline)
    from dcam.cli import main
    from dcam.ops import bench
    from dcam.ops.backends import available_backends

    _, subs = _subparsers()
    action = next(a for a in subs["bench"]._actions if "--backends" in a.option_strings)
    assert "the torch reference is always timed too, as the baseline of the ratios" in _help_of(subs["bench"], action)
    others = [b for b in available_backends() if b != "torch"]
    if not others:
        return
    monkeypatch.setattr(bench, "cases", lambda device, quick: [bench.Case("toy", lambda b: (lambda: None), 4, 0)])
    monkeypatch.setattr(bench, "time_call", lambda fn, **k: 1.0)
    seen = []
    monkeypatch.setattr(bench, "format_table", lambda result: seen.extend(r["backend"] for r in result["rows"]) or "")
    assert main(["bench", "--device", "cpu", "--backends", others[0]]) == 0
    assert seen == ["torch", others[0]]


def test_view_help_names_every_view_and_says_the_model_decides():
    # the help said "base, highres or all": the bundled model has only default and all, and default was in
    # no help. The views a model can have: "default" and "all" everywhere, plus its adapter's image_views
    from dcam.probe import adapters

    declared = {v for cls in vars(adapters).values() if isinstance(cls, type)
                for v in (getattr(cls, "image_views", None) or ())}
    assert {"highres", "base"} <= declared
    _, subs = _subparsers()
    for name in ("explain", "demo", "run"):
        action = next(a for a in subs[name]._actions if "--view" in a.option_strings)
        text = _help_of(subs[name], action)
        assert "the model decides which exist" in text, name
        for view in sorted(declared | {"default", "all"}):
            assert re.search(rf"\b{view}\b", text), (name, view)


def test_profile_help_says_quiet_hides_the_stage_summary():
    # the help promised to "print each stage's own time", yet the line goes to stderr through --quiet's filter
    _, subs = _subparsers()
    for name in ("explain", "run", "eval", "grounding"):
        action = next(a for a in subs[name]._actions if "--profile" in a.option_strings)
        assert "on stderr, unless --quiet" in _help_of(subs[name], action), name
