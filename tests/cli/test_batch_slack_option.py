"""--batch-slack on dcam explain and dcam run: the Explainer's batch_slack= (how much padded work a
batch of several images may waste; inf: one padded batch), refused on one line unless a number >= 0."""
import math
import subprocess
import sys

import pytest

from dcam.cli import build_parser
from dcam.cli.common import explainer_for
from dcam.testing import tiny_toy


@pytest.mark.parametrize("command", [["explain", "x.png"], ["run", "m.jsonl", "--out", "o"]])
@pytest.mark.parametrize("value", ["-1", "nan", "x", ""])
def test_a_bad_slack_exits_2_on_one_line_naming_the_option(command, value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dcam", *command, "--batch-slack", value], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == f"dcam {command[0]}: error: argument --batch-slack: expected a number >= 0 or inf, got " \
                        f"{value!r}"
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", [["explain", "x.png"], ["run", "m.jsonl", "--out", "o"]])
@pytest.mark.parametrize("given, want", [(None, 0.25), ("inf", math.inf), ("0", 0.0), ("1.5", 1.5)])
def test_the_slack_reaches_the_explainer(command, given, want):
    args = build_parser().parse_args(command + ([] if given is None else ["--batch-slack", given]))
    assert explainer_for(*tiny_toy(), args).batch_slack == want
