"""``run_dataset``: explain every record of a source into a run folder, on one
process or on every rank of a torchrun job, resumable.

Each rank takes a deterministic share: the records in blocks of
``batch_size`` consecutive records (source order), block ``k`` to rank
``k mod world``; a block is one ``explain_batch`` call (minus the records
already in the index, and those whose files are bad). So a run on N ranks
explains every record in the same batch as a run on one process does.

A record that cannot be explained (its image or mask unreadable, a target
or label word not in the response: any :class:`dcam.InputError`) goes to
``errors.jsonl`` and the run goes on; a batch that fails is explained again
record by record so only the bad records are lost. Anything else is a bug
and stops the run (what was committed stays; a rerun resumes).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from ..batch_inputs import example_text
from ..errors import InputError, one_line, positive_int
from ..render.overlay import FULL_BOX
from ..output import refuse_current_folder, refuse_inputs_inside
from .distributed import Dist
from ..provenance import explainer_record, machine, versions
from .folder import SCORED_KINDS, SCORING, FolderLock, prepare, read_run_json, run_identity
from .finish import finish
from .progress import RunProgress
from ..eval.alignment import item_slots
from .records import score_record
from .rescore import rescore_index
from .sources import RunSource
from .store import ERROR_PARTS, INDEX_PARTS, part_name, parts, scan_index
from .unreadable import UnreadableMaps, unreadable_notice
from .writer import RecordWriter, write_overlays

T = TypeVar("T")


@dataclass
class RunOptions:
    """How to run (see ``dcam run --help``). probe/target_score/steps/response_length: passed
    to ``explain_batch`` (None: the explainer's defaults; response_length only matters to
    records without a response); prompt: for records without one; memory_budget: bytes
    (recorded; applied by the explainer)."""

    batch_size: int = 8
    shard_size: int = 256
    shard_seconds: float = 120.0
    probe: Optional[str] = None
    target_score: Optional[str] = None
    steps: Optional[int] = None
    response_length: Optional[int] = None
    prompt: Optional[str] = None
    overlays: bool = False
    overwrite: bool = False
    memory_budget: Optional[int] = None
    trajectory: bool = False
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)
    #: the command line and folder it ran in (``dcam.provenance.command``), recorded in run.json; None: not a command
    command: Optional[Dict[str, Any]] = None
    #: further (what, path) pairs --overwrite must not delete (the CLI adds the model's folder)
    protect: Tuple[Tuple[str, str], ...] = ()


def share(source: RunSource, done, batch_size: int, rank: int, world: int) -> List[List[int]]:
    """This rank's batches: source indices, blocks of ``batch_size``, block k to rank k mod world."""
    out = []
    for start in range(rank * batch_size, len(source), world * batch_size):
        block = [i for i in range(start, min(start + batch_size, len(source))) if source.ids[i] not in done]
        if block:
            out.append(block)
    return out


