"""What a run explains: a JSONL manifest, a folder of images, or a COCO/TAM data folder.

Manifest: one JSON object per line (blank lines are skipped)::

    {"id": "0001", "image": "imgs/0001.png"}                       # generate the response
    {"id": "0002", "image": "imgs/0002.png", "prompt": "describe the image",
     "response": "a red circle and a blue square",                 # given: no generation
     "targets": ["red", "square"],                                 # default "all"
     "mask": "masks/0002.png", "labels": [0, 1, 1, 0, 0, 2, 2]}    # metrics (see below)

Keys: ``id`` (unique, text or int), ``image`` (path; relative paths are
relative to the manifest's folder), ``prompt``, ``response`` (text or token
ids), ``targets`` (``"all"``, words/phrases/word numbers as a list, or one
string of them separated by commas: ``"red circle, 2"``), ``mask`` (label image: pixel value = object
label, 0 background, the image's size), ``labels`` (which mask labels each
word names: a list with one entry per word of ``response``, an int or a list
of ints, 0 or ``[]`` for none; or an object ``{"word or phrase": label(s)}``,
which also works for generated responses), ``meta`` (anything, kept in the
index). A malformed line refuses the whole manifest with one line naming it;
a record whose files turn out bad (missing/corrupt image, bad mask, a word not
in the response) is an error record of the run, not of the manifest.

Every source is read lazily: :meth:`RunSource.load` builds one record.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import InputError, one_line
from ..images import IMAGE_EXTENSIONS
from ..targets import parse_target_text
from ..words import split_words
from .store import read_failed

#: Keys a manifest line may hold.
MANIFEST_KEYS = ("id", "image", "prompt", "response", "targets", "mask", "labels", "meta")


@dataclass
class SourceRecord:
    """One record, loaded: what the explainer and the metrics need.

    targets: ``"all"`` or a list of words / word numbers. mask: int64 label
    image or None; objects: where a data folder's objects overlap, each one's whole
    mask (:attr:`dcam.eval.datasets.EvalRecord.objects`), else None. word_labels:
    labels per word of ``response`` (list form); label_map: phrase -> labels (object form; matched against the response's
    words after explaining). where: the record's place in the source (for
    errors); n: its index in the source.
    """

    id: str
    image: Any
    image_path: Optional[str]
    prompt: Optional[str]
    response: Any
    targets: Any
    where: str
    mask: Any = None
    objects: Any = None
    word_labels: Optional[List[Tuple[int, ...]]] = None
    label_map: Optional[Dict[str, Tuple[int, ...]]] = None
    words: Optional[List[str]] = None
    function: Optional[List[bool]] = None
    notes: List[str] = field(default_factory=list)
    meta: Any = None
    n: int = -1  # position in the source
    digest: Optional[str] = None  # what the source says of it (RunSource.digest), kept in its index line


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON (write null or a number)")


def _strict_json(raw):
    """A manifest line as JSON proper: Python's reader takes NaN/Infinity, which then turned
    into null in the index (meta) without a word."""
    return json.loads(raw, parse_constant=_refuse_constant)


def parse_targets(spec) -> Any:
    """``"all"``, a list of words / phrases / ints, or one string of them
    (:func:`dcam.targets.parse_target_text`: commas separate, ``"red circle"``
    is a phrase) -> ``"all"`` or a list. The entry was checked (no empty text)."""
    if spec is None:
        return "all"
    if isinstance(spec, str):
        return parse_target_text(spec)
    return list(spec)


def _labels_tuple(value, what: str) -> Tuple[int, ...]:
    vals = value if isinstance(value, list) else [value]
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0 for v in vals):
        raise ValueError(f"{what} must be a label (int >= 0) or a list of labels, got {json.dumps(value)}")
    return tuple(sorted({int(v) for v in vals} - {0}))


def _check_entry(obj) -> Tuple[str, dict]:
    """(id, the checked entry) of one manifest line; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got a JSON {type(obj).__name__}")
    unknown = sorted(set(obj) - set(MANIFEST_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(MANIFEST_KEYS)})")
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, numbers.Integral)) or str(rid) == "":
        raise ValueError("'id' must be a non-empty text or an int" if "id" in obj else "no 'id'")
    if not isinstance(obj.get("image"), str) or not obj["image"]:
        raise ValueError("'image' must be a path" if "image" in obj else "no 'image'")
    for key in ("prompt", "mask"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"'{key}' must be text or null, got {json.dumps(obj[key])}")
    resp = obj.get("response")
    if resp is not None and not isinstance(resp, str) and not (
            isinstance(resp, list) and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in resp)):
        raise ValueError("'response' must be text, a list of token ids, or null")
    tg = obj.get("targets")
    if tg is not None and not isinstance(tg, str) and not (
            isinstance(tg, list) and tg and all(isinstance(v, (str, numbers.Integral)) and not isinstance(v, bool)
                                                for v in tg)):
        raise ValueError("'targets' must be \"all\", a non-empty list of words / word numbers, or one string of them")
    if isinstance(tg, str):
        try:
            parse_target_text(tg)
        except ValueError as exc:
            raise ValueError(f"'targets': {exc}") from None
    labels = obj.get("labels")
    if (labels is None) != (obj.get("mask") is None):
        raise ValueError("'mask' and 'labels' go together (metrics need both)")
    if isinstance(labels, list):
        if not isinstance(resp, str):
            raise ValueError("'labels' as a list (one per word) needs the 'response' text; "
                             "give an object {word: label} for generated responses")
        for i, v in enumerate(labels):
            _labels_tuple(v, f"labels[{i}]")
        words = split_words(resp)
        if len(labels) != len(words):
            raise ValueError(f"'labels' has {len(labels)} entries but the response has {len(words)} words "
                             f"({' '.join(words)})")
    elif isinstance(labels, dict):
        for k, v in labels.items():
            _labels_tuple(v, f"labels[{k!r}]")
    elif labels is not None:
        raise ValueError("'labels' must be a list (one entry per word) or an object {word: label(s)}")
    return str(rid), obj


