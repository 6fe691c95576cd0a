"""The end of a run, on rank 0 after every rank is done: index parts merged
into ``index.jsonl``, errors into ``errors.jsonl``, the per-record metrics of
every rank (and of earlier sessions) reduced into ``metrics.json`` and
``metrics.md``, and the final ``run.json``."""
from __future__ import annotations

import os
import time
from array import array
from typing import Any, Dict

from ..errors import InputError, shown
from ..fields import Fields, finite_number
from .folder import read_run_json
from .store import ERRORS, INDEX, RUN_JSON, SHARDS, index_lines, line_words, merge_errors, merge_index, \
    write_bytes_atomic, write_json_atomic

OBJECT_KEYS = ("obj_iou", "contrast", "concentration", "f3")
NAN = float("nan")


def checked_metrics(m, where: str) -> Dict[str, Any]:
    """An index line's ``metrics`` (:func:`.records.record_metrics`' object; ``where``: the line, for the message)
    as far as :class:`MetricTotals` reads it: else an InputError naming the line and the field (a text value was
    read as its number, a list of values a traceback at the run's end)."""
    if not isinstance(m, dict):
        raise InputError(f"{where}: metrics must be an object or null, got {shown(m)}")
    f = Fields(m, f"{where}: metrics")
    f.int("unaligned", 0, lo=0)
    f.int("not_targeted", 0, lo=0)
    words = f.texts("words") if "words" in m else None  # (the response's words the lists' "words" number)
    for part, keys in (("object", OBJECT_KEYS), ("function", ("func_iou",))):
        values = f.value(part, {})
        if not isinstance(values, dict) or not all(
                isinstance(values.get(k, []), list) and all(v is None or finite_number(v) for v in values.get(k, []))
                for k in keys):
            raise f.bad(part, f"an object of lists of numbers or nulls ({', '.join(keys)})")
        # one value per scored word: a list of another length was reduced into metrics.json as it was, and a
        # record's values shown against other words
        scored = Fields(values, f"{where}: metrics: {part}")
        numbers = scored.ints("words") if "words" in values else []
        if words is not None and not all(0 <= i < len(words) for i in numbers):
            raise scored.bad("words", f"numbers of the record's words (below {len(words)})")
        for k in keys:
            if k in values and len(values[k]) != len(numbers):
                raise scored.bad(k, f"one number or null per word of {part}.words ({len(numbers)})")
    return m


class MetricTotals:
    """Per-map metric values of every record (compact float arrays: a million
    records of ten words each is 40 million floats, 320 MB, not Python lists)."""

    def __init__(self):
        self.obj = {k: array("d") for k in OBJECT_KEYS}
        self.func = {"func_iou": array("d")}
        self.records = 0
        self.unaligned = 0
        self.not_targeted = 0

    def add(self, m: Dict[str, Any]) -> None:
        self.records += 1
        self.unaligned += int(m.get("unaligned", 0))
        self.not_targeted += int(m.get("not_targeted", 0))
        o = m.get("object", {})
        for k in OBJECT_KEYS:
            self.obj[k].extend(NAN if v is None else float(v) for v in o.get(k, ()))
        self.func["func_iou"].extend(NAN if v is None else float(v) for v in m.get("function", {}).get("func_iou", ()))

    def summary(self) -> Dict[str, float]:
        from ..eval.metrics import summarize

        return summarize(self.obj, self.func)


def collect(root: str, source_ids=None):
    """(ids done, words, metric totals) over the merged index, in one pass; the words and
    metrics of the records in ``source_ids`` only, when given (a manifest cut down since an
    earlier session keeps its other records in the index, but they are no longer the run's:
    "1 of 1 records explained (35 words)" counted the words and metrics of all five)."""
    done = set()
    words = 0
    totals = MetricTotals()
    for path, n, obj in index_lines(root):
        done.add(obj["id"])
        if source_ids is not None and obj["id"] not in source_ids:
            continue
        where = f"run: {path} line {n}, record {obj['id']!r}"
        words += line_words(obj, where)
        if obj.get("metrics") is not None:
            totals.add(checked_metrics(obj["metrics"], where))
    return done, words, totals


