"""Scoring a run's records again by this dcam's rules, from what its folder and its source keep.

A record's metrics (its index line's ``metrics``: Obj-IoU, contrast, concentration, F3, Func-IoU of its words) are
computed from its maps, which the folder keeps in its shards, and its masks, which the source keeps. When the
rules change (:data:`dcam.runs.folder.SCORING`), a folder whose records were scored by older ones is resumed as
the same run, and before anything is explained :func:`rescore_index` scores every record of its index again by
the new rules: ``metrics.json`` then averages one rule over every record, and no map is explained again.

A record whose image or masks cannot be read now (a folder moved, a mount down, no permission) or no longer
agree with its words refuses the resume, naming the file, and leaves the run folder as it was: its maps cost
model time, and dropping its line would delete them (:func:`dcam.runs.store.remove_debris`) for what is often a
passing read error. Only a record whose index line or stored maps cannot be read loses its line: it is explained
again (its failure, if any, goes to ``errors.jsonl``, as a new run's would). A record no longer in the source
keeps its line as it is (its masks are gone; its metrics are no longer the run's). The index files are rewritten
by :func:`dcam.runs.store.rewrite_index` (every file written to a temporary copy before any is renamed into
place), so a refusal leaves every file as it was and a kill leaves each file old or new; ``run.json`` says the
new rules only once every file is rewritten, so a resume after a kill scores them again (the same values).
"""
from __future__ import annotations

import json
import os
import sys
from typing import AbstractSet, Optional

from ..errors import InputError, one_line
from .folder import SCORING
from .reader import RunRecord, Shards
from .records import score_record
from .store import INDEX, INDEX_PARTS, json_line, parts, rewrite_index
from .unreadable import drop_index_lines


class StoredExplanation:
    """What :func:`.records.ground_truth` and :func:`.records.record_metrics` read of an explanation, from a
    record's index line and its stored maps (read here), with the image the source gives now (its size places
    the maps)."""

    def __init__(self, record: RunRecord, image=None):
        self.tokens, self.response = record.tokens, record.response
        self.box, self.cells = record.box, record.cells
        self.maps = record.maps
        self.image = image


class _Rescoring:
    """Scores index lines again, leaving out the lines of ``drop``; counts what it did."""

    def __init__(self, root: str, source, drop: AbstractSet[str]):
        self.root, self.source, self.drop = root, source, drop
        self.where = {rid: i for i, rid in enumerate(source.ids)}
        self.shards = Shards(root)
        self.scored = self.dropped = 0

    def to_score(self, obj: dict) -> bool:
        return obj["id"] not in self.drop and obj.get("metrics") is not None and obj["id"] in self.where

    def line(self, raw: bytes, path: str, n: int) -> Optional[bytes]:
        """Line ``n`` of the index file ``path`` scored again; None: the record is explained again."""
        obj = json.loads(raw)  # (every line was read and checked by the scan before)
        if obj["id"] in self.drop:
            return None
        if not self.to_score(obj):
            return raw
        try:  # the run folder's own damage: the record is explained again
            e = StoredExplanation(RunRecord(obj, self.shards, f"run: {path} line {n}"))
        except InputError:
            self.dropped += 1
            return None
        try:  # the source's: refused, nothing changed (it is read again once the files are back)
            rec = self.source.load(self.where[obj["id"]])
            e.image = rec.image
            obj["metrics"] = score_record(rec, e)
        except InputError as exc:
            raise InputError(f"--out: the record {obj['id']!r} of the run in {self.root!r} cannot be scored again "
                             f"by this dcam's rules ({one_line(str(exc))}); the folder is left as it was: make the "
                             "record's files readable and resume again, or pass --overwrite to start over") from None
        self.scored += 1
        return json_line(obj)

    def count(self) -> int:
        """How many lines :meth:`line` will score again (the index files read once more: it is not held)."""
        n = 0
        for path in [os.path.join(self.root, INDEX)] + parts(self.root, INDEX_PARTS):
            if os.path.exists(path):
                with open(path, "rb") as f:
                    n += sum(1 for raw in f if raw.endswith(b"\n") and raw.strip() and self.to_score(json.loads(raw)))
        return n


def rescore_index(root: str, source, before: int, drop: AbstractSet[str] = frozenset()) -> Optional[str]:
    """Score every record of the run folder ``root`` that ``source`` still holds again, from its stored maps
    (``before``: the rules they were scored by), leaving out the lines of the records ``drop`` (their maps cannot
    be read: :class:`.unreadable.UnreadableMaps`); returns the line a resume says (see the module docstring).
    Says on stderr first how many records it scores (each one reads its image and masks). None where no record
    has metrics to score again (a run without masks): it says nothing then (it said "0 records scored again",
    the records "scored by older rules", of a run that scores none), and only takes out the lines of ``drop``."""
    rescoring = _Rescoring(root, source, drop)
    todo = rescoring.count()
    if todo == 0:
        if drop:
            drop_index_lines(root, drop)
        return None
    print(f"dcam: scoring {todo} record{'s' if todo != 1 else ''} of {root!r} again by this dcam's rules "
          f"(scoring {before} -> {SCORING}) from {'their' if todo != 1 else 'its'} stored maps", file=sys.stderr,
          flush=True)
    rewrite_index(root, rescoring.line)
    n, dropped = rescoring.scored, rescoring.dropped
    text = (f"the records of {root!r} were scored by older rules (scoring {before}, this dcam's {SCORING}: "
            f"docs/RUNS.md); {n} record{'s' if n != 1 else ''} scored again from {'their' if n != 1 else 'its'} "
            "stored maps")
    if dropped:
        text += (f", {dropped} whose index line or stored maps could not be read "
                 f"{'are' if dropped != 1 else 'is'} explained again")
    return text


__all__ = ["rescore_index", "StoredExplanation"]
