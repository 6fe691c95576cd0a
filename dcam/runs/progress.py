"""The progress bar of a run, on rank 0: records done or failed of the total over
every rank, and words per second. The other ranks' progress is read from the index
and error parts they append to (the run folder is shared by every rank), so no rank
waits on another to report."""
from __future__ import annotations

import json
import sys
import time
from typing import Dict

from .store import ERROR_PARTS, INDEX_PARTS, parts, read_failed


class RunProgress:
    def __init__(self, root: str, total: int, initial: int, enabled: bool = True, old_parts=None):
        """old_parts: the index and error parts of earlier sessions (listed before any rank of this
        one wrote)."""
        self.root = root
        self.initial = initial
        self.enabled = enabled
        self.offsets: Dict[str, int] = {}
        self.old = set(_all_parts(root) if old_parts is None else old_parts)
        self.words = 0
        self.records = 0
        self.failed = 0  # (a bar counting only the records explained stopped short of a finished run's total)
        self.started = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="dcam run", unit="rec", file=sys.stderr,
                            dynamic_ncols=True)

    def _read_new(self) -> None:
        errors = set(parts(self.root, ERROR_PARTS))
        for p in _all_parts(self.root):
            if p in self.old:
                continue
            start = self.offsets.get(p, 0)
            try:
                with open(p, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except FileNotFoundError:
                continue
            except OSError as exc:  # (named as a file dcam run cannot read, not as a failed write)
                raise read_failed(exc, p)
            end = data.rfind(b"\n") + 1  # complete lines only
            for line in data[:end].splitlines():
                if line.strip() and p in errors:
                    self.failed += 1
                elif line.strip():
                    self.records += 1
                    self.words += len(json.loads(line).get("tokens", ()))
            self.offsets[p] = start + end

    def update(self, buffered_records: int = 0, buffered_words: int = 0) -> None:
        """Refresh; ``buffered_*``: this process's records explained but not yet in a shard."""
        if self.bar is None:
            return
        self._read_new()
        rate = (self.words + buffered_words) / max(time.perf_counter() - self.started, 1e-9)
        self.bar.n = self.initial + self.records + self.failed + buffered_records
        failed = f", {self.failed} failed" if self.failed else ""
        self.bar.set_postfix_str(f"{rate:.1f} words/s{failed}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.close()
            self.bar = None


def _all_parts(root: str):
    return parts(root, INDEX_PARTS) + parts(root, ERROR_PARTS)


__all__ = ["RunProgress"]
