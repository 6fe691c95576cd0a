"""``dcam run --view default`` is the run without ``--view``: it recorded view "default" in
run.json, so a resume without ``--view`` was refused ("differs in: view")."""
import json

from PIL import Image

from dcam.cli import main


def test_view_default_is_the_run_without_a_view(tmp_path, capsys):
    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp_path / "one.png")
    Image.new("RGB", (8, 8), (40, 40, 200)).save(tmp_path / "two.png")
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "a", "image": "one.png", "response": "red"}) + "\n")
    out = str(tmp_path / "out")
    assert main(["run", str(p), "--out", out, "--view", "default", "--quiet"]) == 0
    with open(tmp_path / "out" / "run.json") as f:
        assert json.load(f)["identity"]["view"] is None
    # one more record: the same run resumed without --view, the first record kept
    p.write_text(p.read_text() + json.dumps({"id": "b", "image": "two.png", "response": "blue"}) + "\n")
    assert main(["run", str(p), "--out", out, "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("2 of 2 records explained") and "0 failed" in last and "this session 1 records" in last
