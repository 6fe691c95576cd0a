"""One process's writer: records buffered into safetensors shards, index
lines appended after their shard is in place, error lines, overlays
(the write order is explained in :mod:`.store`)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from typing import Dict, List, Tuple

from .store import ERROR_PARTS, INDEX_PARTS, SHARDS, LineWriter, write_bytes_atomic

#: Format tag in every shard's safetensors metadata.
SHARD_FORMAT = "dcam-run-shard/1"


def record_folder_name(rid: str) -> str:
    """A file-system-safe, collision-free folder name for a record id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", rid).strip("._")[:60] or "record"
    return f"{safe}-{hashlib.sha1(rid.encode()).hexdigest()[:8]}"


class RecordWriter:
    """Buffers explained records and commits them a shard at a time.

    A shard is committed when it holds ``shard_size`` records, or when its
    first record has waited ``shard_seconds`` (so a slow model loses little
    work to a kill), and at :meth:`close`."""

    def __init__(self, root: str, part: str, shard_size: int = 256, shard_seconds: float = 120.0):
        self.root, self.part = root, part
        self.shard_size, self.shard_seconds = int(shard_size), float(shard_seconds)
        self.index = LineWriter(os.path.join(root, INDEX_PARTS, f"{part}.jsonl"))
        self.errors = LineWriter(os.path.join(root, ERROR_PARTS, f"{part}.jsonl"))
        self.buffer: List[Tuple[dict, object]] = []
        self.first_at = 0.0
        self.shards = 0
        self.committed = 0

    def add(self, entry: dict, maps, trajectory=None, view_maps=None) -> None:
        """Queue one record: its index ``entry``, its ``maps`` ``[T,h,w]`` and,
        if any, its map trajectory ``[S,T,h,w]`` and every view's maps
        (``view="all"``: view name -> ``[T,h',w']``)."""
        if not self.buffer:
            self.first_at = time.monotonic()
        self.buffer.append((dict(entry, part=self.part), (maps, trajectory, dict(view_maps or {}))))
        if len(self.buffer) >= self.shard_size or time.monotonic() - self.first_at >= self.shard_seconds:
            self.commit()

    def error(self, rid: str, where: str, reason: str) -> None:
        self.errors.write([{"id": rid, "where": where, "reason": reason, "part": self.part}])

    def commit(self) -> int:
        """Write the buffered records' shard, then their index lines; returns how many."""
        if not self.buffer:
            return 0
        from safetensors.torch import save

        # the buffer and the shard name are taken first: a Ctrl-C after the index lines were written
        # made close() commit the same records again (each twice in the index: the run then refused
        # to resume); now an interrupted commit's records are at worst explained again on resume
        buffer, self.buffer = self.buffer, []
        name = os.path.join(SHARDS, f"{self.part}-{self.shards:05d}.safetensors")
        self.shards += 1
        tensors: Dict[str, object] = {}
        entries = []
        for k, (entry, (maps, traj, views)) in enumerate(buffer):
            key = f"r{k:06d}"
            tensors[key] = maps.detach().float().cpu().contiguous()
            entry = dict(entry, shard=name, key=key, maps_shape=list(maps.shape))
            if traj is not None:
                tensors[f"{key}.trajectory"] = traj.detach().float().cpu().contiguous()
                entry["trajectory_shape"] = list(traj.shape)
            for view, vmaps in views.items():
                # clone: the default view's maps are the record's maps (safetensors refuses shared storage)
                tensors[f"{key}.view.{view}"] = vmaps.detach().float().cpu().clone()
            if views:
                entry["view_shapes"] = {view: list(vmaps.shape) for view, vmaps in views.items()}
            entries.append(entry)
        os.makedirs(os.path.join(self.root, SHARDS), exist_ok=True)
        write_bytes_atomic(os.path.join(self.root, name), save(tensors, metadata={"format": SHARD_FORMAT}))
        self.index.write(entries)
        self.committed += len(entries)
        return len(entries)

    def close(self) -> None:
        self.commit()
        self.index.close()
        self.errors.close()


def write_overlays(root: str, e, rid: str) -> str:
    """``DIR/overlays/<record>-<hash>/NN_word.png``: one overlay per explained word,
    the folder renamed into place whole (a redone record replaces it)."""
    from ..explanation import word_file_names

    parent = os.path.join(root, "overlays")
    os.makedirs(parent, exist_ok=True)
    final = os.path.join(parent, record_folder_name(rid))
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    try:
        for k, name in enumerate(word_file_names(e.word_numbers, e.tokens, "png")):
            e.overlay(k).save(os.path.join(tmp, name))
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:  # a failed write (disk full) left its half-written folder until the next start
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.relpath(final, root)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["RecordWriter", "write_overlays", "record_folder_name", "SHARD_FORMAT"]
