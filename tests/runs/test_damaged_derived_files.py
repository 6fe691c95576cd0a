"""The files a run writes anew at every end (errors.jsonl, metrics.json), damaged from outside: a resume goes on
past a damaged errors file (its records are tried again, as every record not done is, and errors.jsonl is
rebuilt), saying so in one line; `dcam view` goes on without a damaged metrics.json, with a one-line note.
A damaged errors.jsonl stopped the resume with no way out but editing it; a damaged metrics.json stopped the
page."""
import json
import os
import shutil

import pytest

import dcam
from dcam.cli import main
from dcam.errors import InputError
from dcam.testing.support import file_tree

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _errors(path):
    with open(path) as f:
        return [(e["id"], e["where"], e["reason"]) for e in map(json.loads, f) if e]


def test_a_resume_past_damaged_error_files_tries_their_records_again_and_rebuilds_errors_jsonl(
        reference_run, run_manifest, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    with open(os.path.join(out, "errors.jsonl"), "a") as f:
        f.write('{"id": "x", "whe\n')  # a whole line (newline-ended) that is not JSON, after the good ones
    os.makedirs(os.path.join(out, "errors"), exist_ok=True)  # (the merged run keeps the empty folder)
    with open(os.path.join(out, "errors", "0000000000000001-r00000-p1.jsonl"), "w") as f:
        f.write('["not a record"]\n')
    capsys.readouterr()
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0
    captured = capsys.readouterr()
    path = os.path.join(out, "errors.jsonl")
    assert captured.err.splitlines() == [
        f"dcam: {path} line 6 is corrupt (Invalid control character at: line 1 column 17 (char 16)) (and 1 more error "
        "file): deleted; the records it held are taken as not failed and tried again (as every record not done "
        "is), and errors.jsonl is written anew at the run's end"]
    assert "this session explained none (5 failed)" in captured.out  # the five failed records, tried again
    assert _errors(path) == _errors(os.path.join(reference_run, "errors.jsonl"))
    assert not os.listdir(os.path.join(out, "errors"))
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["status"] == "complete" and info["counts"]["errors"] == 5 and info["counts"]["done"] == 8
    assert sorted(dcam.load_run(out).errors) == sorted(e[0] for e in _errors(path))


@pytest.mark.parametrize("damage, why", [
    (b"{bad", "cannot read {path} (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    (b"[1, 2]\n", "{path} is not a run's metrics (no summary of numbers)"),
    (b'{"summary": {"obj_iou": "high"}}\n', "{path} is not a run's metrics (no summary of numbers)")])
def test_dcam_view_goes_on_without_a_damaged_metrics_json(reference_run, run_manifest, tmp_path, capsys, damage, why):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    path = os.path.join(out, "metrics.json")
    open(path, "wb").write(damage)
    capsys.readouterr()
    assert main(["view", out, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"dcam view: note: {why.format(path=path)}; the page is written without the run's metrics (each record's "
        "are shown; a resume of the run writes metrics.json anew)"]
    assert captured.out.startswith(f"wrote {os.path.join(out, 'index.html')}: 8 explained records")
    page = open(os.path.join(out, "index.html")).read()
    assert "runmetrics" not in page.split("<style")[0] + page.split("</style>")[-1]  # no summary table drawn
    if damage == b"{bad":  # the API names the file
        with pytest.raises(InputError, match=f"^run: cannot read {path} "):
            dcam.load_run(out).metrics
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0  # the resume writes it anew
    assert open(path).read() == open(os.path.join(reference_run, "metrics.json")).read()


def test_dcam_view_of_an_undamaged_run_draws_its_metrics_and_says_nothing_more(reference_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    capsys.readouterr()
    assert main(["view", out, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    page = open(os.path.join(out, "index.html")).read()
    assert "runmetrics" in page.split("<style")[0] + page.split("</style>")[-1]


def test_a_refused_resume_leaves_a_damaged_errors_jsonl_as_it_was(run_manifest, tmp_path, capsys):
    # the resume deleted the damaged file before a later refusal (a manifest record changed since), and the
    # notice that says so is printed only by a run that goes on: the refused command changed the folder unsaid
    data = tmp_path / "data"
    shutil.copytree(os.path.dirname(run_manifest["path"]), data)
    manifest = data / os.path.basename(run_manifest["path"])
    out = str(tmp_path / "run")
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 0
    lines = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    changed = next(e for e in lines if e.get("response"))
    words = changed["response"].split()  # (as many words: its labels still fit)
    changed["response"] = " ".join(["one" if words[0] != "one" else "two"] + words[1:])
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    with open(os.path.join(out, "errors.jsonl"), "a") as f:
        f.write('{"id": "x", "whe\n')
    before = file_tree(out)
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", out, *RUN_ARGS]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"(id {changed['id']!r}) changed since" in err and "deleted" not in err
    assert file_tree(out) == before


def test_a_resume_deletes_temporary_files_a_killed_index_rewrite_left(reference_run, run_manifest, tmp_path):
    # drop_index_lines writes each index file's copy beside it (<file>.tmp-<pid>) and renames it into place;
    # a kill in between left the copy in index/ or errors/ for good (only shards/ and the folder were cleaned)
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    leftovers = [os.path.join(out, "index", "0000000000000001-r00000-p1.jsonl.tmp-4242"),
                 os.path.join(out, "errors", "0000000000000001-r00000-p1.jsonl.tmp-4242"),
                 os.path.join(out, "index.jsonl.tmp-4242")]
    for p in leftovers:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write('{"id": "half"}\n')
    index = open(os.path.join(out, "index.jsonl"), "rb").read()
    assert main(["run", run_manifest["path"], "--out", out, *RUN_ARGS]) == 0
    assert [p for p in leftovers if os.path.exists(p)] == []
    assert open(os.path.join(out, "index.jsonl"), "rb").read() == index


@pytest.mark.parametrize("where", ["end", "third line"])
def test_dcam_view_goes_on_past_a_damaged_errors_jsonl(reference_run, run_manifest, tmp_path, capsys, where):
    # it stopped the page (exit 2, "the page was not written"), though a resume deletes such a file and writes it anew
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    path = os.path.join(out, "errors.jsonl")
    good = _errors(path)
    lines = open(path).readlines()
    assert len(lines) == 5  # the five failed records of the manifest
    if where == "end":
        lines.append('{"id": "x", "whe\n')
        shown_errors, line = 5, 6
    else:
        lines[2] = '["not a record"]\n'
        shown_errors, line = 2, 3
    open(path, "w").writelines(lines)
    capsys.readouterr()
    assert main(["view", out, "--quiet"]) == 0
    captured = capsys.readouterr()
    why = (f"{path} line 6 is corrupt (Invalid control character at: line 1 column 17 (char 16))" if where == "end"
           else f"{path} line 3 is corrupt (a JSON list, not a record's object)")
    assert captured.err.splitlines() == [
        f"dcam view: note: {why}; the page is written without the failed records of that line and the lines after it "
        "(a resume of the run tries them again and writes errors.jsonl anew)"]
    assert captured.out == (f"wrote {os.path.join(out, 'index.html')}: 8 explained records on 1 page(s) and "
                            f"{shown_errors} failed ones\n")
    # the page's failed records: the lines before the damaged one, read back from the page data
    page = open(os.path.join(out, "view", "page-00000.js")).read()
    for rid, _, _ in good[:shown_errors]:
        assert json.dumps(rid) in page
    for rid, _, _ in good[shown_errors:]:
        assert json.dumps(rid) not in page
    with pytest.raises(InputError, match=f"^run: {path} line {line} is corrupt"):  # the API names the file
        dcam.load_run(out).errors


@pytest.mark.parametrize("throughput", [{"images_per_s": "fast", "words_per_s": 1.0}, [1, 2], "quick"])
def test_dcam_view_refuses_a_run_json_whose_throughput_is_not_numbers_and_writes_nothing(
        reference_run, tmp_path, capsys, throughput):
    # (a run.json from someone else) the summary's format was a ValueError or TypeError traceback, raised once the
    # page's view/ had been replaced: the page's data new, its index.html old
    out = str(tmp_path / "run")
    shutil.copytree(reference_run, out)
    assert main(["view", out, "--quiet"]) == 0
    path = os.path.join(out, "run.json")
    info = json.load(open(path))
    info["throughput"] = throughput
    json.dump(info, open(path, "w"))
    before = file_tree(out)
    capsys.readouterr()
    assert main(["view", out, "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"dcam view: error: DIR: {path}: throughput must be an object whose images_per_s and words_per_s are "
        f"numbers, got {throughput!r}; the page was not written"]
    assert file_tree(out) == before
