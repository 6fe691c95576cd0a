"""Scoring a run's records again by this dcam's rules, from what its folder and its source keep.

A record's metrics (its index line's ``metrics``: Obj-IoU, contrast, concentration, F3, Func-IoU of its words) are
computed from its maps, which the folder keeps in its shards, and its masks, which the source keeps. When the
rules change (:data:`dcam.runs.folder.SCORING`), a folder whose records were scored by older ones is resumed as
the same run, and before anything is explained :func:`rescore_index` scores every record of its index again by
the new rules: ``metrics.json`` then averages one rule over every record, and no map is explained again. A record
whose files can no longer be read (its image or mask gone or damaged, its words' labels not in the mask), or
whose index line cannot be read, loses its line: it is explained again, and its failure goes to ``errors.jsonl``,
as a new run's would. A record no longer in the source keeps its line as it is (its masks are gone; its metrics
are no longer the run's). Each index file is rewritten whole (a temporary copy renamed into place, as
:func:`dcam.runs.unreadable.drop_index_lines` does), so a kill leaves each file old or new; ``run.json`` says the
new rules only once every file is rewritten, so a resume after a kill scores them again (the same values).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from ..errors import InputError
from .folder import SCORING
from .reader import RunRecord, _Shards
from .records import ground_truth, record_metrics
from .store import INDEX, INDEX_PARTS, _unlink_quietly, fsync_dir, json_line, parts


class StoredExplanation:
    """What :func:`.records.ground_truth` and :func:`.records.record_metrics` read of an explanation, from a
    record's index line and its stored maps, with the image the source gives now (its size places the maps)."""

    def __init__(self, record: RunRecord, image):
        self.tokens, self.response = record.tokens, record.response
        self.box, self.cells = record.box, record.cells
        self.maps = record.maps
        self.image = image


class _Rescoring:
    """Scores index lines again; counts what it did."""

    def __init__(self, root: str, source):
        self.root, self.source = root, source
        self.where = {rid: i for i, rid in enumerate(source.ids)}
        self.shards = _Shards(root)
        self.scored = self.dropped = 0

    def metrics(self, obj: dict, at: str) -> dict:
        """The metrics of the record of index line ``obj`` by this dcam's rules; InputError when its files or its
        line cannot be read."""
        rec = self.source.load(self.where[obj["id"]])
        e = StoredExplanation(RunRecord(obj, self.shards, at), rec.image)
        truth = ground_truth(rec, e)
        return None if truth is None else record_metrics(
            e, truth, targeted=not (isinstance(rec.targets, str) and rec.targets == "all"))

    def line(self, raw: bytes, path: str, n: int) -> Optional[bytes]:
        """Line ``n`` of the index file ``path`` scored again; None: the record is explained again."""
        obj = json.loads(raw)  # (every line was read and checked by the scan before)
        if obj.get("metrics") is None or obj["id"] not in self.where:
            return raw
        try:
            obj["metrics"] = self.metrics(obj, f"run: {path} line {n}")
        except InputError:
            self.dropped += 1
            return None
        self.scored += 1
        return json_line(obj)

    def rewrite(self, path: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(path, "rb") as f, open(tmp, "wb") as out:
                for n, raw in enumerate(f, 1):
                    if not raw.endswith(b"\n"):  # (a write cut short: not data, as every reader takes it)
                        break
                    new = self.line(raw, path, n) if raw.strip() else raw
                    if new is not None:
                        out.write(new)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(path))
        finally:  # (after the rename there is nothing left to remove)
            _unlink_quietly(tmp)


def rescore_index(root: str, source, before: int) -> str:
    """Score every record of the run folder ``root`` that ``source`` still holds again, from its stored maps
    (``before``: the rules they were scored by); returns the line a resume says (see the module docstring)."""
    rescoring = _Rescoring(root, source)
    for path in [os.path.join(root, INDEX)] + parts(root, INDEX_PARTS):
        if os.path.exists(path):
            rescoring.rewrite(path)
    n, dropped = rescoring.scored, rescoring.dropped
    text = (f"the records of {root!r} were scored by older rules (scoring {before}, this dcam's {SCORING}: "
            f"docs/RUNS.md); {n} record{'s' if n != 1 else ''} scored again from {'their' if n != 1 else 'its'} "
            "stored maps")
    if dropped:
        text += (f", {dropped} whose files or index line could not be read {'are' if dropped != 1 else 'is'} "
                 "explained again")
    return text


__all__ = ["rescore_index", "StoredExplanation"]
