"""dcam's own warnings on the command line: one line, ``dcam: warning: ...``. They printed through Python's
format, a file and line number before the message (the `dcam` script's, as warn_at_caller names the first frame
outside dcam) and the line of source under it (``sys.exit(main())``). Another library's warning (here the
user's adapter module's) keeps Python's format: nothing of it is hidden."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: the `dcam` console script's way in
SCRIPT = "import sys\nfrom dcam.cli import main\nsys.exit(main())\n"

#: a user's adapter that says it pads but hands the model no keep mask (tests/families/test_padding_check.py):
#: dcam's padding check warns about it; its module warns of its own when imported
DROPS_MASK = '''import warnings

from dcam.probe.adapters.shapes import ShapesAdapter
from dcam.probe.padding import PAD_MASK

warnings.warn("lab weights are a draft")


class DropsMask(ShapesAdapter):
    def _embeddings(self, input_ids, model_inputs):
        return super()._embeddings(input_ids, {k: v for k, v in model_inputs.items() if k != PAD_MASK})
'''


def test_a_dcam_warning_is_one_line_and_another_librarys_keeps_its_format(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "drops_mask.py").write_text(DROPS_MASK)
    (tmp_path / "dcam_script.py").write_text(SCRIPT)
    # two layouts (other image sizes, prompts and response lengths): dcam run pads them together, checked once
    records = [("a", (40, 72), None, "a red circle"), ("b", (60, 30), "name the objects in this image",
                                                          "a blue square and")]
    with open(work / "m.jsonl", "w") as f:
        for s, (rid, (h, w), prompt, response) in enumerate(records):
            Image.fromarray(np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                work / f"{rid}.png")
            f.write(json.dumps({"id": rid, "image": f"{rid}.png", "response": response,
                                **({"prompt": prompt} if prompt else {})}) + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(tmp_path / "dcam_script.py"), "run", "m.jsonl", "--out", "out",
                        "--adapter", "drops_mask:DropsMask", "--quiet"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    # the user's module's warning, as Python shows it: file and line, then the line of source
    assert lines[:2] == [f"{work / 'drops_mask.py'}:6: UserWarning: lab weights are a draft",
                         '  warnings.warn("lab weights are a draft")']
    # dcam's: one line
    assert lines[2:] == ["dcam: warning: DropsMask sets pads_batches, but a padded row's logits differ from the "
                         f"example's alone by up to {_difference(lines[2])} (does its forward_logits() hand "
                         "model_inputs['attention_mask'] to the model?); examples of other layouts are explained "
                         "apart, one forward per layout"]


def _difference(line: str) -> str:
    """The measured difference the warning quotes (the padding check's, of this model's logits)."""
    return line.split("by up to ", 1)[1].split(" ", 1)[0] if "by up to " in line else "?"