def metrics_table(summary: Dict[str, float], method: str) -> str:
    """The metrics as a Markdown table (the ``dcam eval`` columns)."""
    from ..eval.report import METHOD_LABELS, METRIC_HEADER, markdown_table

    def pct(v, scale=100.0, suffix=""):
        return "n/a" if v is None or v != v else f"{v * scale:.2f}{suffix}"

    cells = [pct(summary.get("obj_iou")), pct(summary.get("contrast"), 1.0, "x"), pct(summary.get("concentration")),
             pct(summary.get("f3")), pct(summary.get("f3_per_map")), pct(summary.get("func_iou")),
             str(summary.get("n_obj", 0)), str(summary.get("n_func", 0))]
    return markdown_table(["method"] + METRIC_HEADER, [[METHOD_LABELS.get(method, method)] + cells])


def write_metrics(root: str, totals: MetricTotals, method: str) -> Dict[str, Any]:
    from ..eval.report import json_ready

    summary = totals.summary()
    report = {"method": method, "records": totals.records, "unaligned_words": totals.unaligned,
              "not_targeted_words": totals.not_targeted, "summary": json_ready(summary)}
    write_json_atomic(os.path.join(root, "metrics.json"), report)
    text = (f"# Metrics of the run ({totals.records} records with masks)\n\n" + metrics_table(summary, method)
            + f"\nWords not aligned to a response token: {totals.unaligned}.\n"
            + (f"Words of the response its record's targets left out (no map, not scored): {totals.not_targeted}.\n"
               if totals.not_targeted else ""))
    write_bytes_atomic(os.path.join(root, "metrics.md"), text.encode())
    return report


def finish(root: str, source, session: Dict[str, Any], identity: Dict[str, Any], header: Dict[str, Any]) -> dict:
    """Merge, reduce and write ``run.json`` (status ``complete`` when every record of the source is done or failed)."""
    merge_index(root, source.ids, source.where)
    ids = set(source.ids)
    done, words, totals = collect(root, ids)
    n_errors = merge_errors(root, done, source.ids)
    metrics = write_metrics(root, totals, identity["method"]) if totals.records else None
    if metrics is None:  # no record with a mask left in the source: no metrics, not those of records taken out
        for name in ("metrics.json", "metrics.md"):
            if os.path.exists(os.path.join(root, name)):
                os.unlink(os.path.join(root, name))
    secs = max(float(session["seconds"]), 1e-9)
    in_source = sum(1 for rid in source.ids if rid in done)
    old = read_run_json(root) or {}
    info = dict(old, **header)
    info.pop("metrics", None)
    info.update(
        status="complete" if in_source + n_errors >= len(source) else "incomplete",
        model=identity["model"], model_class=identity["model_class"], method=identity["method"],
        probe=identity["probe"], layer=identity["layer"], target_score=identity["target_score"],
        steps=identity["steps"], config=identity["config"],
        counts={"records": len(source), "done": in_source, "errors": n_errors, "words": words,
                "index_records": len(done)},
        session=session,
        throughput={"images_per_s": session["records"] / secs, "words_per_s": session["words"] / secs,
                    "processes": session["processes"], "records": session["records"],
                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        files={"index": INDEX if os.path.exists(os.path.join(root, INDEX)) else None, "errors": ERRORS,
               "shards": SHARDS + "/" if os.path.isdir(os.path.join(root, SHARDS)) else None,
               "metrics": "metrics.json" if metrics else None},
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if metrics:
        info["metrics"] = metrics["summary"]
    if not session["records"] and "throughput" in old:  # a resume with nothing left keeps the last measure
        info["throughput"] = old["throughput"]
    write_json_atomic(os.path.join(root, RUN_JSON), info)
    return info


__all__ = ["finish", "collect", "checked_metrics", "MetricTotals", "metrics_table", "write_metrics"]
