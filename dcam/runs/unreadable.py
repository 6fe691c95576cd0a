"""Index lines whose maps cannot be read, found by a resume and taken out so their records are explained again.

A shard can be missing (a partial copy or rsync of the folder), cut short (a disk that filled, a copy
interrupted) or lack a tensor an index line names, though the line was written after its shard was in
place: the damage came from outside. A resume used to skip such records as done, call the run complete,
and leave maps that ``load_run`` and ``dcam view`` could not read, which only ``--overwrite`` (dropping
every good shard) redid. Now rank 0 opens each shard the index names once (its safetensors header: the
file exists, is whole and lists its tensors) while it scans the index before the run
(:func:`dcam.runs.folder.prepare`), and the lines of the records whose tensors cannot be read are removed
from the index files (:func:`drop_index_lines`) before any rank reads the index: every rank then sees
these records as not done, they are explained again, and each ends with one index line. A shard no line
points to any more is deleted as debris (:func:`dcam.runs.store.remove_debris`).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Union

from ..errors import one_line
from .store import index_shard, read_failed, rewrite_index

MISSING, CUT, KEYS = "missing", "cut short or damaged", "lacking the record's tensors"


def line_keys(obj: dict) -> List[str]:
    """The tensors of the shard an index line stands for (:class:`dcam.runs.writer.RecordWriter`): its maps, its
    trajectory when it has one, each view's maps with ``view="all"``. (A damaged field is not guessed at here:
    ``load_run`` names it when the field is read.)"""
    key = obj["key"]
    out = [key]
    if "trajectory_shape" in obj:
        out.append(f"{key}.trajectory")
    views = obj.get("view_shapes")
    if isinstance(views, dict):
        out += [f"{key}.view.{view}" for view in views]
    return out


class UnreadableMaps:
    """Called with every index line (after its shard and key were checked: :func:`dcam.runs.store.scan_index`):
    opens each shard once and keeps the ids of the records of ``in_source`` whose tensors cannot be read, with
    why (:attr:`redo`). A record no longer in the source cannot be explained again: its line is kept, and
    counted in :attr:`kept`."""

    def __init__(self, root: str, in_source: Callable[[str], bool]):
        self.root, self.in_source = root, in_source
        self.shards: Dict[str, Union[FrozenSet[str], str]] = {}  # shard -> its tensors' names, or why unreadable
        self.redo: Dict[str, str] = {}  # record id -> why
        self.kept = 0
        self.damaged: Set[str] = set()  # the shards of those lines

    def _open(self, shard: str) -> Union[FrozenSet[str], str]:
        from safetensors import SafetensorError, safe_open

        path = os.path.join(self.root, shard)
        try:
            with safe_open(path, framework="pt") as f:
                return frozenset(f.keys())
        except FileNotFoundError:
            return MISSING
        except SafetensorError:  # (a header cut short or not JSON, a file its header does not cover)
            return CUT
        except OSError as exc:  # no permission, an I/O error: made readable, its maps are there (the run is refused
            raise read_failed(exc, path)  # naming it, as for an index part it cannot read; nothing is dropped)

    def __call__(self, obj: dict) -> None:
        shard = index_shard(obj, "run")  # (checked by the scan already: never raises here)
        keys = self.shards.get(shard)
        if keys is None:
            keys = self.shards[shard] = self._open(shard)
        why = keys if isinstance(keys, str) else KEYS if not set(line_keys(obj)) <= keys else None
        if why is None:
            return
        self.damaged.add(shard)
        if self.in_source(obj["id"]):
            self.redo[obj["id"]] = why
        else:
            self.kept += 1

    def summary(self) -> str:
        """One line: how many records are explained again, and why."""
        counts: Dict[str, int] = {}
        for why in self.redo.values():
            counts[why] = counts.get(why, 0) + 1
        bad = sorted(self.damaged)
        n = len(self.redo)
        text = (f"{n} record{'s' if n != 1 else ''} of the index of {self.root!r} cannot be read and "
                f"{'are' if n != 1 else 'is'} explained again (their shard "
                + ", ".join(f"{why}: {c}" for why, c in counts.items()) + ")")
        if bad:
            text += f"; {len(bad)} shard{'s' if len(bad) != 1 else ''} missing or damaged, the first {bad[0]}"
        if self.kept:
            text += (f"; {self.kept} more record{'s' if self.kept != 1 else ''} no longer in the manifest "
                     "keep lines whose maps cannot be read")
        return text


def drop_index_lines(root: str, ids: Set[str]) -> None:
    """Rewrite every index file (``index.jsonl`` and the parts, also a part it already holds) without the lines
    of ``ids`` (:func:`dcam.runs.store.rewrite_index`: a kill leaves each file old or new, and a line dropped
    from one file and not yet from another is dropped by the next resume)."""
    # (every line was read and checked by the scan before)
    rewrite_index(root, lambda raw, path, n: None if json.loads(raw)["id"] in ids else raw)


def unreadable_notice(check: Optional[UnreadableMaps]) -> Optional[str]:
    """The line a resume says when it explains records again, or None."""
    if check is None or not check.redo:
        return None
    return one_line(check.summary())


__all__ = ["UnreadableMaps", "drop_index_lines", "line_keys", "unreadable_notice"]
