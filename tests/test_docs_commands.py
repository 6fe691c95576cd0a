"""Every `dcam COMMAND ...` line that README.md and docs/*.md show a user parses with dcam's own
argument parser, and every option a synopsis line names (`dcam run MANIFEST --out DIR [--model DIR]
...`) is an option of that command, spelled in full. The same for the scripts the docs name
(`python bench/X.py --opt`, `python -m dcam.X --opt`): the script exists and takes the option.
A renamed or dropped option otherwise left the docs telling users to type what dcam refuses."""
import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

from dcam.cli import SUBCOMMANDS, build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
SYNOPSIS = re.compile(r"[\[\]|]|\.\.\.|…")  # [optional], a|b, IMAGE..., "..." for the rest


def doc_commands(name, text):
    """(where, command line, "block" or "inline") of every line of a shell block and every inline code span."""
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if m.group(1) not in SHELL_BLOCKS:
            continue
        first = text[:m.start()].count("\n") + 2  # the block's first line
        joined, start = "", None
        for i, line in enumerate(m.group(2).split("\n")):
            start = first + i if start is None else start
            if line.rstrip().endswith("\\"):  # a continuation: one command with the next line
                joined += line.rstrip()[:-1] + " "
                continue
            found.append((f"{name}:{start}", joined + line, "block"))
            joined, start = "", None
    prose = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    for m in re.finditer(r"`([^`]+)`", prose):
        found.append((f"{name}:{prose[:m.start()].count(chr(10)) + 1}", m.group(1).replace("\n", " "), "inline"))
    return found


def split(line):
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose: not a command
        return []


def dcam_calls(tokens):
    """The argument lists of the `dcam SUBCOMMAND` calls in one line (`dcam`, `python -m dcam`,
    `torchrun ... -m dcam`), each up to a shell operator."""
    calls = []
    for i, tok in enumerate(tokens[:-1]):
        if tok == "dcam" and re.fullmatch(r"[a-z]+", tokens[i + 1]) and (i == 0 or tokens[i - 1] != "import"):
            args = []
            for t in tokens[i + 1:]:
                if t in ("&&", "||", "|", ";", ")"):
                    break
                args.append(t)
            calls.append(args)
    return calls


ALL = [found for name in DOCS for found in doc_commands(name, open(os.path.join(ROOT, name)).read())]
CALLS = [(where, line, kind, args) for where, line, kind in ALL for args in dcam_calls(split(line))]


def subparser(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def options(parser):
    return {s for a in parser._actions for s in a.option_strings}


def test_the_docs_show_dcam_commands():
    # the extraction itself: a change of the docs' layout must not leave this test checking nothing
    assert len(CALLS) > 40
    assert {args[0] for *_, args in CALLS} >= {"explain", "run", "view", "eval", "grounding", "bench"}


def parse_error(parser, args):
    """argparse's one-line complaint about ``args``, or None when they parse."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(args)
    except SystemExit as exc:
        return err.getvalue().strip() or f"exit {exc.code}"
    return None


def positionals(parser):
    return [a.metavar or a.dest for a in parser._actions if not a.option_strings and a.nargs not in ("?", "*")]


@pytest.mark.parametrize("where,line,kind,args", CALLS, ids=[f"{w} {' '.join(a)[:60]}" for w, _, _, a in CALLS])
def test_every_documented_dcam_command_parses(where, line, kind, args):
    assert args[0] in SUBCOMMANDS, f"{where}: `{line}`: dcam has no command {args[0]!r}"
    parser = subparser(args[0])
    bare = [re.sub(r"[\[\]]", "", a) for a in args[1:]]
    unknown = [o for o in (a.split("=")[0] for a in bare if a.startswith("--")) if o not in options(parser)]
    # (spelled in full: argparse would take an abbreviation)
    assert not unknown, f"{where}: `{line}`: dcam {args[0]} has no option {', '.join(unknown)}"
    if len(args) == 1 or SYNOPSIS.search(" ".join(args[1:])):  # the command's name, or a synopsis: checked
        return
    tries = [args[1:]]
    if kind == "inline":  # prose may name an option (`dcam explain --trajectory`, `dcam grounding --json`)
        # without the arguments a whole command needs: those added, the rest must still parse
        tries += [args[1:] + positionals(parser), args[1:-1] + positionals(parser)]
    errors = [parse_error(parser, t) for t in tries]
    assert None in errors, f"{where}: `{line}` does not parse: {errors[0]}"


def script_file(invocation):
    """The file that `python INVOCATION` runs (bench/X.py, or the module of `-m dcam.X`), or None."""
    if invocation[0] != "-m":
        return os.path.join(ROOT, invocation[0])
    path = os.path.join(ROOT, *invocation[1].split("."))
    return next((c for c in (path + ".py", os.path.join(path, "__main__.py")) if os.path.isfile(c)), None)


def help_words(invocation, sub):
    """The options and subcommands that `python INVOCATION [SUB] --help` names (no model, no work;
    seconds: asked only where the script's source does not spell what the docs use)."""
    out = subprocess.run([sys.executable, *invocation, *([sub] if sub else []), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0, f"{' '.join(invocation)} --help: {out.stderr[-2000:]}"
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*|\b[a-z]+\b", out.stdout))


def script_calls():
    """(where, line, invocation, subcommand, options) of every `python bench/X.py ...`, `python -m dcam.X ...`
    and `python -m bench` line; the subcommand is a word that leads the arguments (`measure`), or None."""
    calls = []
    for where, line, _ in ALL:
        tokens = split(line)
        for i, tok in enumerate(tokens[:-1]):
            rest = tokens[i + 1:]
            if tok != "python":
                continue
            if rest[0] == "-m" and len(rest) > 1 and re.fullmatch(r"(dcam\.[\w.]+|bench)", rest[1]):
                invocation, args = ("-m", rest[1]), rest[2:]
            elif rest[0].startswith("bench/"):
                invocation, args = (rest[0],), rest[1:]
            else:
                continue
            sub = args[0] if args and re.fullmatch(r"[a-z]+", args[0]) else None
            calls.append((where, line, invocation, sub, [a.split("=")[0] for a in args if a.startswith("--")]))
    return calls


SCRIPTS = script_calls()


def test_the_docs_show_scripts():
    assert len(SCRIPTS) > 10


@pytest.mark.parametrize("invocation,sub", sorted({(inv, sub) for _, _, inv, sub, _ in SCRIPTS}, key=str),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v or ""))
def test_every_documented_script_takes_its_options(invocation, sub):
    uses = [(where, line, opts) for where, line, inv, s, opts in SCRIPTS if (inv, s) == (invocation, sub)]
    path = script_file(invocation)
    assert path, f"{uses[0][0]}: `{uses[0][1]}`: no such script"
    wanted = {o for _, _, opts in uses for o in opts} | ({sub} if sub else set())
    source = open(path).read()
    found = {w for w in wanted if re.search(rf"""["']{re.escape(w)}["']""", source)}
    if found != wanted:  # defined elsewhere (a shared helper): the script's own --help says
        known = help_words(invocation, None)
        if sub and sub in known | found:
            known |= help_words(invocation, sub)
        found |= wanted & known
    for where, line, opts in uses:
        missing = [w for w in ([sub] if sub else []) + opts if w not in found]
        assert not missing, f"{where}: `{line}`: {' '.join(invocation)} takes no {', '.join(missing)}"
