"""dcam run --out through a symbolic link: written through, the link kept, as dcam explain does
(a dangling link was refused with "cannot create ... (File exists)")."""
import json
import os

from dcam.cli import main

RUN_ARGS = ["--threads", "1", "--batch-size", "2", "--shard-size", "2", "--quiet"]


def _one_record_manifest(run_manifest, tmp_path):
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": os.path.join(run_manifest["folder"], "img", "s2.png"),
                                    "response": "a red circle"}) + "\n")
    return str(manifest)


def _index_ids(folder):
    with open(os.path.join(folder, "index.jsonl")) as f:
        return [json.loads(line)["id"] for line in f if line.strip()]


def test_a_dangling_link_gets_its_folder_and_the_run_goes_through_it(run_manifest, tmp_path, capsys, monkeypatch):
    manifest = _one_record_manifest(run_manifest, tmp_path)
    monkeypatch.chdir(tmp_path)
    for link, target in (("out", "target"), ("deep", os.path.join("missing", "target"))):
        os.symlink(target, link)  # relative: read from the link's folder
        capsys.readouterr()
        assert main(["run", manifest, "--out", link, *RUN_ARGS]) == 0, capsys.readouterr().err
        assert os.path.islink(link) and os.readlink(link) == target  # the link kept
        assert _index_ids(target) == ["a"]
        info = json.load(open(os.path.join(target, "run.json")))
        assert info["status"] == "complete" and info["counts"]["done"] == 1
        # a rerun through the link resumes: nothing is explained again
        assert main(["run", manifest, "--out", link, *RUN_ARGS]) == 0
        assert _index_ids(target) == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["deep", "missing", "one.jsonl", "out", "target"]


def test_a_link_loop_is_refused_in_one_line(run_manifest, tmp_path, capsys, monkeypatch):
    manifest = _one_record_manifest(run_manifest, tmp_path)
    monkeypatch.chdir(tmp_path)
    os.symlink("loop", "loop")
    capsys.readouterr()
    assert main(["run", manifest, "--out", "loop", *RUN_ARGS]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dcam run: error: --out: 'loop' is a symbolic link that never reaches a folder (a loop)"]
    assert sorted(os.listdir(tmp_path)) == ["loop", "one.jsonl"] and os.readlink("loop") == "loop"


def test_out_with_dotdot_is_the_folder_abspath_names_as_at_the_run_and_its_lock(run_manifest, tmp_path, capsys,
                                                                                 monkeypatch):
    # the lock was taken on --out as typed, resolved by the kernel ('link/..' is the link target's parent), while
    # the run writes os.path.abspath(--out) ('..' taken as text): 'missing/../out2' was refused ("cannot write
    # into ... (FileNotFoundError)") and 'link/../out' locked (and created) elsewhere/out, then failed or wrote ./out
    manifest = _one_record_manifest(run_manifest, tmp_path)
    monkeypatch.chdir(tmp_path)
    os.makedirs(os.path.join("elsewhere", "sub"))
    os.symlink(os.path.join("elsewhere", "sub"), "link")  # link/.. : 'elsewhere' for the kernel, '.' as text
    for out, folder in (("missing/../out2", "out2"), ("link/../out", "out")):
        capsys.readouterr()
        assert main(["run", manifest, "--out", out, *RUN_ARGS]) == 0, capsys.readouterr().err
        assert _index_ids(folder) == ["a"]
        assert json.load(open(os.path.join(folder, "run.json")))["counts"]["done"] == 1
    # a resume through the link: the run in ./out goes on (nothing left to explain), nothing made elsewhere
    assert main(["run", manifest, "--out", "link/../out", *RUN_ARGS]) == 0, capsys.readouterr().err
    assert _index_ids("out") == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "link", "one.jsonl", "out", "out2"]
    assert os.listdir("elsewhere") == ["sub"] and os.listdir(os.path.join("elsewhere", "sub")) == []
