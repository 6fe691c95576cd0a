"""The measurement scores a generated caption's words against the objects
they name: the reference labels when the caption is the reference, else each
"<colour> <shape>" pair that names exactly one object."""
import numpy as np
from PIL import Image

from dcam.trajectory.report import object_labels
from dcam.zoo.data import Sample


def sample():
    objects = [dict(colour="red", shape="circle", label=1), dict(colour="blue", shape="square", label=2),
               dict(colour="blue", shape="circle", label=3)]
    caption = "a red circle and a blue square and a blue circle"
    return Sample(image=Image.new("RGB", (8, 8)), caption=caption, words=caption.split(),
                  word_labels=[0, 1, 1, 0, 0, 2, 2, 0, 0, 3, 3], mask=np.zeros((8, 8), np.int64), objects=objects)


def test_the_reference_caption_keeps_its_labels():
    s = sample()
    assert object_labels(s, s.words) == {1: 1, 2: 1, 5: 2, 6: 2, 9: 3, 10: 3}


def test_a_different_caption_is_aligned_by_its_phrases():
    s = sample()
    # order changed, one phrase names no object of the image (a red square), one word left over
    words = "a blue circle and a red square and a red circle blue".split()
    assert object_labels(s, words) == {1: 3, 2: 3, 9: 1, 10: 1}


def test_the_report_refuses_its_bad_options_in_one_line_before_measuring(tmp_path, capsys):
    # --json into a missing folder failed after the whole measurement (results lost); --layer 99 and an
    # unknown --picture-word were InputError tracebacks, --threads 0 a RuntimeError, --picture-sample -1
    # silently the last image
    import pytest

    from dcam.trajectory.report import main

    prog = "python -m dcam.trajectory.report: error: "
    for argv, line in ((["--n", "1", "--json", str(tmp_path / "no" / "x.json")],
                        f"--json: the folder '{tmp_path / 'no'}' does not exist"),
                       (["--n", "0", "--picture", str(tmp_path / "no")], f"--picture: '{tmp_path / 'no'}' is not an "
                                                                        "existing folder"),
                       (["--n", "1", "--layer", "99"], "--layer: layer 99 out of range for a model with 4 blocks")):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == prog + line
    for argv, line in ((["--n", "1", "--threads", "0"], "--threads must be >= 1, got 0"),
                       (["--n", "0", "--picture", str(tmp_path), "--picture-sample", "-1"],
                        "--picture-sample must be >= 0, got -1")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == prog + line
    assert list(tmp_path.iterdir()) == []
    # an existing --json file is replaced only with --overwrite (the file was replaced without a word)
    (tmp_path / "mine.png").write_bytes(b"\x89PNG keep")
    assert main(["--n", "1", "--json", str(tmp_path / "mine.png")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == prog + (
        f"--json: {str(tmp_path / 'mine.png')!r} exists; choose a new file or pass --overwrite (which replaces it)")
    assert (tmp_path / "mine.png").read_bytes() == b"\x89PNG keep"
