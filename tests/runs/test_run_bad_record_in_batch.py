"""A record that fails inside its batch after the batch's generation (a target the generated response
lacks) costs no second pass: the batch's other records keep their generations, and the bad one's
reason is what explaining it alone says. ``dcam run`` and ``dcam explain IMAGE...`` redid such a
batch one record at a time, generating every response again."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import dcam
from dcam.cli import main
from dcam.errors import InputError, one_line
from dcam.probe.adapters.shapes import ShapesAdapter

N, BAD = 4, 2


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N):
        paths.append(str(d / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture
def generations(monkeypatch):
    calls = []
    generate = ShapesAdapter.generate

    def counted(self, *args, **kwargs):
        calls.append(1)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(ShapesAdapter, "generate", counted)
    return calls


def _alone_error(path, targets):
    with pytest.raises(InputError) as err:
        dcam.Explainer(*dcam.zoo.load_default()).explain(path, targets=targets)
    return one_line(str(err.value))


def test_run_keeps_the_batch_and_generates_each_response_once(images, generations, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "image": p, **({"targets": ["zebra"]} if i == BAD else {})})
                                + "\n" for i, p in enumerate(images)))
    rc = main(["run", str(manifest), "--out", str(tmp_path / "run"), "--batch-size", str(N), "--threads", "1",
               "--quiet"])
    assert rc == 0
    assert len(generations) == N  # one batch, each response generated once (the redo generated N more)
    errors = [json.loads(line) for line in open(tmp_path / "run" / "errors.jsonl")]
    assert [e["id"] for e in errors] == [f"r{BAD}"]
    assert errors[0]["reason"] == _alone_error(images[BAD], ["zebra"])
    explainer = dcam.Explainer(*dcam.zoo.load_default())
    run = list(dcam.load_run(str(tmp_path / "run")))
    assert [r.id for r in run] == [f"r{i}" for i in range(N) if i != BAD]
    for r in run:
        direct = explainer.explain(images[int(r.id[1:])])
        assert r.tokens == direct.tokens
        torch.testing.assert_close(r.maps, direct.maps, rtol=0, atol=1e-4)  # (batched rounding, ~1e-5)


def test_explain_of_several_images_keeps_the_others_and_says_the_error_as_alone(generations, tmp_path, capsys):
    from dcam.zoo.data import ShapesDataset

    # the bundled model answers "a yellow square and a blue triangle and a blue circle", "a blue square" and
    # "a green circle" for these scenes: --tokens circle is not in the second answer
    paths = []
    for i in (0, 3, 2):
        paths.append(str(tmp_path / f"scene{i}.png"))
        ShapesDataset(split="test", size=i + 1, image_size=64, cache=False)[i].image.save(paths[-1])
    rc = main(["explain", paths[1], "--tokens", "circle", "--out", str(tmp_path / "alone"), "--quiet"])
    alone = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(alone) == 1 and alone[0].startswith("dcam explain: error: --tokens: ")
    del generations[:]
    rc = main(["explain", *paths, "--tokens", "circle", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert len(generations) == 3  # each answer generated once (the redo one at a time generated 3 more)
    assert capsys.readouterr().err.splitlines() == [f"dcam explain: error: {paths[1]!r}: "
                                                    + alone[0][len("dcam explain: error: "):]]
    listing = json.load(open(tmp_path / "o" / "images.json"))
    assert [x.get("folder") for x in listing] == ["scene0", None, "scene2"]
