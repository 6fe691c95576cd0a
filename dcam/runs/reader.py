"""Reading a run folder back, lazily: ``dcam.load_run(DIR)``.

    run = dcam.load_run("out/")
    run.info                 # run.json (model, method, config, counts, throughput)
    for r in run:            # one index line at a time; maps read only when asked for
        r.id, r.tokens, r.response, r.stats, r.steps
        r.maps               # float32 [T, h, w], read from its shard (memory-mapped) on first use
    run.errors               # {id: {"id", "where", "reason"}} of the records that failed
    run.metrics              # metrics.json (None without masks)

Iterating never holds more than one index line and one record's maps (the
shards are opened with ``safetensors.safe_open``, which maps the file and
reads only the tensor asked for), so a run of a million records is read as
easily as one of ten. A run still going, or killed, reads too: its index
parts are read after ``index.jsonl``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, Optional

from ..errors import InputError, one_line
from .store import ERROR_PARTS, ERRORS, INDEX, INDEX_PARTS, RUN_JSON, iter_index, read_errors, read_json


class _Shards:
    """A few open shards (least recently used closed first)."""

    def __init__(self, root: str, keep: int = 4):
        self.root, self.keep = root, keep
        self.open: "OrderedDict[str, object]" = OrderedDict()

    def __getstate__(self):  # open shard handles do not pickle (a record sent to a worker process)
        return {"root": self.root, "keep": self.keep}

    def __setstate__(self, state):
        self.__init__(state["root"], state["keep"])

    def tensor(self, shard: str, key: str):
        from safetensors import safe_open

        h = self.open.pop(shard, None)
        if h is None:
            path = os.path.join(self.root, shard)
            try:
                h = safe_open(path, framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise InputError(f"run: cannot read the shard {path} ({type(exc).__name__}: {one_line(exc)})") \
                    from None
        self.open[shard] = h
        while len(self.open) > self.keep:
            self.open.popitem(last=False)
        return h.get_tensor(key)


class RunRecord:
    """One explained record of a run: the index line's fields, the maps on demand."""

    __slots__ = ("entry", "_shards", "_data")

    def __getstate__(self):
        return {"entry": self.entry, "_shards": self._shards, "_data": self._data}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)

    def __init__(self, entry: dict, shards: _Shards):
        self.entry = entry
        self._shards = shards
        self._data = None

    id = property(lambda self: self.entry["id"])
    tokens = property(lambda self: self.entry["tokens"])
    response = property(lambda self: self.entry["response"])
    steps = property(lambda self: self.entry.get("steps"))
    metrics = property(lambda self: self.entry.get("metrics"))
    @property
    def box(self):
        """(x0, y0, x1, y1), fractions of the image the maps cover (a model that saw a crop), else the whole."""
        from ..render.overlay import FULL_BOX  # (here: reading a run's index needs no image code)

        return tuple(self.entry.get("box") or FULL_BOX)

    @property
    def cells(self):
        """Where the columns and rows of a stitched map lie in the box (:class:`dcam.render.cells.Cells`), else
        None (evenly over it)."""
        from ..render.cells import Cells

        c = self.entry.get("cells")
        return None if c is None else Cells.from_dict(c)

    @property
    def stats(self) -> Dict[str, "object"]:
        """Per-map statistics, each a ``[T]`` tensor."""
        import torch

        return {k: torch.tensor([float("nan") if v is None else v for v in vals])
                for k, vals in self.entry.get("stats", {}).items()}

    @property
    def maps(self):
        """float32 ``[T, h, w]``, read from the shard on first use."""
        if self._data is None:
            self._data = self._shards.tensor(self.entry["shard"], self.entry["key"])
        return self._data

    @property
    def trajectory(self):
        """float32 ``[S, T, h, w]`` (the maps at each denoising step) when the run stored one, else None."""
        if "trajectory_shape" not in self.entry:
            return None
        return self._shards.tensor(self.entry["shard"], self.entry["key"] + ".trajectory")

    @property
    def view(self):
        """The explained view of a multi-view image (None for a single-view model)."""
        return self.entry.get("view")

    @property
    def view_boxes(self) -> Dict[str, tuple]:
        """Where each view's maps lie on the image (view name -> ``(x0, y0, x1, y1)``) when the run
        explained ``view="all"``, else ``{}``."""
        return {view: tuple(b) for view, b in (self.entry.get("view_boxes") or {}).items()}

    @property
    def view_cells(self) -> Dict[str, "object"]:
        """Where the columns and rows of each view's stitched map lie in its box (view name ->
        :class:`dcam.render.cells.Cells`) for the views that have them, when the run explained ``view="all"``;
        a view without an entry is drawn evenly over its box."""
        from ..render.cells import Cells

        return {view: Cells.from_dict(c) for view, c in (self.entry.get("view_cells") or {}).items()}

    @property
    def view_maps(self) -> Dict[str, "object"]:
        """Every view's maps (view name -> float32 ``[T, h, w]``) when the run explained
        ``view="all"``, else ``{}``; read from the shard on each use."""
        return {view: self._shards.tensor(self.entry["shard"], f"{self.entry['key']}.view.{view}")
                for view in self.entry.get("view_shapes", {})}

    def __repr__(self) -> str:
        return f"RunRecord(id={self.id!r}, tokens={self.tokens!r})"


