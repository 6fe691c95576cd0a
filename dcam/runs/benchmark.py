"""A manifest of the bundled benchmark's images, and the throughput of ``dcam run`` on it.

    python -m dcam.runs.benchmark manifest DIR --n 200            # DIR/manifest.jsonl, images/, masks/
    python -m dcam.runs.benchmark measure DIR --n 200 --procs 1,2 # dcam run / torchrun, table of run.json

``manifest``: the first ``n`` scenes of the grounded-shapes test split
(:mod:`dcam.zoo.data`), one line each: the image, its caption as the given
response, the label mask and each word's label (so the run also writes the
paper's metrics); ``--generate`` leaves the response out (the model writes it,
no metrics). ``measure``: for each process count, a fresh run of the manifest
(``dcam run`` for 1, ``torchrun --nproc_per_node=N -m dcam run`` otherwise;
``--threads`` torch threads per process) and its ``run.json`` throughput:
images/s and words/s over the explaining loop (model loading excluded).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import List, Sequence


def write_manifest(folder: str, n: int = 200, split: str = "test", image_size: int = 64,
                   generate: bool = False) -> str:
    """Write the scenes and ``folder/manifest.jsonl``; returns the manifest's path."""
    from PIL import Image

    from ..zoo.data import ShapesDataset

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    lines = []
    for i, s in enumerate(ShapesDataset(split=split, size=n, image_size=image_size, cache=False)):
        rid = f"{split}-{i:05d}"
        s.image.save(os.path.join(folder, "images", f"{rid}.png"))
        entry = {"id": rid, "image": f"images/{rid}.png"}
        if not generate:
            Image.fromarray(s.mask.astype("uint8"), mode="L").save(os.path.join(folder, "masks", f"{rid}.png"))
            entry.update(response=s.caption, mask=f"masks/{rid}.png", labels=[int(v) for v in s.word_labels])
        lines.append(json.dumps(entry))
    path = os.path.join(folder, "manifest.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_command(manifest: str, out: str, procs: int, threads: int, extra: Sequence[str] = ()) -> List[str]:
    """The command line of one measured run."""
    tail = ["run", manifest, "--out", out, "--quiet", "--threads", str(threads), *extra]
    if procs == 1:
        return [sys.executable, "-m", "dcam", *tail]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [torchrun, "--standalone", f"--nproc_per_node={procs}", "-m", "dcam", *tail]


def measure(folder: str, n: int, procs: Sequence[int], threads: int, extra: Sequence[str] = ()) -> List[dict]:
    manifest = os.path.join(folder, "manifest.jsonl")
    if not os.path.exists(manifest):
        write_manifest(folder, n)
    rows = []
    for p in procs:
        out = os.path.join(folder, f"run-{p}proc")
        shutil.rmtree(out, ignore_errors=True)
        cmd = run_command(manifest, out, p, threads, extra)
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        with open(os.path.join(out, "run.json")) as f:
            info = json.load(f)
        t, s = info["throughput"], info["session"]
        rows.append({"processes": p, "records": s["records"], "words": s["words"], "seconds": s["seconds"],
                     "images_per_s": t["images_per_s"], "words_per_s": t["words_per_s"]})
    return rows


def _count(text: str) -> int:
    """An argparse type: an int >= 1 (-5 was a traceback after the folders were made)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return v


def _counts(text: str) -> List[int]:
    """An argparse type: a comma list of ints >= 1."""
    return [_count(v) for v in text.split(",") if v.strip()] or [_count("")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcam.runs.benchmark", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest", help="write the manifest")
    m.add_argument("folder")
    m.add_argument("--n", type=_count, default=200)
    m.add_argument("--generate", action="store_true", help="no given response: the model writes it")
    r = sub.add_parser("measure", help="write the manifest (if missing) and measure dcam run on it")
    r.add_argument("folder")
    r.add_argument("--n", type=_count, default=200)
    r.add_argument("--procs", type=_counts, default="1,2", help="comma list of process counts")
    r.add_argument("--threads", type=_count, default=1, help="torch threads per process")
    args, extra = ap.parse_known_args(argv)
    if args.cmd == "manifest":
        print(write_manifest(args.folder, args.n, generate=args.generate))
        return 0
    rows = measure(args.folder, args.n, args.procs, args.threads, extra)
    print("| processes | records | words | seconds | images/s | words/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['records']} | {r['words']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} "
              f"| {r['words_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