def _json_safe(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def index_entry(rec, e, metrics: Optional[dict]) -> dict:
    """The index line of one explained record (shard and key are added when its shard is written)."""
    entry = {
        "id": rec.id, "n": rec.n, "where": rec.where, "image": rec.image_path, "image_size": list(e.image.size),
        "prompt": e.prompt, "response": e.response, "response_tokens": list(e.response_tokens),
        "response_ids": [int(v) for v in e.response_ids], "tokens": list(e.tokens),
        "token_ids": [int(v) for v in e.token_ids], "word_numbers": [int(v) for v in e.word_numbers],
        "response_indices": [int(v) for v in e.response_indices], "pieces": item_slots(e), "steps": int(e.steps),
        "steps_source": e.steps_source, "grid": list(e.grid), "stats": e.stats_lists(),
        "scores": e.scores.float().tolist(), "notes": list(rec.notes) + list(e.notes)}
    if e.view is not None:
        entry["view"] = e.view
    box = tuple(float(v) for v in getattr(e, "box", FULL_BOX))
    if box != FULL_BOX:  # a model that saw a crop: where on the image its maps lie
        entry["box"] = list(box)
    if getattr(e, "view_boxes", None):  # view="all": where each view's maps lie
        entry["view_boxes"] = {view: [float(v) for v in b] for view, b in e.view_boxes.items()}
    if getattr(e, "cells", None) is not None:  # a stitched map: where its columns and rows lie in the box
        entry["cells"] = e.cells.as_dict()
    if getattr(e, "view_cells", None):
        entry["view_cells"] = {view: c.as_dict() for view, c in e.view_cells.items()}
    if metrics is not None:
        entry["metrics"] = metrics
    if rec.meta is not None:
        entry["meta"] = rec.meta
    digest = getattr(rec, "digest", None)  # (a record object of the caller's may not have one)
    if digest is not None:
        entry["source_digest"] = digest
    return _json_safe(entry)


def check_run_prompt(prompt, name: str = "prompt") -> None:
    """The run's prompt (for records without one) is refused before anything is written: an
    empty one sent every record to errors.jsonl and was fingerprinted into the folder."""
    if prompt is not None and not (isinstance(prompt, str) and prompt.strip()):
        raise InputError(f"{name}: must be a non-empty text or None, got {prompt!r}")


def check_run_options(explainer, opts: RunOptions) -> RunOptions:
    """Every option is refused before the folder is touched: a bad steps, probe or target score
    sent every record to errors.jsonl under a fingerprint of the bad value, a batch size of 0
    was range()'s ValueError, and a shard size of 0 wrote a shard per record unasked. Returns
    ``opts`` with its counts as plain ints (a numpy int passed the check, then failed run.json's
    JSON write with a TypeError, leaving the folder locked)."""
    import dataclasses
    import numbers

    counts = {name: positive_int(name, getattr(opts, name), allow_none=False) for name in ("batch_size", "shard_size")}
    for name in ("steps", "response_length", "memory_budget"):
        counts[name] = positive_int(name, getattr(opts, name))
    opts = dataclasses.replace(opts, **counts)
    s = opts.shard_seconds
    if isinstance(s, bool) or not isinstance(s, numbers.Real) or not s > 0 or not math.isfinite(s):
        raise InputError(f"shard_seconds must be a number of seconds > 0, got {s!r}")
    for name in ("overlays", "overwrite", "trajectory", "progress"):
        if not isinstance(getattr(opts, name), bool):
            raise InputError(f"{name} must be True or False, got {getattr(opts, name)!r}")
    check_run_prompt(opts.prompt)
    explainer._checked_request(opts.probe, opts.target_score)
    # a trajectory of view="all": refused here for a model that declares several views, though a run's images
    # may differ (LaViDa without anyres makes the base view alone: explain() traces those), since every image
    # with several went to errors.jsonl; a model declaring one view, or none (each image tells), runs and a
    # record whose image has several fails alone (dcam run refused up front, the API failed every record)
    from ..explain import declared_image_views

    views = declared_image_views(explainer.adapter) or ()
    if opts.trajectory and explainer.view == "all" and len(views) > 1:
        raise InputError("view: a trajectory maps one image view at a time (view='all' is not supported); "
                         f"pick one of {', '.join(views)}")
    # a family with a fixed response layout (the bundled model) refuses other lengths for every record alike
    fixed_layout = getattr(explainer.adapter, "check_response_length", None)
    if opts.response_length is not None and fixed_layout is not None:
        fixed_layout(opts.response_length)
    return opts


def _prompt(rec, opts: RunOptions):
    """The record's prompt, else the run's: an empty one is the record's (and refused as the
    API refuses it), not a missing one (``""`` quietly became the default prompt)."""
    return opts.prompt if rec.prompt is None else rec.prompt


def explain_records(explainer, recs, opts: RunOptions) -> List[Tuple[Any, Any, Optional[str]]]:
    """(record, explanation or None, error or None) for each record: one
    ``explain_batch`` call, record by record if it refuses the batch."""
    kw = dict(probe=opts.probe, target_score=opts.target_score, steps=opts.steps,
              response_length=opts.response_length)
    if opts.trajectory:  # each record's own generation, traced step by step: one record at a time
        out = []
        for r in recs:
            if r.response is not None:
                out.append((r, None, "trajectory: the record gives a response; a trajectory follows the "
                                     "model's own generation"))
                continue
            try:
                out.append((r, explainer.explain(r.image, _prompt(r, opts), targets=r.targets, trajectory=True, **kw),
                            None))
            except InputError as exc:
                out.append((r, None, one_line(str(exc))))
        return out
    targets = [r.targets for r in recs]
    if any(t != "all" for t in targets):
        kw["targets_per_image"] = targets
    if all(r.response is not None for r in recs):  # nothing generated here (explain_batch refuses the length)
        kw["response_length"] = None
    try:  # (a bad record's error in its place: the others keep their generations, nothing is redone)
        es = explainer.explain_batch([r.image for r in recs], [_prompt(r, opts) for r in recs],
                                     [r.response for r in recs], errors="return", **kw)
        return [(r, None, one_line(example_text(e, i))) if isinstance(e, InputError) else (r, e, None)
                for i, (r, e) in enumerate(zip(recs, es))]
    except InputError as exc:  # the batch's own refusal (its shared targets, --memory-budget)
        # (a record whose sequence does not fit --memory-budget is one record's failure: records differ in
        # prompt, response and image size; a budget short of the model itself stops the run at its start)
        if len(recs) == 1:
            return [(recs[0], None, one_line(str(exc)))]
    return [out for r in recs for out in explain_records(explainer, [r], opts)]


class _Session:
    """Counts of this process's work in this session."""

    def __init__(self):
        self.records = self.words = self.errors = 0
        self.started = time.perf_counter()


def _work(explainer, source: RunSource, root: str, opts: RunOptions, dist: Dist, done, done_here: int,
          old_parts, on_batch: Optional[Callable[[int, int], None]] = None) -> _Session:
    s = _Session()
    writer = RecordWriter(root, part_name(dist.rank), opts.shard_size, opts.shard_seconds)
    batches = share(source, done, opts.batch_size, dist.rank, dist.world)
    bar = RunProgress(root, len(source), done_here, enabled=opts.progress and dist.rank == 0, old_parts=old_parts)
    on_batch = on_batch or (lambda i, n: None)
    try:
        for k, block in enumerate(batches):
            on_batch(k, len(batches))
            recs = []
            for i in block:
                try:
                    recs.append(source.load(i))
                    recs[-1].n = i
                except InputError as exc:
                    writer.error(source.ids[i], source.where(i), one_line(str(exc)))
                    s.errors += 1
            for rec, e, err in explain_records(explainer, recs, opts) if recs else []:
                if e is not None:
                    try:
                        metrics = score_record(rec, e)
                    except InputError as exc:
                        e, err = None, one_line(str(exc))
                if e is None:
                    writer.error(rec.id, rec.where, err)
                    s.errors += 1
                    continue
                entry = index_entry(rec, e, metrics)
                if opts.overlays:
                    entry["overlays"] = write_overlays(root, e, rec.id)
                traj = getattr(e, "trajectory", None)
                if traj is not None:
                    entry["decided_at"] = [int(v) for v in traj.decided_at]
                writer.add(entry, e.maps, trajectory=None if traj is None else traj.maps, view_maps=e.view_maps)
                s.records += 1
                s.words += len(e.tokens)
            bar.update(len(writer.buffer), sum(len(en["tokens"]) for en, _ in writer.buffer))
        on_batch(len(batches), len(batches))
        writer.close()
    finally:
        writer.close()
        bar.close()
    s.seconds = time.perf_counter() - s.started
    return s


def _check_same_overlays(root: str, overlays: bool) -> None:
    """A resume writes overlays for its own records only: --overlays added (or dropped) on a
    folder with records done would leave some with overlays and some without, silently."""
    old = read_run_json(root) if os.path.isdir(root) else None
    before = ((old or {}).get("options") or {}).get("overlays")  # None: a folder from before it was recorded
    if before is None or bool(before) == bool(overlays) or not scan_index(root)[0]:
        return
    raise InputError(f"--overlays: the run in {root!r} was started {'with' if before else 'without'} overlays and "
                     f"its records done have {'them' if before else 'none'}; resume it "
                     f"{'with' if before else 'without'} --overlays (dcam view shows every map), or pass --overwrite")


class UnchangedRecords:
    """Refuses a resume over records whose manifest lines changed since they were explained: the
    resume skips a record by its id, and kept its old maps under the new line without a word.
    Called with every index line (``prepare``'s one scan of the index), then :meth:`check`.
    (Index lines written before digests were kept are not checked.)"""

    def __init__(self, root: str, source: RunSource):
        self.root, self.source = root, source
        self.where = {rid: i for i, rid in enumerate(source.ids)}
        self.changed: List[int] = []

    def __call__(self, obj: dict) -> None:
        i = self.where.get(obj["id"])
        if i is not None and "source_digest" in obj and obj["source_digest"] != self.source.digest(i):
            self.changed.append(i)

    def check(self) -> None:
        if not self.changed:
            return
        first, src = min(self.changed), self.source
        more = f" (and {len(self.changed) - 1} more)" if len(self.changed) > 1 else ""
        raise InputError(f"MANIFEST: {src.where(first)} (id {src.ids[first]!r}){more} changed since it was "
                         f"explained into {self.root!r}, whose maps a resume would keep; give a changed record a new "
                         "id, or pass --overwrite")


def _writing(root: str, fn: Callable[[], T]) -> T:
    """``fn()``, its OSError (disk full, file too large, no permission) as an InputError naming ``out`` (it was a
    traceback, the run's folder named nowhere); what was committed stays, so a rerun resumes. A file of the
    folder, or of the source, that could not be read (:func:`.store.read_failed`) is named as such (it was said
    to be a failed write)."""
    try:
        return fn()
    except OSError as exc:
        unread = getattr(exc, "read_path", None)
        if unread is not None and os.path.commonpath([root, os.path.abspath(unread)]) != root:
            # (the source's file, read during the run: the manifest gone since it was opened)
            raise InputError(f"MANIFEST: cannot read {unread!r} ({type(exc).__name__}: "
                             f"{exc.strerror or one_line(exc)}) during the run; what was written into {root!r} is "
                             "kept: make it readable and rerun the same command to resume") from None
        if unread is not None:
            raise InputError(f"out: cannot read {unread!r} ({type(exc).__name__}: {exc.strerror or one_line(exc)}); "
                             "what was written is kept: make it readable and rerun the same command to resume, or "
                             "pass --overwrite to start over") from None
        raise InputError(f"out: writing {root!r} failed ({type(exc).__name__}: {one_line(exc)}); what was written "
                         "is kept, rerun the same command to resume") from None


def run_dataset(explainer, source: RunSource, out: str, opts: Optional[RunOptions] = None, dist: Optional[Dist] = None,
                model: Optional[Dict[str, Any]] = None, log=None,
                on_batch: Optional[Callable[[int, int], None]] = None,
                lock: Optional[FolderLock] = None) -> Optional[dict]:
    """Explain ``source`` into the run folder ``out`` (see the package docstring).

    explainer: a :class:`dcam.Explainer`; model: :func:`.folder.model_identity`
    of its files (part of the fingerprint); dist: this rank (default: one
    process); on_batch: called with ``(k, n)`` as this rank's batch ``k`` of
    ``n`` (those left to do) begins, and with ``(n, n)`` after the last
    (``dcam run --profile`` records some of them); lock: rank 0's lock of ``out``
    (:meth:`.folder.FolderLock.take`), taken by the caller before its model loaded (``dcam run``), who
    releases it where the run does not; None: taken here. Returns the final
    ``run.json`` on rank 0, None elsewhere."""
    opts = check_run_options(explainer, opts or RunOptions())
    dist = dist or Dist()
    log = log or (lambda msg: None)
    root = os.path.abspath(out)
    identity = run_identity(explainer, model or {"name": type(explainer.model).__name__}, opts.probe,
                            opts.target_score, opts.steps)
    if opts.trajectory:
        identity["trajectory"] = True
    # the prompt of records without one changes their responses and maps, and a second manifest
    # mixed its records into the first one's index: both decide what the folder holds
    if opts.prompt is not None:
        identity["prompt"] = opts.prompt
    if opts.response_length is not None:  # the generated responses' length (a folder without it: the model's)
        identity["response_length"] = opts.response_length
    described = source.describe()
    identity["source"] = {k: described[k] for k in ("kind", "path", "files") if k in described}
    if source.kind in SCORED_KINDS:  # (its records' metrics depend on the rules: a resume never mixes two)
        identity["scoring"] = SCORING
    # the operators' kernels that made the maps (options.backend is the process group's: gloo, nccl)
    ops = explainer_record(explainer)
    header = {"source": described, "versions": versions(), "machine": {**machine(), "kernels": ops["kernels"]},
              "options": {"batch_size": opts.batch_size, "shard_size": opts.shard_size, "overlays": bool(opts.overlays),
                          "memory_budget": opts.memory_budget, "world_size": dist.world, "device": dist.device,
                          "backend": dist.backend, **opts.extra}}
    # (None from Python: a resume's run.json kept the command of the session before, said to be this one's)
    header["command"] = opts.command
    def start():
        if opts.overwrite:  # emptying the folder must not delete what the run reads, or where the user is
            refuse_inputs_inside(root, source.input_paths() + list(opts.protect))
            refuse_current_folder(root)
        else:  # (its read of the index: an unreadable one was a traceback)
            _writing(root, lambda: _check_same_overlays(root, opts.overlays))
        return _writing(root, lambda: prepare(root, identity, opts.overwrite, header, UnchangedRecords(root, source),
                                              unreadable, notices, lock,
                                              rescore=lambda before, drop: rescore_index(root, source, before, drop)))
    in_source = set(source.ids)
    unreadable, notices = UnreadableMaps(root, in_source.__contains__), []
    held = dist.on_rank0(start)  # (rank 0's, the given lock or one taken here; None elsewhere)
    try:
        # (rank 0's: it alone prepared the folder; said even with --quiet: damage found and repaired)
        for notice in notices + [unreadable_notice(unreadable)]:
            if notice is not None:
                print(f"dcam: {notice}", file=sys.stderr, flush=True)
        # (a parts folder that cannot be listed was a traceback here, and before, a failed write of a part)
        done, old_parts = _writing(root, lambda: (scan_index(root)[0],
                                                  parts(root, INDEX_PARTS) + parts(root, ERROR_PARTS)))
        dist.barrier()  # every rank has read the index before any rank writes to it
        done_here = sum(1 for rid in source.ids if rid in done)  # (records taken out of the manifest: not these)
        log(f"{done_here} of {len(source)} records already done; {dist.world} process(es)")
        # a write that failed on one rank ends every rank (the others once their share is written)
        s = dist.agree(lambda: _writing(root, lambda: _work(explainer, source, root, opts, dist, done, done_here,
                                                            old_parts, on_batch)))
        records, words, errors = dist.sum([s.records, s.words, s.errors])
        seconds, = dist.max([s.seconds])
        dist.barrier()
        if dist.rank != 0:
            return None
        session = {"records": int(records), "words": int(words), "errors": int(errors), "seconds": seconds,
                   "processes": dist.world}
        return _writing(root, lambda: finish(root, source, session, identity, header))
    finally:
        if held is not None:
            held.release()


__all__ = ["RunOptions", "check_run_options", "run_dataset", "share", "explain_records", "index_entry",
           "UnchangedRecords"]
