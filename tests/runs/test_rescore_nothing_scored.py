"""A manifest run that scores nothing (no record has a mask, so none has metrics), begun by a dcam from before
scoring 3 (its identity has no "scoring"), resumed by this one: it said "scoring 0 records ... again by this
dcam's rules (scoring 1 -> 3)" and that "the records ... were scored by older rules ...; 0 records scored
again", two lines about the scoring of a run that scores none, on every such folder's first resume. Now it says
nothing of scoring, and the folder records this dcam's rules as before."""
import hashlib
import json

from dcam.cli import main
from dcam.zoo.data import generate_sample

RUN = ["--threads", "1", "--batch-size", "2", "--shard-size", "2"]


def test_a_run_without_metrics_says_nothing_of_scoring_again(tmp_path, capsys):
    generate_sample((0, 2, 1), image_size=64, n_objects=2).image.save(tmp_path / "a.png")
    manifest, out = tmp_path / "m.jsonl", tmp_path / "run"

    def write(ids):
        manifest.write_text("".join(json.dumps({"id": i, "image": str(tmp_path / "a.png"), "response": "a red circle"})
                                    + "\n" for i in ids))

    write(["a"])
    assert main(["run", str(manifest), "--out", str(out), "--quiet", *RUN]) == 0
    info = json.loads((out / "run.json").read_text())
    del info["identity"]["scoring"]  # as session 31's dcam wrote a manifest run's identity (fingerprint: sha256)
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info))
    index = (out / "index.jsonl").read_bytes()
    assert json.loads(index).get("metrics") is None  # (no mask: nothing to score)
    write(["a", "b"])
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(out), *RUN]) == 0
    err = capsys.readouterr().err
    assert "scor" not in err, err
    assert (out / "index.jsonl").read_bytes().startswith(index)  # the done record's line as it was
    info = json.loads((out / "run.json").read_text())
    assert info["identity"]["scoring"] == 3 and info["counts"]["done"] == 2
