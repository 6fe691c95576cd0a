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
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from ..errors import InputError, one_line
from ..fields import Fields, finite_number, whole
from ..render.overlay import FULL_BOX
from .finish import checked_metrics
from .store import ERROR_PARTS, ERRORS, INDEX, INDEX_PARTS, RUN_JSON, index_lines, index_shard, read_errors, \
    read_json


class Shards:
    """A few open shards (least recently used closed first)."""

    def __init__(self, root: str, keep: int = 4):
        self.root, self.keep = root, keep
        self.open: "OrderedDict[str, object]" = OrderedDict()

    def __getstate__(self):  # open shard handles do not pickle (a record sent to a worker process)
        return {"root": self.root, "keep": self.keep}

    def __setstate__(self, state):
        self.__init__(state["root"], state["keep"])

    def tensor(self, shard: str, key: str, where: str = "run"):
        """The tensor ``key`` of ``shard`` (``where``: the index line that names them, for a message)."""
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
        if key not in h.keys():  # (get_tensor's SafetensorError, a traceback: an index line's key damaged)
            raise InputError(f"{where}: key {key!r} is not a tensor of the shard {os.path.join(self.root, shard)}")
        return h.get_tensor(key)


class RunRecord:
    """One explained record of a run: the index line's fields, the maps on demand.

    Each field is checked when it is read (as the maps are read when asked for): a damaged
    index line (a cell count that is not the grid's, a box out of order, a text where numbers
    belong) is an InputError naming the file, the line, the record and the field, not a
    traceback, or a picture drawn wrong, later. :attr:`entry` is the line as it was read."""

    __slots__ = ("entry", "_shards", "_data", "_at")

    def __getstate__(self):
        return {"entry": self.entry, "_shards": self._shards, "_data": self._data, "_at": self._at}

    def __setstate__(self, state):
        self._at = "run: an index line"  # (a record pickled before it kept its place)
        for k, v in state.items():
            setattr(self, k, v)

    def __init__(self, entry: dict, shards: Shards, at: str = "run: an index line"):
        self.entry = entry
        self._shards = shards
        self._data = None
        self._at = f"{at}, record {entry.get('id')!r}"  # where the line is: the start of every message about it

    @property
    def _fields(self) -> Fields:
        return Fields(self.entry, self._at)

    id = property(lambda self: self.entry["id"])  # (a text: checked as the line was read, :func:`.store.read_lines`)
    tokens = property(lambda self: self._fields.texts("tokens"))
    response = property(lambda self: self._fields.text("response"))
    steps = property(lambda self: self._fields.int("steps", None, none=True, lo=1))
    view = property(lambda self: self._fields.text("view", None, none=True),
                    doc="The explained view of a multi-view image (None for a single-view model).")
    image = property(lambda self: self._fields.text("image", None, none=True),
                     doc="The path of the record's image (None where the run read none from a file).")
    notes = property(lambda self: self._fields.texts("notes", []))
    where = property(lambda self: self._fields.text("where", None, none=True),
                     doc="Where the record is in the run's source (``line 12``; None: taken out of it since).")

    @property
    def metrics(self) -> Optional[dict]:
        """The record's metrics (with a mask), else None."""
        v = self.entry.get("metrics")
        return None if v is None else checked_metrics(v, self._at)

    @property
    def word_numbers(self) -> List[int]:
        """The number of the response's word each explained item belongs to (one per token)."""
        numbers = self._fields.ints("word_numbers")
        if len(numbers) != len(self.tokens):
            raise self._fields.bad("word_numbers", f"one whole number per token ({len(self.tokens)})")
        return numbers

    @property
    def grid(self) -> Tuple[int, int]:
        """``(h, w)``, the maps' grid."""
        return self._fields.grid()

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        """``(W, H)`` of the image explained (None where the line has none)."""
        size = self.entry.get("image_size")
        if size is None:
            return None
        if not isinstance(size, list) or len(size) != 2 or not all(whole(v) and v > 0 for v in size):
            raise self._fields.bad("image_size", "two positive whole numbers [W, H]")
        return (size[0], size[1])

    @property
    def box(self) -> Tuple[float, float, float, float]:
        """(x0, y0, x1, y1), fractions of the image the maps cover (a model that saw a crop), else the whole."""
        return self._fields.box() if self.entry.get("box") is not None else FULL_BOX

    @property
    def cells(self):
        """Where the columns and rows of a stitched map lie in the box (:class:`dcam.render.cells.Cells`), else
        None (evenly over it)."""
        return self._fields.cells("cells", self.grid, self.box)

    def stats_lists(self) -> Dict[str, list]:
        """Per-map statistics as the index holds them: one list of ``T`` numbers or bools (None: NaN) each."""
        stats, T = self._fields.value("stats", {}), len(self.tokens)
        if not isinstance(stats, dict) or not all(
                isinstance(vals, list) and len(vals) == T and all(v is None or isinstance(v, bool) or finite_number(v)
                                                                  for v in vals)
                for vals in stats.values()):
            raise self._fields.bad("stats", f"an object of lists of numbers, true/false or nulls, one per token ({T})")
        return {k: list(vals) for k, vals in stats.items()}

    @property
    def stats(self) -> Dict[str, "object"]:
        """Per-map statistics, each a ``[T]`` tensor."""
        import torch

        return {k: torch.tensor([float("nan") if v is None else v for v in vals])
                for k, vals in self.stats_lists().items()}

    def _tensor(self, suffix: str, shape, field: str):
        """The tensor ``<key><suffix>`` of the record's shard, which must be ``shape`` (what the line's ``field``
        says it is: else its grid, cells and boxes are another record's)."""
        key = self.entry.get("key")
        t = self._shards.tensor(index_shard(self.entry, self._at), key + suffix, self._at)
        if tuple(t.shape) != tuple(shape):
            raise InputError(f"{self._at}: by its {field} the maps are {list(shape)}, but {key + suffix} in "
                             f"{self.entry['shard']} is {list(t.shape)}")
        return t

    @property
    def maps(self):
        """float32 ``[T, h, w]``, read from the shard on first use."""
        if self._data is None:
            self._data = self._tensor("", (len(self.tokens), *self.grid), "tokens and grid")
        return self._data

    @property
    def trajectory(self):
        """float32 ``[S, T, h, w]`` (the maps at each denoising step) when the run stored one, else None."""
        if "trajectory_shape" not in self.entry:
            return None
        shape = self._fields.ints("trajectory_shape")
        if len(shape) != 4 or shape[0] < 1 or shape[1:] != [len(self.tokens), *self.grid]:
            raise self._fields.bad("trajectory_shape", f"[S, {len(self.tokens)}, *grid] (S >= 1)")
        return self._tensor(".trajectory", shape, "trajectory_shape")

    def _view_shapes(self) -> Dict[str, List[int]]:
        """Each view's maps' shape ``[T, h, w]`` (view name -> shape) with ``view="all"``."""
        shapes, T = self._fields.value("view_shapes", {}), len(self.tokens)
        if not isinstance(shapes, dict) or not all(
                isinstance(s, list) and len(s) == 3 and s[0] == T and all(whole(v) and v > 0 for v in s[1:])
                for s in shapes.values()):
            raise self._fields.bad("view_shapes", f"an object of [{T}, h, w] shapes")
        return shapes

    @property
    def view_boxes(self) -> Dict[str, tuple]:
        """Where each view's maps lie on the image (view name -> ``(x0, y0, x1, y1)``) when the run
        explained ``view="all"``, else ``{}``."""
        boxes, views = self._fields.value("view_boxes", {}), self._view_shapes()
        if not isinstance(boxes, dict) or not set(boxes) <= set(views):
            raise self._fields.bad("view_boxes", f"a box for some of its views ({', '.join(sorted(views)) or 'none'})")
        inner = Fields(boxes, f"{self._at}: view_boxes")
        return {view: inner.box(view) for view in boxes}

    @property
    def view_cells(self) -> Dict[str, "object"]:
        """Where the columns and rows of each view's stitched map lie in its box (view name ->
        :class:`dcam.render.cells.Cells`) for the views that have them, when the run explained ``view="all"``;
        a view without an entry is drawn evenly over its box."""
        cells, boxes, shapes = self._fields.value("view_cells", {}), self.view_boxes, self._view_shapes()
        if not isinstance(cells, dict) or not set(cells) <= set(boxes):
            raise self._fields.bad("view_cells", f"cell centres of some of its boxed views "
                                                 f"({', '.join(sorted(boxes)) or 'none'})")
        inner = Fields(cells, f"{self._at}: view_cells")
        placed = {view: inner.cells(view, shapes[view][1:], boxes[view]) for view in cells}
        return {view: c for view, c in placed.items() if c is not None}

    @property
    def view_maps(self) -> Dict[str, "object"]:
        """Every view's maps (view name -> float32 ``[T, h, w]``) when the run explained
        ``view="all"``, else ``{}``; read from the shard on each use."""
        return {view: self._tensor(f".view.{view}", shape, "view_shapes")
                for view, shape in self._view_shapes().items()}

    def __repr__(self) -> str:
        return f"RunRecord(id={self.id!r}, tokens={self.entry.get('tokens')!r})"


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
        if not os.path.isdir(self.root):  # (said "holds no dcam run")
            raise InputError(f"run: cannot read the folder {root!r}: a file is in its place")
        if not any(has):
            # an explanation's save (dcam explain --out, e.save) is no run, but its page is already there
            saved = all(os.path.isfile(os.path.join(self.root, n)) for n in ("meta.json", "maps.safetensors",
                                                                               "index.html"))
            raise InputError(f"run: {root!r} holds no dcam run (no {INDEX}, {INDEX_PARTS}/ or {RUN_JSON})"
                             + ("; it holds a saved explanation, whose page is its index.html" if saved else ""))
        self._shards = Shards(self.root)

    def _json(self, name: str):
        """The folder's ``name`` (None when absent); an unreadable one is an InputError naming it."""
        return read_json(os.path.join(self.root, name), "run")

    @property
    def info(self) -> dict:
        return self._json(RUN_JSON) or {}

    @property
    def metrics(self) -> Optional[dict]:
        return self._json("metrics.json")

    def _lines(self) -> Iterator[tuple]:
        """(file, line number, object) of the index lines, lazily; a file or folder of the run that cannot
        be read (a folder in the index's place, an index part without permission) is an InputError naming it
        (it was the OSError's traceback; glob said an unlistable parts folder held nothing)."""
        try:
            yield from index_lines(self.root)
        except OSError as exc:
            raise _unreadable(exc) from None

    def entries(self) -> Iterator[dict]:
        """The index lines as they were read (unchecked: a :class:`RunRecord` checks each field it gives), lazily."""
        return (obj for _, _, obj in self._lines())

    def __iter__(self) -> Iterator[RunRecord]:
        for path, n, entry in self._lines():
            yield RunRecord(entry, self._shards, f"run: {path} line {n}")

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
        return sum(1 for _ in self._lines())

    @property
    def errors(self) -> Dict[str, dict]:
        done = {e["id"] for _, _, e in self._lines()}
        try:
            return read_errors(self.root, done)
        except OSError as exc:
            raise _unreadable(exc) from None

    def __repr__(self) -> str:
        return f"Run({self.root!r})"


def _unreadable(exc: OSError) -> InputError:
    """A file or folder of the run that could not be read (:func:`.store.read_failed`) as an InputError naming it."""
    path = getattr(exc, "read_path", None) or exc.filename
    return InputError(f"run: cannot read {path!r} ({type(exc).__name__}: {exc.strerror or one_line(exc)})")


def load_run(folder: str) -> Run:
    """The run in ``folder`` (``dcam run --out``), read lazily (see the module docstring)."""
    return Run(folder)


__all__ = ["load_run", "Run", "RunRecord"]
