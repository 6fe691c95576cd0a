"""dcam run --trajectory: each record's generation traced step by step, stored
in its shard and read back by load_run (the viewer then shows a step slider)."""
import json

import torch

import dcam
from dcam.cli import main
from dcam.explain import Explainer
from dcam.trajectory import explain_trajectory


def test_run_stores_trajectories(bundled, tmp_path, capsys):
    from dcam.zoo.data import generate_sample

    lines = []
    for i in range(2):
        p = tmp_path / f"g{i}.png"
        generate_sample((0, 2, 40 + i), image_size=64).image.save(p)
        lines.append({"id": f"g{i}", "image": str(p)})
    lines.append({"id": "given", "image": str(tmp_path / "g0.png"), "response": "a red circle"})
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = tmp_path / "run"
    assert main(["run", str(man), "--out", str(out), "--trajectory", "--steps", "4", "--quiet",
                 "--threads", "1"]) == 0
    recs = {r.id: r for r in dcam.load_run(str(out))}
    assert set(recs) == {"g0", "g1"}  # a record with a given response cannot be traced: in errors.jsonl
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert [e["id"] for e in errors] == ["given"] and "trajectory" in errors[0]["reason"]
    want = explain_trajectory(Explainer(*bundled), str(tmp_path / "g0.png"), steps=4)
    got = recs["g0"].trajectory
    assert tuple(got.shape) == tuple(want.maps.shape)
    torch.testing.assert_close(got, want.maps, atol=1e-5, rtol=0)
