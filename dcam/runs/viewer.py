"""The page of a run (``dcam view DIR``): ``DIR/index.html`` and ``DIR/view/``.

``view/page-NNNNN.js`` holds the page data (:mod:`dcam.render.html`) of
``per_page`` records each, loaded by the page when that page is shown (a
script element, which works from ``file://`` without a server), so a run of
a million records opens as fast as one of ten; ``view/img/NNNNNN.(png|jpg)``
are the records' images shrunk to ``max_side`` (read from the paths in the
index; a record whose image is gone shows its maps on grey). The explained
records come first, in index order, then the failed ones with their reason.
``view/`` is replaced whole and ``index.html`` atomically, so a page is
never a mix of two versions.
"""
from __future__ import annotations

import glob
import html
import os
import shutil
import tempfile
from typing import List, Optional

from ..errors import InputError, one_line, shown
from ..fields import finite_number
from ..render.overlay import FULL_BOX
from .reader import load_run
from .store import write_bytes_atomic
from .writer import _umask

VIEW = "view"


def _save_image(path: Optional[str], out_dir: str, n: int, max_side: int, size=None) -> Optional[str]:
    """The record's image written for the page; its URL relative to the run folder (None if unreadable,
    or when it is no longer the ``size`` [W, H] that was explained: an image replaced after the run
    was shown stretched under maps of another picture; now the maps lie on grey, as for a gone one)."""
    from ..images import load_image

    if not path:
        return None
    try:
        im = load_image(path)
    except InputError:
        return None
    if size is not None and list(im.size) != [int(v) for v in size]:
        return None
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    big = max(im.size) > 256
    name = f"{n:06d}.{'jpg' if big else 'png'}"
    im.save(os.path.join(out_dir, "img", name), **({"quality": 88} if big else {}))
    return f"{VIEW}/img/{name}"


def _items(r):
    from ..words import clean_token

    return [{"text": clean_token(t) or t, "number": n} for t, n in zip(r.tokens, r.word_numbers)]


def _throughput(info: dict, root: str) -> Optional[dict]:
    """run.json's throughput (None without one), its two rates numbers, else an InputError: a text there was
    a ValueError traceback once the page's view/ was already replaced (index.html left as it was)."""
    t = info.get("throughput")
    if not t:
        return None
    if not isinstance(t, dict) or not all(finite_number(t.get(k)) for k in ("images_per_s", "words_per_s")):
        raise InputError(f"run: {os.path.join(root, 'run.json')}: throughput must be an object whose images_per_s "
                         f"and words_per_s are numbers, got {shown(t)}; the page was not written")
    return t


def _info(run) -> dict:
    """The run's run.json ({} without one), an unreadable one refused, its throughput checked (:func:`_throughput`)."""
    info = run.info
    _throughput(info, run.root)
    return info


def _summary(info: dict, n: int, errors: int, root: str) -> str:
    parts = [f"{n} records", f"{errors} failed"]
    if info:
        parts.append(f"{info.get('method', '?')} on {info.get('model_class', '?')} "
                     f"(layer {info.get('layer')}, probe {info.get('probe')})")
        t = _throughput(info, root)
        if t:
            parts.append(f"{t['images_per_s']:.2f} images/s, {t['words_per_s']:.1f} words/s "
                         f"on {t.get('processes', 1)} process(es)")
    return "; ".join(parts)


def _metrics_html(metrics: Optional[dict]) -> str:
    if not metrics:
        return ""
    s = metrics.get("summary", {})
    # labelled as metrics.md labels them (the per-record tables below show fractions)
    cols = [("Obj-IoU (%)", "obj_iou", 100), ("Contrast (x)", "contrast", 1),
            ("Concentration (%)", "concentration", 100), ("F3 (%)", "f3", 100), ("Func-IoU (%)", "func_iou", 100),
            ("object words", "n_obj", None),
            ("function words", "n_func", None)]
    cells = []
    for _, k, scale in cols:
        v = s.get(k)
        cells.append("n/a" if v is None else (str(v) if scale is None else f"{v * scale:.2f}"))
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in cols)
    row = "".join(f"<td>{c}</td>" for c in cells)
    return f"<table class=\"runmetrics\"><tr>{head}</tr><tr>{row}</tr></table>"


class _PageWriter:
    def __init__(self, folder: str, per_page: int):
        self.folder, self.per_page = folder, per_page
        self.buf, self.pages, self.total = [], 0, 0

    def add(self, rec: dict) -> None:
        self.buf.append(rec)
        self.total += 1
        if len(self.buf) == self.per_page:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        from ..render.html import script_json

        data = script_json(self.buf)
        with open(os.path.join(self.folder, f"page-{self.pages:05d}.js"), "w", encoding="utf-8") as f:
            f.write(f"DcamViewer.page({self.pages}, {data});\n")
        self.pages += 1
        self.buf = []