class Run:
    """A run folder (see the module docstring)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        has = [os.path.exists(os.path.join(self.root, p)) for p in (INDEX, INDEX_PARTS, RUN_JSON, ERRORS,
                                                                   ERROR_PARTS)]
        if not os.path.exists(self.root):
            raise InputError(f"run: no such folder {root!r}")
        if os.path.isdir(self.root) and not os.access(self.root, os.R_OK | os.X_OK):  # (said "holds no dcam run")
            raise InputError(f"run: cannot read the folder {root!r} (permission denied)")
        if not os.path.isdir(self.root) or not any(has):
            raise InputError(f"run: {root!r} holds no dcam run (no {INDEX}, {INDEX_PARTS}/ or {RUN_JSON})")
        self._shards = _Shards(self.root)

    def _json(self, name: str):
        """The folder's ``name`` (None when absent); an unreadable one is an InputError naming it."""
        return read_json(os.path.join(self.root, name), "run")

    @property
    def info(self) -> dict:
        return self._json(RUN_JSON) or {}

    @property
    def metrics(self) -> Optional[dict]:
        return self._json("metrics.json")

    def entries(self) -> Iterator[dict]:
        """The index lines, lazily."""
        return iter_index(self.root)

    def __iter__(self) -> Iterator[RunRecord]:
        for entry in iter_index(self.root):
            yield RunRecord(entry, self._shards)

    def records(self, ids: Optional[Iterable[str]] = None) -> Iterator[RunRecord]:
        """The records (only those in ``ids`` when given: a list of ids; ints are read as the
        texts they are stored as), lazily, in index order."""
        if isinstance(ids, (str, bytes)):  # a text was read as its characters: nothing matched
            raise InputError(f"ids must be a list of record ids, got the text {ids!r} (give [{ids!r}])")
        want = None if ids is None else {str(i) for i in ids}
        for r in self:
            if want is None or r.id in want:
                yield r

    def __len__(self) -> int:
        return sum(1 for _ in iter_index(self.root))

    @property
    def errors(self) -> Dict[str, dict]:
        done = {e["id"] for e in iter_index(self.root)}
        return read_errors(self.root, done)

    def __repr__(self) -> str:
        return f"Run({self.root!r})"


def load_run(folder: str) -> Run:
    """The run in ``folder`` (``dcam run --out``), read lazily (see the module docstring)."""
    return Run(folder)


__all__ = ["load_run", "Run", "RunRecord"]