def entry_digest(obj: dict) -> int:
    """64 bits of BLAKE2b over a manifest line's keys and values, spacing and key order aside
    (the id included: a record is its line). Eight bytes a record: a million records' digests
    take 8 MB while the manifest is open."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class RunSource:
    """Records in a fixed order: ``len(src)``, ``src.ids[i]`` (cheap) and
    ``src.load(i)`` (reads files; a bad record raises InputError)."""

    kind = "base"
    path = ""
    ids: List[str]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> SourceRecord:
        raise NotImplementedError

    def where(self, i: int) -> str:
        """Where record ``i`` is in the source, for error lines ("line 12")."""
        return f"entry {i}"

    def digest(self, i: int) -> Optional[str]:
        """A digest of what the source says of record ``i`` (a manifest: its line), so that a resume
        can tell a record changed since it was explained; None where the source says nothing but
        the id (a folder of images) or is not digested (a data folder)."""
        return None

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "records": len(self)}

    def input_paths(self) -> List[Tuple[str, str]]:
        """``(what, path)`` of the files the records are read from, for the check that a
        run folder replaced whole (``--overwrite``) holds none of them."""
        return [(f"the source ({self.kind})", self.path)]


class ManifestSource(RunSource):
    """A JSONL manifest: every line checked when opened, ids and byte offsets
    kept; a record's line is parsed again when it is loaded."""

    kind = "manifest"

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.root = os.path.dirname(self.path)
        self.ids, self.lines, self.offsets, self.digests = [], array("q"), array("q"), array("Q")
        seen: Dict[str, int] = {}
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"MANIFEST: cannot read {path!r} ({one_line(exc)})") from None
        with f:
            offset = 0
            for n, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                try:
                    rid, obj = _check_entry(_strict_json(raw))
                except (ValueError, UnicodeDecodeError) as exc:
                    why = f"not JSON ({one_line(exc)})" if isinstance(exc, json.JSONDecodeError) else one_line(exc)
                    raise InputError(f"MANIFEST: {path} line {n}: {why}") from None
                if rid in seen:
                    raise InputError(f"MANIFEST: {path} line {n}: id {rid!r} is already on line {seen[rid]}")
                seen[rid] = n
                self.ids.append(rid)
                self.lines.append(n)
                self.offsets.append(start)
                self.digests.append(entry_digest(obj))
        if not self.ids:
            raise InputError(f"MANIFEST: {path} holds no record")

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}"

    def digest(self, i: int) -> Optional[str]:
        return f"{self.digests[i]:016x}"

    def _path(self, p: Optional[str]) -> Optional[str]:
        return None if p is None else (p if os.path.isabs(p) else os.path.join(self.root, p))

    def _entry_in(self, f, i: int) -> dict:
        """Record ``i``'s line, parsed, from the open manifest ``f``."""
        f.seek(self.offsets[i])
        return _strict_json(f.readline())

    def input_paths(self) -> List[Tuple[str, str]]:
        out = [("the manifest", self.path)]
        with open(self.path, "rb") as f:
            for i in range(len(self.ids)):
                e = self._entry_in(f, i)
                out += [(f"an image of record {self.ids[i]!r}", self._path(e["image"])),
                        (f"a mask of record {self.ids[i]!r}", self._path(e.get("mask")))]
        return out

    def entry(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            return self._entry_in(f, i)

    def load(self, i: int) -> SourceRecord:
        from .records import read_image, read_mask

        try:  # the line read now is the one checked (and digested for the index) when the manifest was opened
            e = self.entry(i)
            same = entry_digest(e) == self.digests[i]
        except (ValueError, UnicodeDecodeError):  # an edit moved the lines: another line's middle
            same = False
        except OSError as exc:  # the manifest gone or replaced since it was opened: ends the run (it was said to
            raise read_failed(exc, self.path)  # be a failed write of the run's folder)
        if not same:
            raise InputError(f"MANIFEST: {self.where(i)} (id {self.ids[i]!r}) changed while the run read the "
                             "manifest; rerun to explain it as it is now")
        image_path = self._path(e["image"])
        image, notes = read_image(image_path)
        rec = SourceRecord(id=self.ids[i], image=image, image_path=image_path, prompt=e.get("prompt"),
                           response=e.get("response"), targets=parse_targets(e.get("targets")),
                           where=self.where(i), notes=notes, meta=e.get("meta"), digest=self.digest(i))
        if e.get("mask") is not None:
            rec.mask = read_mask(self._path(e["mask"]), image.size)
            labels = e["labels"]
            if isinstance(labels, dict):
                rec.label_map = {str(k): _labels_tuple(v, "labels") for k, v in labels.items()}
            else:
                rec.word_labels = [_labels_tuple(v, "labels") for v in labels]
        return rec


class FolderSource(RunSource):
    """Every image file of a folder (sorted, not recursive); ids are the file names."""

    kind = "folder"

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        # a broken link (or any non-folder entry) with an image name is a record, whose read then fails
        # into errors.jsonl; it was skipped without a word
        try:
            names = os.listdir(self.path)
        except OSError as exc:  # an unreadable folder
            raise InputError(f"MANIFEST: cannot list the folder {path!r}: {exc.strerror or exc}") from None
        self.ids = sorted(f for f in names
                          if f.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(os.path.join(self.path, f)))
        if not self.ids:
            # (a folder `python -m dcam.runs.benchmark manifest DATA` wrote: its manifest beside images/ and masks/)
            hint = (f" (it holds manifest.jsonl: pass {os.path.join(path, 'manifest.jsonl')})"
                    if os.path.isfile(os.path.join(self.path, "manifest.jsonl")) else "")
            raise InputError(f"MANIFEST: the folder {path!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)})"
                             + hint)

    def where(self, i: int) -> str:
        return f"file {self.ids[i]}"

    def load(self, i: int) -> SourceRecord:
        from .records import read_image

        p = os.path.join(self.path, self.ids[i])
        image, notes = read_image(p)
        return SourceRecord(id=self.ids[i], image=image, image_path=p, prompt=None, response=None, targets="all",
                            where=self.where(i), notes=notes)


class DatasetSource(RunSource):
    """A COCO or TAM data folder (the ``dcam eval`` layouts): the caption is the
    response, the masks and word labels give the metrics."""

    def __init__(self, path: str, split: Optional[str] = None):
        from ..eval.datasets import open_dataset

        self.path = os.path.abspath(path)
        self.ds = open_dataset(path, split=split)
        self.kind = self.ds.kind
        # which files the split chose (COCO: instances_val2017.json or _train2017.json of one
        # folder, with the same image ids): part of what a run folder holds
        self.files: Dict[str, Optional[str]] = {}
        if self.kind == "coco":
            from ..eval.datasets import _coco_files

            images_dir, inst, cap = _coco_files(path, split)
            self.files = {k: None if v is None else os.path.relpath(os.path.abspath(v), self.path)
                          for k, v in (("images", images_dir), ("instances", inst), ("captions", cap))}
        self.ids = [self.ds.entry_id(i) for i in range(len(self.ds))]
        if len(set(self.ids)) != len(self.ids):
            raise InputError(f"MANIFEST: the data set in {path!r} has repeated record ids")
        if not self.ids:
            raise InputError(f"MANIFEST: the data set in {path!r} holds no record")

    def describe(self) -> dict:
        return dict(super().describe(), **({"files": self.files} if self.files else {}))

    def _image_path(self, meta: dict) -> Optional[str]:
        # absolute, as a manifest's: the index is read (dcam view) from any folder
        if "file_name" in meta and getattr(self.ds, "images_dir", None):
            return os.path.abspath(os.path.join(self.ds.images_dir, str(meta["file_name"])))
        if "image" in meta and hasattr(self.ds, "root"):
            p = str(meta["image"])
            return p if os.path.isabs(p) else os.path.abspath(os.path.join(self.ds.root, p))
        return None

    def load(self, i: int) -> SourceRecord:
        r = self.ds.load(i)  # RecordError (an InputError) for a bad entry
        return SourceRecord(id=self.ids[i], image=r.image, image_path=self._image_path(r.meta), prompt=None,
                            response=r.caption, targets="all", where=self.where(i), mask=r.mask,
                            objects=r.objects, word_labels=list(r.word_labels), words=list(r.words),
                            function=list(r.function))


def open_source(spec: str, split: Optional[str] = None) -> RunSource:
    """A manifest file, a folder of images, or a COCO/TAM data folder (detected by its files)."""
    if not os.path.exists(spec):
        raise InputError(f"MANIFEST: no such file or folder {spec!r}")
    if os.path.isfile(spec):
        if spec.lower().endswith(IMAGE_EXTENSIONS):  # the commonest slip: an image where the manifest goes
            raise InputError(f"MANIFEST: {spec!r} is an image; give a JSONL manifest or a folder of images "
                             "(`dcam explain` takes single images)")
        return ManifestSource(spec)
    if not os.path.isdir(spec):  # a device or a pipe (/dev/null) was listed as a folder: NotADirectoryError
        raise InputError(f"MANIFEST: {spec!r} is neither a file nor a folder")
    from ..eval.datasets import detect_layout

    try:
        detect_layout(spec, split)
    except InputError:
        return FolderSource(spec)
    return DatasetSource(spec, split)


__all__ = ["SourceRecord", "RunSource", "ManifestSource", "FolderSource", "DatasetSource", "open_source",
           "parse_targets", "MANIFEST_KEYS"]