def write_run_page(folder: str, per_page: int = 50, limit: Optional[int] = None, max_side: int = 512,
                   progress: bool = False, trajectory_bytes: Optional[int] = None) -> dict:
    """Write the run's page (see the module docstring); returns what was written. A record's trajectory shows
    the steps within ``trajectory_bytes`` (None: :data:`dcam.render.html.PAGE_TRAJECTORY_BYTES`)."""
    from ..render.html import (check_trajectory_bytes, error_data, page_html, record_data, trajectory_frames,
                               viewer_config)

    trajectory_bytes = check_trajectory_bytes(trajectory_bytes)  # (refused before the run is read)

    run = load_run(folder)
    root = run.root
    info = _info(run)  # read (and refused if unreadable) before anything is written
    metrics, notes = _run_metrics(run), []
    if isinstance(metrics, str):
        metrics, notes = None, [metrics]
    for left in glob.glob(os.path.join(root, f".{VIEW}.partial-*")) + glob.glob(os.path.join(root, f"{VIEW}.old-*")):
        shutil.rmtree(left, ignore_errors=True)  # what a killed `dcam view` left
    try:
        tmp = tempfile.mkdtemp(prefix=f".{VIEW}.partial-", dir=root)
    except OSError as exc:  # a read-only or immutable run folder: mkdtemp's PermissionError was a traceback
        raise InputError(f"DIR: cannot write the page into {folder!r} ({exc.strerror}); the page is written "
                         "into the run's folder") from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: others could not open a shared run's page
    try:
        os.makedirs(os.path.join(tmp, "img"))
        pages = _PageWriter(tmp, per_page)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc="dcam view", unit="rec")
        done = set()
        for r in run:
            done.add(r.id)
            if limit is not None and pages.total >= limit:
                continue
            # every field as the record checks it (the index line's own values were taken as they were: a damaged
            # line was a traceback here, or a page that drew its maps wrong)
            maps, labels, kept = trajectory_frames(r.maps, r.trajectory, trajectory_bytes)
            rec = record_data(
                r.id, r.response, _items(r), maps,
                _save_image(r.image, tmp, pages.total, max_side, r.image_size), r.image_size or [1, 1],
                r.grid, stats=r.stats_lists(), metrics=r.metrics, notes=list(r.notes or []) + kept,
                where=r.where or "",
                step_labels=labels)
            if r.box != FULL_BOX:  # the page lays the maps over the crop the model saw, as the overlays do
                rec["box"] = list(r.box)
            if r.cells is not None:  # and a stitched map's cells on the pixels they were read from
                rec["cells"] = r.cells.as_dict()
            pages.add(rec)
            if bar is not None:
                bar.update()
        errors = _run_errors(root, done, notes)
        shown_errors = 0
        for err in errors.values():
            if limit is None or pages.total < limit:
                pages.add(error_data(err["id"], err["reason"], err.get("where", "")))
                shown_errors += 1
        pages.flush()
        if bar is not None:
            bar.close()
        _replace(os.path.join(root, VIEW), tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a file too large: it was a traceback
            raise _write_failed(folder, exc) from None
        if isinstance(exc, InputError):  # a file of the run it cannot read, a damaged index line: the old page stays
            raise InputError(f"{one_line(exc)}; the page was not written") from None
        raise
    cfg = viewer_config([], title=f"dcam run: {os.path.basename(root)}", summary=_summary(info, len(done),
                        len(errors), root), per_page=per_page, pages=max(1, pages.pages), total=pages.total,
                        page_url=f"{VIEW}/page-%05d.js", metrics_html=_metrics_html(metrics))
    page = os.path.join(root, "index.html")
    try:
        write_bytes_atomic(page, page_html(cfg).encode("utf-8"))
    except OSError as exc:
        raise _write_failed(folder, exc) from None
    # what the pages hold (with --limit, the failed records past it were counted as written)
    return {"page": page, "records": pages.total - shown_errors, "pages": pages.pages, "errors": shown_errors,
            "notes": notes}


def _run_metrics(run):
    """The run's metrics.json, None without one, or the line that says the page goes on without it: a damaged
    one stopped the page, though it is only the summary above the records (each record's metrics are in its
    index line) and a resume writes it anew."""
    try:
        metrics = run.metrics
    except InputError as exc:
        why = one_line(exc)
    else:
        summary = metrics.get("summary") if isinstance(metrics, dict) else None
        if metrics is None or isinstance(summary, dict) and all(
                v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in summary.values()):
            return metrics
        why = f"run: {os.path.join(run.root, 'metrics.json')} is not a run's metrics (no summary of numbers)"
    return (f"{why[len('run: '):] if why.startswith('run: ') else why}; the page is written without the run's "
            "metrics (each record's are shown; a resume of the run writes metrics.json anew)")


def _run_errors(root: str, done, notes: List[str]) -> dict:
    """The failed records of the run (:func:`.store.read_errors`); an error file with a damaged line is read up to
    it, and the line that says the page goes on without the rest is appended to ``notes``: it stopped the page,
    though a resume deletes such a file, tries its records again and writes errors.jsonl anew
    (:func:`.store.drop_damaged_errors`)."""
    from .store import read_errors

    damaged: List[InputError] = []
    errors = read_errors(root, done, damaged)
    if not damaged:
        return errors
    why = one_line(damaged[0])
    more = f" (and {len(damaged) - 1} more error file{'s' if len(damaged) > 2 else ''})" if len(damaged) > 1 else ""
    notes.append(f"{why[len('run: '):] if why.startswith('run: ') else why}{more}; the page is written without the "
                 "failed records of that line and the lines after it (a resume of the run tries them again and writes "
                 "errors.jsonl anew)")
    return errors


def _write_failed(folder, exc: OSError) -> InputError:
    unread = getattr(exc, "read_path", None)  # (:func:`.store.read_failed`: an index it could not read)
    if unread is not None:  # (it was said to be a failed write of the page)
        return InputError(f"DIR: cannot read {unread!r} ({type(exc).__name__}: {exc.strerror or one_line(exc)}); "
                          "the page was not written")
    return InputError(f"DIR: writing the page into {folder!r} failed ({type(exc).__name__}: {one_line(exc)})")


def _replace(target: str, new: str) -> None:
    """Put the folder ``new`` at ``target``, replacing an old one whole."""
    old = None
    if os.path.exists(target):
        old = f"{target}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(new, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["write_run_page"]
