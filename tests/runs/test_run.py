"""`dcam run` on one process: what lands in the folder, checked against the
explainer called directly and metrics computed here; resuming, refusing a
changed config, crash debris; `dcam.load_run` reads lazily."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dcam
from dcam.cli import main
from dcam.errors import InputError

from dcam.words import FUNCTION_WORDS

GOOD = ["s0", "s1", "s2", "s3", "gen4", "s5", "dict6", "s7"]
BAD = {"missing-image": "no such file", "corrupt-image": "cannot read", "bad-mask": "mask:",
       "bad-target": "not in the response", "bad-label-word": "not in the response"}
RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def explainer(bundled):
    return dcam.Explainer(*bundled)


def test_folder_holds_every_good_record_once_and_every_bad_one_in_errors(reference_run, run_manifest):
    index = _lines(os.path.join(reference_run, "index.jsonl"))
    assert [e["id"] for e in index] == [i for i in run_manifest["order"] if i in GOOD]  # source order
    errors = {e["id"]: e for e in _lines(os.path.join(reference_run, "errors.jsonl"))}
    assert set(errors) == set(BAD)
    for rid, piece in BAD.items():
        assert piece in errors[rid]["reason"], errors[rid]
        assert errors[rid]["where"] == f"line {run_manifest['order'].index(rid) + 1}"
    assert not os.listdir(os.path.join(reference_run, "index"))  # parts merged
    assert not os.listdir(os.path.join(reference_run, "errors"))
    info = json.load(open(os.path.join(reference_run, "run.json")))
    words = sum(len(e["tokens"]) for e in index)
    assert info["status"] == "complete" and info["counts"] == {"records": 13, "done": 8, "errors": 5,
                                                               "words": words, "index_records": 8}
    assert info["session"]["records"] == 8 and info["session"]["words"] == words and info["session"]["errors"] == 5
    t = info["throughput"]
    assert t["images_per_s"] == pytest.approx(8 / info["session"]["seconds"])
    assert t["words_per_s"] == pytest.approx(words / info["session"]["seconds"]) and t["processes"] == 1
    assert info["method"] == "diffusion-cam" and info["model"]["name"] == "bundled"
    assert set(info["versions"]) >= {"dcam", "torch", "python"} and len(info["fingerprint"]) == 64
    assert info["options"]["batch_size"] == 2 and info["options"]["world_size"] == 1


def test_maps_are_the_explainers_maps_under_the_right_id(reference_run, run_manifest, explainer):
    run = dcam.load_run(reference_run)
    folder = run_manifest["folder"]
    seen = 0
    for r in run:
        e = run_manifest["good"][r.id]
        direct = explainer.explain(os.path.join(folder, e["image"]), prompt=e.get("prompt"),
                                   response=e.get("response"), targets=e.get("targets", "all"))
        assert r.tokens == direct.tokens and r.response == direct.response and r.steps == direct.steps
        assert r.maps.dtype == torch.float32 and r.maps.shape == direct.maps.shape
        # batched forwards (the run) and one-image forwards (here) round differently, by ~1e-5
        torch.testing.assert_close(r.maps, direct.maps, rtol=0, atol=1e-4)
        assert set(r.stats) == set(direct.stats)
        for k, v in direct.stats.items():
            torch.testing.assert_close(r.stats[k].float(), v.float(), rtol=0, atol=1e-4)
        seen += 1
    assert seen == 8
    assert [r.tokens for r in run.records(["s3"])][0] == run_manifest["good"]["s3"]["targets"]
    # a text was taken as its characters (nothing matched, silently)
    with pytest.raises(InputError, match=r"^ids must be a list of record ids, got the text 's3' \(give \['s3'\]\)$"):
        list(run.records("s3"))


def _truth(entry, manifest_entry, mask):
    """(object word maps' labels, function word indices) of a record, worked out here."""
    words = entry["response"].split()
    labels = manifest_entry["labels"]
    if isinstance(labels, dict):
        labels = [labels.get(w, 0) for w in words]
    obj = [(i, labels[i]) for i in range(len(words)) if labels[i]]
    fun = [i for i in range(len(words)) if not labels[i] and words[i] in FUNCTION_WORDS]
    return words, obj, fun


def test_metrics_match_an_independent_computation(reference_run, run_manifest):
    from dcam.eval.metrics import function_metrics, object_metrics

    vals = {"obj_iou": [], "contrast": [], "concentration": [], "f3": [], "func_iou": []}
    left_out = 0
    for r in dcam.load_run(reference_run):
        m = run_manifest["good"][r.id]
        if "mask" not in m:
            assert r.metrics is None
            continue
        mask = np.asarray(Image.open(os.path.join(run_manifest["folder"], m["mask"]))).astype(np.int64)
        words, obj, fun = _truth(r.entry, m, mask)
        maps = {n: r.maps[k] for k, n in enumerate(r.entry["word_numbers"])}  # word-level tokens: item = word
        # labelled words without a map: all of them words of the response its targets left out (s3's); they
        # were counted as "not aligned to a response token"
        without = len([i for i, _ in obj if i not in maps] + [i for i in fun if i not in maps])
        assert (r.metrics["unaligned"], r.metrics["not_targeted"]) == (0, without)
        assert (without > 0) == ("targets" in m)
        left_out += without
        obj = [(i, l) for i, l in obj if i in maps]
        fun = [i for i in fun if i in maps]
        o = object_metrics(torch.stack([maps[i] for i, _ in obj]), [np.where(mask == l, mask, 0) for _, l in obj])
        assert r.metrics["object"]["words"] == [i for i, _ in obj]
        for k in ("obj_iou", "contrast", "concentration", "f3"):
            np.testing.assert_allclose(r.metrics["object"][k], o[k].numpy(), rtol=1e-6)
            vals[k] += o[k].tolist()
        if fun:
            f = function_metrics(torch.stack([maps[i] for i in fun]), mask.shape)
            np.testing.assert_allclose(r.metrics["function"]["func_iou"], f["func_iou"].numpy(), rtol=1e-6)
            vals["func_iou"] += f["func_iou"].tolist()
    report = json.load(open(os.path.join(reference_run, "metrics.json")))
    s = report["summary"]
    iou, con, conc = (float(np.mean(vals[k])) for k in ("obj_iou", "contrast", "concentration"))
    assert s["obj_iou"] == pytest.approx(iou) and s["contrast"] == pytest.approx(con)
    assert s["concentration"] == pytest.approx(conc)
    assert s["f3"] == pytest.approx(3 / (1 / iou + 1 / min(con / 20, 1) + 1 / conc))
    assert s["f3_per_map"] == pytest.approx(float(np.mean(vals["f3"])))
    assert s["func_iou"] == pytest.approx(float(np.mean(vals["func_iou"])))
    assert s["n_obj"] == len(vals["obj_iou"]) and report["records"] == 7
    table = open(os.path.join(reference_run, "metrics.md")).read()
    assert report["unaligned_words"] == 0 and report["not_targeted_words"] == left_out
    assert "Words not aligned to a response token: 0.\n" in table
    assert f"Words of the response its record's targets left out (no map, not scored): {left_out}.\n" in table
    assert f"| Diffusion-CAM | {100 * iou:.2f} | {con:.2f}x | {100 * conc:.2f} |" in table


def test_rerun_resumes_with_nothing_to_do(reference_run, run_manifest, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = sorted(os.listdir(os.path.join(out, "shards")))
    index = open(os.path.join(out, "index.jsonl")).read()
    capsys.readouterr()
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0
    out_text = capsys.readouterr().out
    # no rate: the one in run.json is the last session's, measured on its process count
    # the 5 failed records are tried again (their files may have been fixed) and fail again
    assert "8 of 13 records explained" in out_text and "this session explained none (5 failed)" in out_text
    assert "images/s" not in out_text
    assert sorted(os.listdir(os.path.join(out, "shards"))) == before
    assert open(os.path.join(out, "index.jsonl")).read() == index
    info = json.load(open(os.path.join(out, "run.json")))
    old = json.load(open(os.path.join(reference_run, "run.json")))
    assert info["counts"] == old["counts"] and info["session"]["records"] == 0
    assert info["throughput"] == old["throughput"]  # the last measure is kept


def test_changed_config_is_refused_unless_overwrite(reference_run, run_manifest, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    capsys.readouterr()
    assert main(["run", run_manifest["path"], "--out", out, "--cam", "akd=false", *RUN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dcam run: error: --out:") and "config.akd" in err[0]
    assert main(["run", run_manifest["path"], "--out", out, "--method", "grad-cam", *RUN_ARGS]) == 2
    assert "method" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["run", run_manifest["path"], "--out", str(other), *RUN_ARGS]) == 2
    assert "holds no dcam run" in capsys.readouterr().err and (other / "notes.txt").exists()
    assert os.listdir(other) == ["notes.txt"]  # left as found: the run's .lock was left behind in it


def test_resume_with_overlays_added_is_refused(reference_run, run_manifest, tmp_path, capsys):
    """--overlays is not part of what the maps are, but a resume that adds it wrote overlays for
    its own records only (here: none left), silently; now it says so and writes nothing."""
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    capsys.readouterr()
    assert main(["run", run_manifest["path"], "--out", out, "--overlays", *RUN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dcam run: error: --overlays: the run in {out!r} was started without overlays and its records "
                   "done have none; resume it without --overlays (dcam view shows every map), or pass --overwrite"]
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before


def test_overwrite_never_deletes_what_the_run_reads(run_manifest, tmp_path, capsys):
    """--overwrite empties --out: an --out holding the manifest, one of its images, a folder
    source or the model's files deleted them (then a traceback, or every record 'no such
    file'). Each is refused in one line, exit 2, every file left in place."""
    data = tmp_path / "data"
    shutil.copytree(run_manifest["folder"], data)
    manifest = data / os.path.basename(run_manifest["path"])
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    capsys.readouterr()
    outside = tmp_path / "outside.jsonl"  # a manifest elsewhere, whose images --out holds
    outside.write_text(json.dumps({"id": "a", "image": str(data / "img" / "s2.png")}) + "\n")
    folder_source = data / "img"
    for src, out, what in ((manifest, data, "the manifest"), (outside, data, "an image of record 'a'"),
                           (folder_source, data, "the source (folder)")):
        assert main(["run", str(src), "--out", str(out), "--overwrite", *RUN_ARGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"dcam run: error: --out: {str(out)!r} holds {what} "), err
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    # the model's folder, for dcam run and dcam explain alike
    from dcam.zoo import WEIGHTS_DIR

    model = tmp_path / "model"
    shutil.copytree(WEIGHTS_DIR, model)
    files = sorted(os.listdir(model))
    image = str(data / "img" / "s2.png")
    assert main(["run", str(manifest), "--model", str(model), "--out", str(model), "--overwrite", *RUN_ARGS]) == 2
    assert f"holds the model {str(model)!r}" in capsys.readouterr().err
    assert main(["explain", image, "--model", str(model), "--out", str(model), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out: {str(model)!r} holds the model {str(model)!r}" in err[0]
    assert sorted(os.listdir(model)) == files


def test_overwrite_never_deletes_through_a_link_the_working_folder_or_the_bundled_model(
        run_manifest, tmp_path, capsys, monkeypatch):
    """--out through a symbolic link to the images' folder, --out . (or ..) and --out over the
    bundled model's folder (no --model) each emptied what they hold, exit 0."""
    import dcam.zoo

    data = tmp_path / "data"
    shutil.copytree(run_manifest["folder"], data)
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": str(data / "img" / "s2.png")}) + "\n")
    (tmp_path / "link").symlink_to(data)
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "thesis.tex").write_text("years of work")
    weights = tmp_path / "weights"  # the bundled model's folder, a copy (a failure must not delete the real one)
    shutil.copytree(dcam.zoo.WEIGHTS_DIR, weights)
    monkeypatch.setattr(dcam.zoo, "WEIGHTS_DIR", str(weights))
    before = {d: sorted(str(p.relative_to(d)) for p in d.rglob("*")) for d in (data, work, weights)}
    capsys.readouterr()
    for cwd, out, said in ((tmp_path, "link", f"holds an image of record 'a' {str(data / 'img' / 's2.png')!r}"),
                           (work, ".", "holds the current folder"), (work / "sub", "..", "holds the current folder"),
                           (tmp_path, str(weights), f"holds the model {str(weights)!r}")):
        monkeypatch.chdir(cwd)
        assert main(["run", str(manifest), "--out", out, "--overwrite", *RUN_ARGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dcam run: error: --out: ") and said in err[0], err
    assert {d: sorted(str(p.relative_to(d)) for p in d.rglob("*")) for d in (data, work, weights)} == before


def test_a_split_is_refused_for_a_source_without_splits(run_manifest, tmp_path, capsys):
    # --split nonsense with a manifest or a folder of images was taken and ignored (exit 0)
    for src, kind in ((run_manifest["path"], "manifest"), (os.path.join(run_manifest["folder"], "img"), "folder")):
        out = tmp_path / kind
        assert main(["run", src, "--out", str(out), "--split", "nonsense", *RUN_ARGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dcam run: error: --split: a {kind} source has no splits (only a COCO data folder has them); "
                       "leave --split out"]
        assert not out.exists()


def test_an_empty_prompt_is_refused_before_anything_is_written(run_manifest, tmp_path, capsys):
    # --prompt "" sent every record to errors.jsonl (exit 0) and fingerprinted the folder with it
    for prompt in ("", "   "):
        out = tmp_path / "out"
        assert main(["run", run_manifest["path"], "--out", str(out), "--prompt", prompt, *RUN_ARGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dcam run: error: --prompt: must be a non-empty text or None, got {prompt!r}"]
        assert not out.exists()


def test_overwrite_starts_over_and_overlays_are_the_explanations_overlays(run_manifest, tmp_path, explainer):
    folder = run_manifest["folder"]
    small = tmp_path / "small.jsonl"
    entries = [run_manifest["good"]["s2"], run_manifest["good"]["s3"]]
    small.write_text("".join(json.dumps(dict(e, image=os.path.join(folder, e["image"]),
                                             mask=os.path.join(folder, e["mask"]))) + "\n" for e in entries))
    out = str(tmp_path / "run")
    os.makedirs(out)
    open(os.path.join(out, "old.txt"), "w").write("x")
    assert main(["run", str(small), "--out", out, "--overwrite", "--overlays", "--cam", "akd=false",
                 "--memory-budget", "2GB", *RUN_ARGS]) == 0
    assert not os.path.exists(os.path.join(out, "old.txt"))
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["options"]["memory_budget"] == 2 * 10 ** 9 and info["config"]["akd"] is False
    from dcam.render.overlay import overlay

    exp = dcam.Explainer(explainer.model, explainer.processor, config=explainer.config.replace(akd=False))
    for r in dcam.load_run(out):
        m = run_manifest["good"][r.id]
        e = exp.explain(os.path.join(folder, m["image"]), response=m["response"], targets=m.get("targets", "all"))
        torch.testing.assert_close(r.maps, e.maps, rtol=0, atol=1e-4)
        files = sorted(os.listdir(os.path.join(out, r.entry["overlays"])))
        assert len(files) == len(e.tokens)
        for k, name in enumerate(files):
            assert name.startswith(f"{e.word_numbers[k]:02d}_")
            got = np.asarray(Image.open(os.path.join(out, r.entry["overlays"], name)))
            want = overlay(Image.open(os.path.join(folder, m["image"])), r.maps[k])  # the stored map's overlay
            assert np.array_equal(got, np.asarray(want))


def test_debris_of_a_killed_process_is_cleaned_and_the_rest_redone(reference_run, run_manifest, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    lines = open(os.path.join(out, "index.jsonl")).read().splitlines(keepends=True)
    kept = lines[:3]
    # as a kill leaves it: the index cut mid-line, shards of lost lines, a temporary shard, an error part
    with open(os.path.join(out, "index.jsonl"), "w") as f:
        f.write("".join(kept) + lines[3][:40])
    open(os.path.join(out, "shards", "x.safetensors.tmp-123"), "wb").write(b"partial")
    os.makedirs(os.path.join(out, "errors"), exist_ok=True)
    open(os.path.join(out, "errors", "0-r00000-p1.jsonl"), "w").write(
        json.dumps({"id": "s7", "where": "line 1", "reason": "stale", "part": "p"}) + "\n")
    run = dcam.load_run(out)
    assert [r.id for r in run] == [json.loads(l)["id"] for l in kept]  # the cut line is not data
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0
    ids = [r.id for r in dcam.load_run(out)]
    assert sorted(ids) == sorted(GOOD) and len(ids) == len(set(ids))
    referenced = {json.loads(l)["shard"] for l in open(os.path.join(out, "index.jsonl"))}
    assert {os.path.join("shards", n) for n in os.listdir(os.path.join(out, "shards"))} == referenced
    ref = {r.id: r.maps for r in dcam.load_run(reference_run)}
    for r in dcam.load_run(out):  # redone records sit in other batches than before: ~1e-5 rounding
        torch.testing.assert_close(r.maps, ref[r.id], rtol=0, atol=1e-4)
    errors = _lines(os.path.join(out, "errors.jsonl"))
    assert sorted(e["id"] for e in errors) == sorted(BAD)  # the stale error of a done record is gone


def test_load_run_is_lazy(reference_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    index = open(os.path.join(out, "index.jsonl")).read().splitlines(keepends=True)
    first = json.loads(index[0])
    with open(os.path.join(out, "index.jsonl"), "a") as f:
        f.write("{corrupt\n")
    for e in index:  # delete every shard but the first record's
        shard = json.loads(e)["shard"]
        if shard != first["shard"] and os.path.exists(os.path.join(out, shard)):
            os.unlink(os.path.join(out, shard))
    it = iter(dcam.load_run(out))
    r = next(it)  # read before the corrupt line is reached, maps from its own shard only
    assert r.id == first["id"] and r.maps.shape[0] == len(first["tokens"])
    with pytest.raises(InputError, match="cannot read the shard"):
        for r in it:
            r.maps
    with pytest.raises(InputError, match=r"index.jsonl line 9 is corrupt"):
        list(dcam.load_run(out))
    with pytest.raises(InputError, match="holds no dcam run"):
        dcam.load_run(str(tmp_path))


def test_run_records_pickle_for_worker_processes(reference_run):
    """A RunRecord held an open shard handle, so it could not be sent to a multiprocessing
    worker ("cannot pickle 'builtins.safe_open' object"); it pickles without the handle."""
    import pickle

    records = list(dcam.load_run(reference_run))
    first = records[0]
    first.maps  # opens its shard
    for r in (first, records[-1]):
        back = pickle.loads(pickle.dumps(r))
        assert back.id == r.id
        torch.testing.assert_close(back.maps, r.maps, rtol=0, atol=0)


def test_records_taken_out_of_the_manifest_are_not_counted_as_failed(run_manifest, tmp_path, capsys):
    # a resume of an edited manifest said "2 of 2 records explained; 1 failed" for an error of a
    # record no longer in it, and errors.jsonl kept it (with its stale line number)
    folder = run_manifest["folder"]
    good = {"id": "s0", "image": os.path.join(folder, "img", "s0.png"), "response": run_manifest["good"]["s0"]["response"]}
    bad = {"id": "gone", "image": os.path.join(folder, "img", "nowhere.png")}
    manifest, out = tmp_path / "m.jsonl", str(tmp_path / "run")
    manifest.write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    assert [e["id"] for e in _lines(os.path.join(out, "errors.jsonl"))] == ["gone"]
    manifest.write_text(json.dumps(good) + "\n")  # the bad line taken out
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    assert "1 of 1 records explained" in capsys.readouterr().out
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["status"] == "complete" and info["counts"]["errors"] == 0 and info["counts"]["done"] == 1
    assert _lines(os.path.join(out, "errors.jsonl")) == []


def test_an_empty_prompt_in_a_manifest_is_refused_as_the_api_refuses_it(run_manifest, tmp_path, capsys):
    # "prompt": "" was replaced by --prompt (or the model's default) without a word, while "   " was an error record
    folder = os.path.dirname(run_manifest["path"])
    image = os.path.join(folder, "img", "s2.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": rid, "image": image, "prompt": p}) + "\n"
                                for rid, p in (("empty", ""), ("spaces", "   "), ("given", None))))
    out = str(tmp_path / "run")
    assert main(["run", str(manifest), "--out", out, "--prompt", "describe the image", *RUN_ARGS]) == 0
    errors = {e["id"]: e["reason"] for e in _lines(os.path.join(out, "errors.jsonl"))}
    assert set(errors) == {"empty", "spaces"} and all(r.startswith("prompt: ") for r in errors.values()), errors
    assert [e["id"] for e in _lines(os.path.join(out, "index.jsonl"))] == ["given"]


def test_a_manifest_cut_down_counts_only_its_own_records(run_manifest, tmp_path, capsys):
    # rerun after records were removed from the manifest: "1 of 1 records explained (35 words)" and
    # metrics.json counted the words and metrics of every record ever done
    folder = run_manifest["folder"]

    def line(rid):
        e = dict(run_manifest["good"][rid])
        return json.dumps(dict(e, image=os.path.join(folder, e["image"]), mask=os.path.join(folder, e["mask"])))

    manifest, out = tmp_path / "m.jsonl", str(tmp_path / "run")
    manifest.write_text(line("s0") + "\n" + line("s1") + "\n")
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    both = {r.id: r for r in dcam.load_run(out)}
    assert json.load(open(os.path.join(out, "metrics.json")))["records"] == 2
    manifest.write_text(line("s1") + "\n")
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "nothing was left to explain; 1 record of the folder is no longer in the manifest (kept: dcam view and "
        "load_run show them)")
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["counts"] == {"records": 1, "done": 1, "errors": 0, "words": len(both["s1"].tokens),
                              "index_records": 2}
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["records"] == 1
    obj = both["s1"].entry["metrics"]["object"]
    assert metrics["summary"]["obj_iou"] == pytest.approx(sum(obj["obj_iou"]) / len(obj["obj_iou"]))
    # no record with a mask left: the metrics of records taken out stayed in metrics.json, metrics.md and
    # run.json; "4 of 2 records already done" counted every record of the folder
    e = run_manifest["good"]["s2"]
    manifest.write_text(json.dumps({"id": "s2", "image": os.path.join(folder, e["image"])}) + "\n")
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", out, *[a for a in RUN_ARGS if a != "--quiet"]]) == 0
    assert "[dcam] 0 of 1 records already done" in capsys.readouterr().err
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["counts"]["records"] == info["counts"]["done"] == 1 and info["counts"]["index_records"] == 3
    assert "metrics" not in info and info["files"]["metrics"] is None
    assert not os.path.exists(os.path.join(out, "metrics.json")) and not os.path.exists(os.path.join(out, "metrics.md"))
    assert dcam.load_run(out).metrics is None


def test_the_run_benchmark_refuses_bad_counts_before_making_folders(tmp_path, capsys):
    # --n -5 was an InputError traceback after images/ and masks/ were made
    from dcam.runs.benchmark import main as bench_main

    for argv, said in ((["manifest", str(tmp_path / "bm"), "--n", "-5"], "argument --n: expected an int >= 1, got '-5'"),
                       (["measure", str(tmp_path / "bm"), "--procs", "1,0"],
                        "argument --procs: expected an int >= 1, got '0'")):
        with pytest.raises(SystemExit) as exc:
            bench_main(argv)
        assert exc.value.code == 2 and capsys.readouterr().err.strip().endswith(said)
    assert not (tmp_path / "bm").exists()


def test_a_record_whose_manifest_line_changed_is_refused_on_resume(run_manifest, tmp_path, capsys):
    # a resume skips a record by its id: an edited line (another response) kept its old maps under the
    # new line, with "nothing was left to explain"
    folder = run_manifest["folder"]
    lines = {rid: dict(run_manifest["good"][rid], image=os.path.join(folder, run_manifest["good"][rid]["image"]),
                       mask=os.path.join(folder, run_manifest["good"][rid]["mask"])) for rid in ("s0", "s1")}
    manifest, out = tmp_path / "m.jsonl", str(tmp_path / "run")
    manifest.write_text(json.dumps(lines["s0"]) + "\n" + json.dumps(lines["s1"]) + "\n")
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    # the same lines spaced and ordered otherwise are the same records: a plain resume
    manifest.write_text("\n" + json.dumps(lines["s0"], indent=None, separators=(" , ", " : ")) + "\n" +
                        json.dumps(dict(reversed(list(lines["s1"].items())))) + "\n")
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    assert "nothing was left to explain" in capsys.readouterr().out
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    edited = dict(lines["s1"], meta={"note": "another"})
    manifest.write_text(json.dumps(lines["s0"]) + "\n\n" + json.dumps(edited) + "\n")
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dcam run: error: MANIFEST: line 3 (id 's1') changed since it was explained into {out!r}, whose "
                   "maps a resume would keep; give a changed record a new id, or pass --overwrite"]
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
    assert main(["run", str(manifest), "--out", out, "--overwrite", *RUN_ARGS]) == 0
    assert [r.entry.get("meta") for r in dcam.load_run(out)] == [None, {"note": "another"}]


def test_the_progress_bar_counts_failed_records_and_not_earlier_sessions_parts(tmp_path):
    # records that failed never moved the bar: a finished run's bar stopped at 27/34 with 7 failed
    from dcam.runs.progress import RunProgress
    from dcam.runs.store import ERROR_PARTS, INDEX_PARTS

    root = tmp_path / "run"
    for folder in (INDEX_PARTS, ERROR_PARTS):
        (root / folder).mkdir(parents=True)
    (root / INDEX_PARTS / "old.jsonl").write_text(json.dumps({"id": "a", "tokens": ["x"]}) + "\n")
    (root / ERROR_PARTS / "old.jsonl").write_text(json.dumps({"id": "b"}) + "\n")
    bar = RunProgress(str(root), total=6, initial=1)
    (root / INDEX_PARTS / "new.jsonl").write_text("".join(json.dumps({"id": i, "tokens": ["x", "y"]}) + "\n"
                                                          for i in "cd"))
    (root / ERROR_PARTS / "new.jsonl").write_text(json.dumps({"id": "e"}) + "\n" + '{"id": "f"')  # one line cut short
    bar.update()
    assert (bar.bar.n, bar.records, bar.failed, bar.words) == (1 + 2 + 1, 2, 1, 4)
    bar.close()


def test_response_length_sets_the_generated_responses_and_the_fingerprint(tmp_path, capsys):
    # dcam run had no --response-length: a run's generated answers were always the model's default length
    from dcam.runs import RunOptions, run_dataset
    from dcam.runs.sources import open_source
    from dcam.testing.hf_tiny import tiny_llava

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"i{k}.png")
    exp = dcam.Explainer(*tiny_llava())
    out = tmp_path / "out"
    run_dataset(exp, open_source(str(src)), str(out), RunOptions(response_length=3, progress=False, batch_size=2))
    got = {r.id: r for r in dcam.load_run(str(out))}
    assert sorted(got) == ["i0.png", "i1.png"]
    for rid, r in got.items():
        direct = exp.explain(str(src / rid), response_length=3)
        assert 1 <= len(direct.response_ids) <= 3 and r.response == direct.response and r.tokens == direct.tokens
    longer = exp.explain(str(src / "i0.png"), response_length=6)
    assert len(longer.response_ids) > len(got["i0.png"].response.split())  # the option did shorten the answer
    # the length decides the maps: a resume with another one is refused, naming it
    with pytest.raises(InputError, match=r"differs in: response_length"):
        run_dataset(exp, open_source(str(src)), str(out), RunOptions(response_length=4, progress=False))


@pytest.mark.parametrize("option, value, message", [
    ("steps", 0, "steps must be an int >= 1, got 0"),
    ("response_length", "3", "response_length must be an int >= 1, got '3'"),
    ("batch_size", 0, "batch_size must be an int >= 1, got 0"),
    ("shard_size", 2.5, "shard_size must be an int >= 1, got 2.5"),
    ("shard_seconds", float("nan"), "shard_seconds must be a number of seconds > 0, got nan"),
    ("memory_budget", -5, "memory_budget must be an int >= 1, got -5"),
    ("overlays", "yes", "overlays must be True or False, got 'yes'"),
    ("target_score", "nope", "target_score"),
])
def test_bad_run_options_are_refused_before_the_folder_is_touched(run_manifest, tmp_path, explainer, option, value,
                                                                   message):
    # a bad steps, probe or score sent every record to errors.jsonl; a batch size of 0 was range()'s ValueError
    from dcam.runs import RunOptions, run_dataset
    from dcam.runs.sources import open_source

    out = tmp_path / "out"
    with pytest.raises(InputError, match="^" + re.escape(message)):
        run_dataset(explainer, open_source(run_manifest["path"]), str(out), RunOptions(**{option: value}))
    assert not out.exists()


def test_a_response_length_the_model_cannot_write_stops_the_run_at_its_start(run_manifest, tmp_path, capsys):
    # the bundled model lays out exactly 12 response slots: every record failed into errors.jsonl, exit 0
    out = tmp_path / "out"
    assert main(["run", run_manifest["path"], "--out", str(out), "--response-length", "3", *RUN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dcam run: error: --response-length: this model writes exactly 12 response slots (its processor's "
                   "response_length; shorter responses end in eos), got 3"]
    assert not out.exists()


def test_numpy_int_run_options_run_as_plain_ints(tmp_path, explainer):
    # a numpy int passed the check unconverted, then run.json's JSON write failed with a TypeError
    from dcam.runs.runner import RunOptions, check_run_options, run_dataset
    from dcam.runs.sources import open_source

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "one.png")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "image": "one.png", "response": "a red circle"}\n')
    counts = dict(batch_size=2, shard_size=3, steps=4, response_length=12, memory_budget=10 ** 10)
    given = RunOptions(progress=False, **{k: np.int64(v) for k, v in counts.items()})
    checked = check_run_options(explainer, given)
    assert {k: (type(getattr(checked, k)), getattr(checked, k)) for k in counts} == {
        k: (int, v) for k, v in counts.items()}
    infos = []
    for name, opts in (("np", given), ("plain", RunOptions(progress=False, **counts))):
        run_dataset(explainer, open_source(str(tmp_path / "m.jsonl")), str(tmp_path / name), opts)
        infos.append(json.load(open(tmp_path / name / "run.json")))
    assert infos[0]["status"] == "complete" and infos[0]["counts"]["done"] == 1
    assert infos[0]["identity"]["steps"] == 4 and infos[0]["identity"]["response_length"] == 12
    assert (infos[0]["options"]["batch_size"], infos[0]["options"]["memory_budget"]) == (2, 10 ** 10)
    assert infos[0]["fingerprint"] == infos[1]["fingerprint"]
    maps = [next(dcam.load_run(str(tmp_path / name)).records(["a"])).maps for name in ("np", "plain")]
    assert torch.equal(*maps)


def test_a_folder_started_with_view_default_by_an_older_dcam_resumes(tmp_path, capsys):
    # an older dcam fingerprinted --view default as "view": "default"; now the same command's view is None, and
    # the folder was refused as another config (differs in: view)
    import hashlib

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "one.png")
    manifest, out = tmp_path / "m.jsonl", tmp_path / "out"
    manifest.write_text('{"id": "a", "image": "one.png", "response": "a red circle"}\n')
    args = ["run", str(manifest), "--out", str(out), "--view", "default", *RUN_ARGS]
    assert main(args) == 0
    info = json.load(open(out / "run.json"))
    assert info["identity"]["view"] is None
    info["identity"]["view"] = "default"  # what the older dcam wrote, fingerprint and all
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info))
    with open(manifest, "a") as f:
        f.write('{"id": "b", "image": "one.png", "response": "a blue square"}\n')
    assert main(args) == 0, capsys.readouterr().err
    info = json.load(open(out / "run.json"))
    assert info["counts"]["done"] == 2 and info["session"]["records"] == 1 and info["identity"]["view"] is None
    # only "default" is taken for None: a folder of another view is still another config
    info["identity"]["view"] = "base"
    info["fingerprint"] = hashlib.sha256(json.dumps(info["identity"], sort_keys=True, default=str).encode()).hexdigest()
    (out / "run.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert main(args) == 2
    assert "differs in: view" in capsys.readouterr().err
